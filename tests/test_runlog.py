import json
import os
import sys
from pathlib import Path

import pytest

from nextword.training.runlog import RunLog, read_log


def write_short_run(log: RunLog, resumed_from: int = 0, steps: range = range(1, 5),
                    loss_offset: float = 0.0) -> None:
    log.write(kind="run", device="cpu", precision="fp32", precision_reason="set | in the config",
              resumed_from=resumed_from)
    for step in steps:
        log.write(kind="train", step=step, tokens=128 * step, loss=6.0 - 0.5 * step + loss_offset, lr=1e-3, grad_norm=1.5,
                  tokens_per_s=1000.0 + step, mfu=0.01)
    last = steps[-1]
    log.write(kind="eval", step=last, tokens=128 * last, val_loss=3.5, val_ppl=33.1, val_bpb=2.1,
              samples=[{"prompt": "def ", "text": "f(x):\n    return *x*"}])
    log.write(kind="summary", steps=last, val_loss=3.5)


def events(run_dir, axis):
    """What TensorBoard itself reads from one of the two event folders ("step" or "tokens")."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard" / axis))
    accumulator.Reload()
    return accumulator


def scalars(run_dir, axis, tag):
    return [(e.step, pytest.approx(e.value)) for e in events(run_dir, axis).Scalars(tag)]


def test_records_round_trip_and_a_torn_last_line_is_left_out(tmp_path):
    log = RunLog(tmp_path / "log.jsonl", tensorboard=False)
    log.write(kind="train", step=1, loss=2.5)
    log.write(kind="eval", step=1, val_loss=2.4, samples=[{"prompt": "a", "text": "b"}])
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a crash mid-write
    records = read_log(tmp_path / "log.jsonl")
    assert [r["kind"] for r in records] == ["train", "eval"]
    assert records[1]["samples"] == [{"prompt": "a", "text": "b"}]
    assert all(isinstance(r["time"], float) for r in records)
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_gets_the_scalars_against_step_and_tokens_and_the_samples(tmp_path):
    pytest.importorskip("tensorboard")
    write_short_run(RunLog(tmp_path / "log.jsonl"))
    assert scalars(tmp_path, "step", "loss/train") == [(1, 5.5), (2, 5.0), (3, 4.5), (4, 4.0)]
    assert scalars(tmp_path, "step", "train/lr") == [(s, 1e-3) for s in range(1, 5)]
    assert scalars(tmp_path, "step", "speed/tokens_per_s")[-1] == (4, 1004.0)
    assert scalars(tmp_path, "step", "speed/mfu")[0] == (1, 0.01)
    assert scalars(tmp_path, "step", "train/grad_norm")[0] == (1, 1.5)
    assert scalars(tmp_path, "step", "loss/val") == [(4, 3.5)]
    assert scalars(tmp_path, "step", "val/bits_per_byte") == [(4, 2.1)]
    assert scalars(tmp_path, "step", "val/perplexity") == [(4, 33.1)]
    assert scalars(tmp_path, "tokens", "by_tokens/train_loss")[-1] == (512, 4.0)
    assert scalars(tmp_path, "tokens", "by_tokens/val_loss") == [(512, 3.5)]
    assert scalars(tmp_path, "tokens", "by_tokens/val_bits_per_byte") == [(512, 2.1)]

    by_step = events(tmp_path, "step")
    (sample,) = by_step.Tensors("samples/text_summary")
    text = sample.tensor_proto.string_val[0].decode()
    assert sample.step == 4 and "    def f(x):\n        return *x*" in text  # a code block: shown as typed
    (run,) = by_step.Tensors("run/text_summary")
    assert "| precision_reason | set / in the config |" in run.tensor_proto.string_val[0].decode()

    run_line = read_log(tmp_path / "log.jsonl")[0]
    assert run_line["tensorboard"] == str(tmp_path / "tensorboard")


def test_a_resumed_run_hides_the_steps_logged_after_its_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer import event_file_writer

    # Event files of one process are numbered by a counter that earlier writers have advanced (other tests, or a
    # program that trained before): from 9, the interrupted run's files end in .9 and .10, the resumed run's in
    # .11 and .12, which sort as text before .9 when opened in the same second.
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    write_short_run(RunLog(tmp_path / "log.jsonl"), steps=range(1, 5))  # interrupted after step 4
    write_short_run(RunLog(tmp_path / "log.jsonl"), resumed_from=2, steps=range(3, 7),
                    loss_offset=0.25)  # resumed from its checkpoint at step 2
    losses = scalars(tmp_path, "step", "loss/train")
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert losses[2] == (3, 4.75) and losses[3] == (4, 4.25)  # the resumed run's values, not the interrupted one's
    by_tokens = scalars(tmp_path, "tokens", "by_tokens/train_loss")
    assert [tokens for tokens, _ in by_tokens] == [128 * s for s in range(1, 7)]


def test_closing_writes_what_tensorboard_still_holds(tmp_path):
    pytest.importorskip("tensorboard")
    with RunLog(tmp_path / "log.jsonl") as log:  # a run that ends without its summary record
        log.write(kind="run", device="cpu")
        log.write(kind="train", step=1, tokens=64, loss=5.0, lr=1e-3, grad_norm=1.0, tokens_per_s=10.0, mfu=0.1)
    assert scalars(tmp_path, "step", "loss/train") == [(1, 5.0)]


def test_without_tensorboard_the_log_is_jsonl_only_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes its import fail
    write_short_run(RunLog(tmp_path / "log.jsonl"))
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["tensorboard"] is None
    assert len(read_log(tmp_path / "log.jsonl")) == 7
    assert not (tmp_path / "tensorboard").exists()


def test_a_log_to_the_null_device_writes_no_tensorboard_files(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    log = RunLog(os.devnull)  # what the ranks of a distributed run that do not keep the log write to
    log.write(kind="run", device="cpu")
    log.write(kind="train", step=1, tokens=64, loss=5.0)
    assert log.tensorboard_dir == Path(os.devnull).parent / "tensorboard"
    assert not log.tensorboard_dir.exists()


def test_a_line_cut_short_by_a_crash_does_not_swallow_the_next_record(tmp_path):
    from nextword.training.runlog import RunLog, read_log

    path = tmp_path / "log.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "train", "st')
    RunLog(path).write(kind="train", step=2)
    assert [r["step"] for r in read_log(path)] == [1, 2]
