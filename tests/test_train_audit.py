"""What a demanding user runs into with `nextword train` and `nextword export`: bad input, resumes that change
what the run is, and folders that cannot be written. Each case ends in one line naming the file or field and
the fix, never a traceback and never a silently different run."""

import copy
import errno
import math
import os
from pathlib import Path

import pytest
import torch
from test_train import read_log, tiny  # noqa: F401  (tiny is a fixture)

from nextword import cli
from nextword.training import checkpoint, distributed
from nextword.training.checkpoint import checkpoint_step, list_checkpoints
from nextword.config import ModelConfig, RunConfig, TrainConfig
from nextword.errors import CheckpointError, ConfigError, NextwordError
from nextword.model import GPT
from nextword.training.runlog import RunLog
from nextword.training.trainer import train
from nextword.training.machine import Machine
from nextword.training.optimizer import build_optimizer
from nextword.training.precision import resolve_precision


@pytest.mark.parametrize("override, field", [
    (["--train.lr", "nan"], "train.lr"),
    (["--train.lr", "inf"], "train.lr"),
    (["--train.budget", "nan"], "train.budget"),
    (["--train.budget", "inf"], "train.budget"),
    (["--train.beta2", "2"], "train.beta2"),
    (["--train.eps", "-1"], "train.eps"),
    (["--train.weight_decay", "-0.1"], "train.weight_decay"),
    (["--model.norm_eps", "-1"], "model.norm_eps"),
    (["--model.init_std", "-1"], "model.init_std"),
    (["--eval.temperature", "-1"], "eval.temperature"),
    (["--eval.top_k", "-5"], "eval.top_k"),
])
def test_a_number_out_of_range_is_one_line_naming_the_field(override, field, capsys):
    assert cli.main(["train", "--preset", "tiny", "--dump-config", *override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"nextword train: {field} = ")


def test_fp16_trains_on_a_cpu_with_loss_scaling_when_asked_for(tiny, tmp_path):
    """The path a GPU without native bf16 takes (fp16 autocast and a GradScaler) runs on a CPU as well."""
    tiny.train.steps, tiny.train.precision, tiny.train.device = 3, "fp16", "cpu"
    with pytest.warns(UserWarning, match="fp16 on a CPU"):
        summary = train(tiny, progress=False)
    assert summary["precision"] == "fp16"
    losses = [r["loss"] for r in read_log(tmp_path / "run", "train")] + [summary["val_loss"]]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)


def test_auto_never_chooses_fp16_on_a_cpu():
    for native in (True, False):
        cpu = Machine(torch.device("cpu"), "test CPU", "AVX512", 1, bf16_native=native)
        assert resolve_precision("auto", cpu)[0] != "fp16"


def test_fp16_under_fsdp_is_refused_in_one_line():
    model = GPT(ModelConfig(n_layers=1, d_model=16, n_heads=2, context=8, vocab_size=50))
    with pytest.raises(ConfigError, match="fp16 is not supported under train.parallel = fsdp"):
        distributed.wrap(model, "fsdp", distributed.World(), precision="fp16")


@pytest.mark.parametrize("option", ["--steps", "--stop-after", "--nproc"])
@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_count_option_below_one_is_refused_by_the_parser(option, value, capsys):
    # --steps 0 used to fall back to the 10-minute budget, --stop-after 0 to never stop, --nproc -1 to a traceback.
    with pytest.raises(SystemExit) as exit:
        cli.main(["train", "--preset", "tiny", "--dump-config", option, value])
    assert exit.value.code == 2
    assert f"argument {option}: '{value}' is not a whole number of 1 or more" in capsys.readouterr().err


def test_stop_after_a_step_the_run_has_passed_trains_nothing(tiny, tmp_path, capsys):
    tiny.train.steps = 10
    train(copy.deepcopy(tiny), progress=False, stop_after=6)
    again = train(copy.deepcopy(tiny), progress=False, stop_after=4)
    assert again["steps"] == 6 and not again["interrupted"]
    assert "already at or past --stop-after 4: nothing to train" in capsys.readouterr().out
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path / "run")] == [6]


def other_corpus(folder):
    folder.mkdir(parents=True)
    for i in range(30):
        (folder / f"other_{i:03d}.txt").write_text(" ".join(f"word{(i * j) % 97}" for j in range(300)) + "\n")
    return folder


@pytest.mark.parametrize("change", ["other data, same tokenizer", "another seed", "rows at documents"])
def test_resuming_on_another_data_stream_is_refused(change, tiny, tmp_path):
    tiny.train.steps = 10
    train(copy.deepcopy(tiny), progress=False, stop_after=5)
    if change == "another seed":
        tiny.train.seed += 1
    elif change == "rows at documents":
        tiny.train.rows = "documents"  # the saved loader position counts windows, not packed rows
    else:
        tiny.data.sources = [str(other_corpus(tmp_path / "other"))]
        tiny.data.tokenizer = str(tmp_path / "run" / "tokenizer.json")
        tiny.data.data_dir = str(tmp_path / "other_data")
    with pytest.raises(CheckpointError, match="step_0000005: saved while training on other data or with another "
                                              "train.seed .* resume with the run's own config"):
        train(tiny, progress=False)


@pytest.mark.parametrize("governs, value", [("steps", 20), ("tokens", "1000")])
def test_resuming_with_another_length_is_refused_and_leaves_the_config(governs, value, tiny, tmp_path):
    tiny.train.steps = 10
    train(copy.deepcopy(tiny), progress=False, stop_after=5)
    saved = (tmp_path / "run" / "config.toml").read_text()
    tiny.train.steps = 0
    setattr(tiny.train, governs, value)
    with pytest.raises(ConfigError, match=f"run is at step 5 of the 10 it was planned for, but train.{governs} = "
                                          f"{value} asks for [0-9]+ steps"):
        train(copy.deepcopy(tiny), progress=False)
    assert (tmp_path / "run" / "config.toml").read_text() == saved
    tiny.train.tokens, tiny.train.steps = "", 10
    assert train(tiny, progress=False)["steps"] == 10


def test_a_run_dir_under_a_file_is_one_line(tiny, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    tiny.train.steps, tiny.train.run_dir = 2, str(tmp_path / "a_file" / "run")
    with pytest.raises(NextwordError, match=r"a_file/run: Not a directory; free disk space, fix the permissions or "
                                            r"choose another --run-dir"):
        train(tiny, progress=False)


def test_a_full_disk_while_logging_stops_with_one_line_and_keeps_the_checkpoint(tiny, tmp_path, monkeypatch):
    tiny.train.steps, tiny.train.ckpt_every = 6, 3
    write = RunLog.write

    def disk_full_after_step_4(self, **record):
        if record.get("step", 0) > 4:  # as a write to an open file fails: with no file name
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(self, **record)

    monkeypatch.setattr(RunLog, "write", disk_full_after_step_4)
    with pytest.raises(NextwordError, match="run: No space left on device; .* Checkpoints already saved are intact"):
        train(tiny, progress=False)
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path / "run")] == [3]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, where every write fails for space")
def test_a_full_disk_under_the_optimizer_state_is_named_as_such(tmp_path, monkeypatch):
    # torch.save reports a failed write as "unexpected pos N vs M"; the message must say the disk is full.
    model = GPT(ModelConfig(n_layers=1, d_model=16, n_heads=2, context=8, vocab_size=300))
    optimizer = build_optimizer(model, TrainConfig())

    def state_onto_a_full_disk(path, mode="r", *args, **kwargs):
        writing_state = Path(path).name == "state.pt" and "w" in mode
        return open("/dev/full" if writing_state else path, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", state_onto_a_full_disk, raising=False)
    with pytest.raises(CheckpointError, match=r"step_0000003: checkpoint not written \(No space left on device;"):
        checkpoint.save_checkpoint(tmp_path, 3, model, optimizer, {}, RunConfig(), "hash", keep_last=2)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_export_refuses_the_run_directory_itself_and_a_file(tiny, tmp_path, capsys):
    pytest.importorskip("transformers")
    tiny.train.steps = 2
    train(tiny, progress=False)
    run_dir = tmp_path / "run"
    tokenizer = (run_dir / "tokenizer.json").read_bytes()
    assert cli.main(["export", str(run_dir), "--hf", f"{run_dir}/"]) == 2
    assert "is the run directory itself" in capsys.readouterr().err
    assert (run_dir / "tokenizer.json").read_bytes() == tokenizer
    (tmp_path / "a_file").write_text("in the way")
    assert cli.main(["export", str(run_dir), "--hf", str(tmp_path / "a_file")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("a_file: cannot write the model there (File exists); give --hf a "
                                                 "folder you can write to")


def test_a_compiled_run_trains(tiny, tmp_path, monkeypatch):
    # The eager backend traces the model as a real compile does, without the minutes a C++ build takes on a CPU.
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compile(model, backend="eager"))
    tiny.train.steps, tiny.train.compile = 2, "on"
    assert train(tiny, progress=False)["steps"] == 2
    assert read_log(tmp_path / "run", "run")[0]["compile"] is True


def test_stop_after_the_last_step_finishes_the_run_with_its_summary(tiny, tmp_path, capsys):
    tiny.train.steps = 4
    summary = train(tiny, progress=False, stop_after=4)
    assert summary["steps"] == 4 and summary["val_loss"] is not None
    assert "run the same command to resume" not in capsys.readouterr().out
    assert len(read_log(tmp_path / "run", "summary")) == 1 and not read_log(tmp_path / "run", "stop")
