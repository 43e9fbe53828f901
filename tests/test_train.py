import copy
import json
import math
import shutil
import signal
import statistics
import time

import pytest
import torch

from nextword import cli
from nextword.training.checkpoint import latest_checkpoint, list_checkpoints, load_for_inference
from nextword.config import RunConfig, TrainConfig
from nextword.data.loader import TokenLoader
from nextword.errors import CheckpointError, ConfigError, DataError
from nextword.training.machine import Machine
from nextword.training.precision import resolve_precision
from nextword.training.schedule import learning_rate, warmup_length
from nextword.training.spike_guard import LossSpikeError, spike_limit
from nextword.training.stop import StopRequest
from nextword.training.trainer import train

WORDS = ("def return import class self value the model token data while for if else print list dict "
         "loss learning next word predicts each step").split()


def make_corpus(folder, files=30, words=400):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        text = " ".join(WORDS[(i * 7 + j * j) % len(WORDS)] for j in range(words))
        (folder / f"doc_{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A config for a tiny model on a few KB of generated text, with its own cache folder."""
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    corpus = make_corpus(tmp_path / "corpus")
    cfg = RunConfig()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context = 2, 32, 2, 32
    cfg.model.size = "fixed"  # this shape, even under a time budget
    cfg.data.sources, cfg.data.vocab_size, cfg.data.val_fraction = [str(corpus)], 300, 0.2
    cfg.data.data_dir = str(tmp_path / "data")
    cfg.train.run_dir, cfg.train.micro_batch, cfg.train.log_every = str(tmp_path / "run"), 4, 1
    cfg.train.precision, cfg.train.compile, cfg.train.threads = "fp32", "off", 1
    cfg.eval.batches, cfg.eval.sample_tokens, cfg.eval.prompts = 2, 8, ["def "]
    return cfg


def read_log(run_dir, kind):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_training_lowers_the_loss_and_leaves_a_loadable_checkpoint(tiny, tmp_path):
    tiny.train.steps = 40
    summary = train(tiny, progress=False)
    evals = read_log(tmp_path / "run", "eval")
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 40
    assert abs(evals[0]["val_loss"] - math.log(300)) < 0.05 * math.log(300)  # untrained: ≈ ln V
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert summary["val_bpb"] == evals[-1]["val_bpb"] > 0
    model, tokenizer, cfg = load_for_inference(tmp_path / "run")
    assert cfg.model.vocab_size == tokenizer.vocab_size == 300
    assert not model.training


def test_resuming_gives_the_same_losses_as_an_uninterrupted_run(tiny, tmp_path):
    tiny.train.steps = 12
    straight = copy.deepcopy(tiny)
    train(straight, progress=False)
    losses_straight = [r["loss"] for r in read_log(tmp_path / "run", "train")]

    resumed = copy.deepcopy(straight)
    resumed.train.run_dir = str(tmp_path / "resumed")
    stop = train(resumed, progress=False, stop_after=6)
    assert stop["step"] == 6 and latest_checkpoint(tmp_path / "resumed") is not None
    train(resumed, progress=False)
    losses_resumed = [r["loss"] for r in read_log(tmp_path / "resumed", "train")]
    assert len(losses_straight) == len(losses_resumed) == 12
    assert losses_resumed == pytest.approx(losses_straight, abs=1e-6)


def test_a_damaged_checkpoint_is_skipped_for_the_previous_good_one(tiny, tmp_path, capsys):
    tiny.train.steps, tiny.train.ckpt_every, tiny.train.keep_last = 4, 2, 3
    train(tiny, progress=False)
    older, newest = list_checkpoints(tmp_path / "run")[-2:]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path / "run") == older
    assert "does not match its SHA-256" in capsys.readouterr().err


def test_a_checkpoint_from_another_tokenizer_is_refused(tiny, tmp_path):
    tiny.train.steps = 2
    train(tiny, progress=False)
    tiny.data.vocab_size = 280  # another tokenizer for the same run directory
    tiny.data.data_dir = str(tmp_path / "data-280")
    tiny.model.vocab_size = 0
    with pytest.raises(CheckpointError, match="tokenizer"):
        train(tiny, progress=False)


def test_auto_precision_follows_the_bf16_probe(tiny, tmp_path):
    cpu = torch.device("cpu")
    no_bf16 = Machine(cpu, "test CPU", "AVX2", 1, bf16_native=False)
    with_bf16 = Machine(cpu, "test CPU", "AVX512", 1, bf16_native=True)
    assert resolve_precision("auto", no_bf16, time_step=lambda p: 1.0)[0] == "fp32"
    timings = {"fp32": 2.0, "bf16": 1.0}
    chosen, why = resolve_precision("auto", with_bf16, time_step=timings.__getitem__, shape_key="a")
    assert chosen == "bf16" and "bf16=1000ms" in why
    timings = {"fp32": 1.0, "bf16": 3.0}  # native but slower for this shape: keep the faster
    assert resolve_precision("auto", with_bf16, time_step=timings.__getitem__, shape_key="b")[0] == "fp32"
    timings = {"fp32": 0.95, "bf16": 1.0}  # within noise: native bf16 stays
    assert resolve_precision("auto", with_bf16, time_step=timings.__getitem__, shape_key="c")[0] == "bf16"
    order = []
    resolve_precision("auto", with_bf16, time_step=lambda p: order.append(p) or 1.0, shape_key="d")
    assert order[2:] == ["fp32", "bf16"] * 3  # timed in turns, after an untimed first step of each

    tiny.train.precision, tiny.train.steps = "auto", 1
    train(tiny, progress=False, bf16_probe=lambda: False)
    run_line = read_log(tmp_path / "run", "run")[-1]
    assert run_line["precision"] == "fp32" and "no native bf16" in run_line["precision_reason"]


def test_a_time_budget_is_kept_and_ends_on_the_annealed_rate(tiny, tmp_path):
    tiny.train.budget, tiny.train.log_every = "30s", 5
    began = time.monotonic()
    summary = train(tiny, start_time=began, progress=False)
    wall = time.monotonic() - began
    assert 20 <= wall <= 40, wall
    trains = read_log(tmp_path / "run", "train")
    assert trains[-1]["step"] == summary["steps"] > 50
    assert trains[-1]["lr"] == pytest.approx(tiny.train.lr * tiny.train.min_lr_ratio)
    assert read_log(tmp_path / "run", "plan")


def test_schedules_warm_up_and_end_at_their_minimum():
    for schedule in ("wsd", "cosine"):
        rates = [learning_rate(s, 100, peak=1.0, min_ratio=0.1, schedule=schedule, warmup_steps=0,
                               warmup_frac=0.1, decay_frac=0.2) for s in range(100)]
        assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
        assert rates[-1] == pytest.approx(0.1)
        assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    wsd = [learning_rate(s, 100, peak=1.0, min_ratio=0.0, schedule="wsd", warmup_steps=0, warmup_frac=0.1,
                         decay_frac=0.2) for s in range(100)]
    assert wsd[79] == 1.0 and wsd[80] < 1.0


def test_warmup_has_a_floor_in_steps_that_short_runs_keep():
    assert warmup_length(480, warmup_steps=100, warmup_frac=0.05) == 100  # 5% would be 24
    assert warmup_length(20_000, warmup_steps=100, warmup_frac=0.05) == 1000  # a long run: its fraction
    assert warmup_length(200, warmup_steps=100, warmup_frac=0.05) == 50  # never more than a quarter of a run
    assert warmup_length(480, warmup_steps=0, warmup_frac=0.05) == 24
    rates = [learning_rate(s, 480, peak=1.0, min_ratio=0.1, schedule="wsd", warmup_steps=100, warmup_frac=0.05,
                           decay_frac=0.2) for s in range(480)]
    assert rates[49] == pytest.approx(0.5) and rates[99] == 1.0 and rates[98] < 1.0


def test_a_run_directory_inside_a_code_source_is_refused_before_its_files_become_data(tiny, tmp_path):
    """Resumed, such a run would read its own config.toml as code: other data, and a checkpoint it refuses."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "util.py").write_text("def twice(x):\n    return 2 * x\n", encoding="utf-8")
    tiny.data.sources, tiny.train.run_dir = [f"code:{repo}"], str(repo / "runs" / "default")
    with pytest.raises(ConfigError, match=r"runs/default: the run directory is inside the source code:.*--run-dir"):
        train(tiny, progress=False)
    assert not (repo / "runs").exists()


def test_a_run_whose_tokenizer_came_out_smaller_than_asked_resumes_from_its_own_config(tiny, tmp_path):
    """A small corpus gives fewer merges than data.vocab_size asks for; config.toml then holds the smaller
    model.vocab_size, and `nextword train --run-dir RUN` must still take it."""
    tiny.train.steps, tiny.data.vocab_size = 2, 2000  # the corpus has a few dozen words: far fewer merges
    train(tiny, stop_after=1, progress=False)
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert f"vocab_size = {tiny.model.vocab_size}\n" in saved and tiny.model.vocab_size < tiny.data.vocab_size
    assert cli.main(["train", "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    assert read_log(tmp_path / "run", "summary")[0]["steps"] == 2


def test_nextword_train_reads_rows_that_start_at_documents(tiny, tmp_path, monkeypatch):
    tiny.model.n_layers, tiny.train.steps = 1, 3
    tiny.save(tmp_path / "config.toml")
    made, make = [], TokenLoader.__init__

    def noting_rows(loader, shards, *args, **kwargs):
        make(loader, shards, *args, **kwargs)
        made.append((shards.split, loader.rows))

    monkeypatch.setattr(TokenLoader, "__init__", noting_rows)
    assert cli.main(["train", "--config", str(tmp_path / "config.toml"), "--train.rows", "documents", "--quiet"]) == 0
    # The training split is read as documents; validation keeps its windows.
    assert ("train", "documents") in made and set(made) == {("train", "documents"), ("val", "windows")}
    assert 'rows = "documents"' in (tmp_path / "run" / "config.toml").read_text()
    losses = [r["loss"] for r in read_log(tmp_path / "run", "train")]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)


def test_a_config_that_cannot_work_fails_in_one_line(capsys):
    assert cli.main(["train", "--model.d_model", "250", "--model.n_heads", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.d_model" in err and "n_heads" in err
    assert cli.main(["train", "--train.nonsense", "1"]) == 2
    assert "unknown field train.nonsense" in capsys.readouterr().err
    assert cli.main(["train", "--train.spike_rollback", "true", "--train.ckpt_every", "0"]) == 2
    assert "set train.ckpt_every" in capsys.readouterr().err
    # Special tokens name those of a tokenizer given to the run, not of one it trains: they would be ignored.
    assert cli.main(["train", "--data.eos_token", "</s>", "--dump-config"]) == 2
    assert "data.eos_token = '</s>'" in capsys.readouterr().err


def continue_from_export(cfg, tmp_path):
    """Train `cfg`, export its model to tmp_path/hf, start a run from that export; return the first run's summary
    and the continued run's first evaluation."""
    from nextword.tools.export import export_model

    first = train(copy.deepcopy(cfg), progress=False)
    model, tokenizer, _ = load_for_inference(cfg.train.run_dir)
    export_model(model, tokenizer, tmp_path / "hf")

    cfg.train.run_dir, cfg.train.steps = str(tmp_path / "continued"), 1
    cfg.model.init_from = str(tmp_path / "hf")
    train(cfg, progress=False)
    return first, read_log(tmp_path / "continued", "eval")[0]


def test_continued_pretraining_starts_from_an_exported_model(tiny, tmp_path):
    pytest.importorskip("transformers")
    tiny.train.steps = 30
    first, start = continue_from_export(tiny, tmp_path)
    assert start["step"] == 0 and start["val_loss"] == pytest.approx(first["val_loss"], abs=1e-4)


def test_a_finished_run_is_left_as_it_is(tiny, tmp_path, capsys):
    tiny.train.steps = 3
    train(copy.deepcopy(tiny), progress=False)
    before = (tmp_path / "run" / "log.jsonl").read_text()
    again = train(copy.deepcopy(tiny), progress=False)
    assert again["finished_before"] and again["steps"] == 3
    assert "finished run" in capsys.readouterr().out
    assert (tmp_path / "run" / "log.jsonl").read_text() == before


def test_an_update_with_a_nonfinite_gradient_is_skipped_on_the_device():
    from nextword.config import ModelConfig, TrainConfig
    from nextword.model import GPT
    from nextword.training.optimizer import build_optimizer
    from nextword.training.precision import autocast_for, scaler_for
    from nextword.training.step import train_step

    torch.manual_seed(0)
    model = GPT(ModelConfig(arch="gpt2", n_layers=1, d_model=16, n_heads=2, context=8, vocab_size=50))
    optimizer = build_optimizer(model, TrainConfig())
    batch = torch.randint(1, 50, (2, 9))
    batches = lambda: (batch[:, :-1], batch[:, 1:])  # noqa: E731
    cpu = torch.device("cpu")
    args = (1, 1e-2, 1.0, autocast_for(cpu, "fp32"), scaler_for(cpu, "fp32"))
    assert float(train_step(model, optimizer, batches, *args)[2]) == 0.0  # a normal update
    with torch.no_grad():
        model.blocks[0].mlp.fc.bias[0] = float("inf")  # every loss and gradient is now NaN
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss, _, skipped = train_step(model, optimizer, batches, *args)
    assert not torch.isfinite(loss) and float(skipped) == 1.0
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} changed in a skipped update"


def test_a_diverging_run_stops_with_one_line_and_keeps_its_checkpoint(tiny, tmp_path, monkeypatch):
    from nextword.training.runlog import RunLog
    from nextword.training.metrics import NonFiniteError

    tiny.train.steps, tiny.train.ckpt_every = 30, 2
    tiny.train.on_nonfinite = "stop"
    train(copy.deepcopy(tiny), progress=False, stop_after=2)  # a good checkpoint at step 2
    tiny.train.lr, tiny.train.grad_clip, tiny.train.warmup_steps, tiny.train.warmup_frac = 1e6, 0.0, 0, 0.0
    closed, close = [], RunLog.close
    monkeypatch.setattr(RunLog, "close", lambda log: closed.append(log.path) or close(log))
    with pytest.raises(NonFiniteError, match="on_nonfinite = stop"):
        train(tiny, progress=False)
    assert latest_checkpoint(tmp_path / "run") is not None
    assert closed == [tmp_path / "run" / "log.jsonl"]  # the log is closed when an error ends the run


# --- loss spikes ------------------------------------------------------------------------------------------------


def serve_garbage(monkeypatch, garbage: set[int]) -> list[int]:
    """Make the training loader serve random tokens for the batches of its stream numbered in `garbage` (from 0:
    batch n is step n + 1's in a run that never rolls back); return the numbers of the batches it served."""
    served, next_batch = [], TokenLoader.next_batch

    def next_batch_or_garbage(loader, rows=None):
        number = (loader.epoch * loader.num_windows + loader.cursor) // loader.batch_size
        x, y = next_batch(loader, rows)
        if loader.shards.split != "train":
            return x, y
        served.append(number)
        if number not in garbage:
            return x, y
        tokens = torch.randint(0, 300, (x.shape[0], x.shape[1] + 1), generator=torch.Generator().manual_seed(number))
        return tokens[:, :-1], tokens[:, 1:]

    monkeypatch.setattr(TokenLoader, "next_batch", next_batch_or_garbage)
    return served


def test_a_loss_spike_rolls_back_to_the_checkpoint_before_it_and_skips_its_data(tiny, tmp_path, monkeypatch):
    tiny.train.steps, tiny.train.ckpt_every, tiny.train.spike_window, tiny.train.keep_last = 30, 5, 5, 10
    served = serve_garbage(monkeypatch, {17})  # step 18's batch
    without = copy.deepcopy(tiny)
    without.train.run_dir = str(tmp_path / "without")
    train(without, progress=False)
    assert not read_log(tmp_path / "without", "rollback")  # off by default: the run trains through the spike

    served.clear()
    tiny.train.spike_rollback = True
    summary = train(tiny, progress=False)
    (rollback,) = read_log(tmp_path / "run", "rollback")
    assert rollback["step"] == 18 and rollback["to_step"] == 15 and rollback["skipped_steps"] == 3
    spiked = read_log(tmp_path / "without", "train")[17]
    assert spiked["step"] == 18 and spiked["loss"] == pytest.approx(rollback["loss"])
    assert rollback["loss"] > rollback["limit"]
    assert served == list(range(33))  # every batch once: after the rollback the loader went on past step 18's
    assert [r["step"] for r in read_log(tmp_path / "run", "train")] == [*range(1, 19), *range(16, 31)]
    assert summary["steps"] == 30 and summary["spike_rollbacks"] == 1 and summary["spike_skipped_steps"] == 3
    assert summary["val_loss"] < read_log(tmp_path / "run", "eval")[0]["val_loss"] - 1.0

    # After the rollback the run trains as if resumed from step 15's checkpoint with its loader past step 18's batch.
    resumed = copy.deepcopy(tiny)
    resumed.train.run_dir, resumed.train.spike_rollback = str(tmp_path / "resumed"), False
    shutil.copytree(tmp_path / "run" / "checkpoints" / "step_0000015",
                    tmp_path / "resumed" / "checkpoints" / "step_0000015")
    move_loader(tmp_path / "resumed" / "checkpoints" / "step_0000015", cursor=18 * tiny.train.micro_batch)
    train(resumed, progress=False)
    after_rollback = read_log(tmp_path / "run", "train")[18:]
    assert [r["loss"] for r in read_log(tmp_path / "resumed", "train")] == [r["loss"] for r in after_rollback]


def move_loader(checkpoint_dir, cursor: int) -> None:
    """Set a checkpoint's loader position, and its manifest to match."""
    from nextword.training.checkpoint import _sha256

    trainer = checkpoint_dir / "trainer.json"
    trainer.write_text(json.dumps({**json.loads(trainer.read_text()), "loader": {"epoch": 0, "cursor": cursor}}))
    manifest = json.loads((checkpoint_dir / "manifest.json").read_text())
    manifest["files"]["trainer.json"] = {"bytes": trainer.stat().st_size, "sha256": _sha256(trainer)}
    (checkpoint_dir / "manifest.json").write_text(json.dumps(manifest))


def test_spike_rollback_without_a_spike_changes_nothing(tiny, tmp_path):
    assert TrainConfig().spike_rollback is False
    tiny.train.steps, tiny.train.ckpt_every, tiny.train.spike_window = 24, 5, 5
    train(copy.deepcopy(tiny), progress=False)
    tiny.train.run_dir, tiny.train.spike_rollback = str(tmp_path / "watched"), True
    train(tiny, progress=False)
    for kind, field in (("train", "loss"), ("eval", "val_loss")):
        watched = [r[field] for r in read_log(tmp_path / "watched", kind)]
        assert watched == [r[field] for r in read_log(tmp_path / "run", kind)]


def test_a_loss_that_spikes_after_every_rollback_ends_the_run_with_one_line(tiny, tmp_path, monkeypatch):
    tiny.train.steps, tiny.train.ckpt_every, tiny.train.spike_window = 30, 5, 5
    tiny.train.spike_rollback, tiny.train.max_spike_rollbacks = True, 2
    # The first round's network, whose loss this garbage was measured to lift past the spike limit
    tiny.model.arch, tiny.model.tie_embeddings, tiny.model.embedding_norm = "gpt2", True, False
    serve_garbage(monkeypatch, set(range(17, 100)))  # from step 18's batch on, the data is garbage
    with pytest.raises(LossSpikeError, match="after 2 rollback") as error:
        train(tiny, progress=False)
    assert "\n" not in str(error.value) and "train.max_spike_rollbacks" in str(error.value)
    assert [r["to_step"] for r in read_log(tmp_path / "run", "rollback")] == [15, 15]
    assert latest_checkpoint(tmp_path / "run").name == "step_0000015"


def test_a_spike_is_measured_in_standard_deviations_of_the_recent_losses():
    recent = [3.0, 3.2, 3.4, 3.2]
    assert spike_limit(recent, 6.0) == pytest.approx(3.2 + 6 * statistics.pstdev(recent))
    assert spike_limit([2.0] * 5, 6.0) == pytest.approx(2.0 + 6 * 0.02)  # a plateau: at least 1% of the mean


def test_a_validation_split_shorter_than_a_window_stops_the_run_before_any_measuring(tiny, monkeypatch):
    """One document of validation text is fewer tokens than a 1,024-token window: the run must say so before
    the precision race, which at a long context can take minutes, and before training."""
    tiny.model.context, tiny.data.val_fraction = 1024, 0.01

    def race_ran(*args, **kwargs):
        raise AssertionError("the precision race ran before the data was checked")

    monkeypatch.setattr("nextword.training.precision.choose_precision", race_ran)
    with pytest.raises(DataError, match="the val split has .* tokens, but one window needs context"):
        train(tiny, progress=False)


def test_a_resumed_budgeted_run_says_it_follows_its_first_plan_not_a_new_budget(tiny, capsys):
    tiny.train.budget, tiny.eval.every = "20s", 1000
    train(copy.deepcopy(tiny), progress=False, stop_after=15)
    capsys.readouterr()
    tiny.train.budget = "1h"
    train(tiny, progress=False, stop_after=16)

    out = capsys.readouterr().out
    records = map(json.loads, open(f"{tiny.train.run_dir}/log.jsonl").read().splitlines())
    planned = [record for record in records if record["kind"] == "run"][-1]["planned_steps"]
    assert planned > 16
    assert f"resuming at step 15 of the {planned:,} steps planned when the run began" in out
    assert "budget 3600 s" not in out


def test_a_repeated_sigterm_still_saves_but_a_second_ctrl_c_stops_at_once():
    """A scheduler ending a job signals every process and torchrun passes its own SIGTERM on, so a worker gets
    two: the save must go on. Only a second Ctrl-C means "stop now"."""
    terminated = StopRequest()
    terminated(signal.SIGTERM, None)
    terminated(signal.SIGTERM, None)
    assert terminated.signal == signal.SIGTERM

    interrupted = StopRequest()
    interrupted(signal.SIGINT, None)
    interrupted(signal.SIGTERM, None)  # torchrun passing the same Ctrl-C on
    with pytest.raises(KeyboardInterrupt):
        interrupted(signal.SIGINT, None)


def test_the_closing_lines_count_a_small_run_and_say_how_to_go_on_after_stop_after(tiny, capsys):
    tiny.train.steps, tiny.eval.every = 6, 1000
    train(copy.deepcopy(tiny), progress=False, stop_after=3)
    assert "run the same command without --stop-after (or with a later step) to resume" in capsys.readouterr().out
    train(tiny, progress=False)
    tokens_per_step = tiny.train.micro_batch * tiny.model.context  # one micro-step a step in this config
    assert f"done: 6 steps, {6 * tokens_per_step:,} tokens in " in capsys.readouterr().out


def test_without_prompts_the_samples_begin_as_the_datas_own_documents_do(tiny, tmp_path):
    """On a user's corpus the default corpus's prompts ("def ", "import ") make odd starts; with none set, the run
    takes the first words of validation documents, keeps them in its config.toml, and samples after them."""
    from nextword.config import load
    from nextword.data.shards import TokenShards

    tiny.eval.prompts, tiny.train.steps = [], 2
    train(tiny, progress=False)
    prompts = load(tmp_path / "run" / "config.toml").eval.prompts
    val = TokenShards(tiny.data.data_dir, "val")
    model, tokenizer, _ = load_for_inference(tmp_path / "run")
    starts = [tokenizer.decode(array[start:start + 40].tolist()) for array, starts in zip(val.arrays, val.doc_starts)
              for start in starts]
    assert prompts and all(any(text.startswith(prompt) for text in starts) for prompt in prompts)
    assert all(len(prompt.split()) == 3 for prompt in prompts)
    assert [s["prompt"] for s in read_log(tmp_path / "run", "eval")[-1]["samples"]] == prompts


def test_a_flops_budget_trains_the_steps_its_compute_buys(tiny, tmp_path):
    from nextword.model import GPT

    tiny.model.vocab_size = 300
    flops_per_token = GPT(tiny.model).flops_per_token()
    tokens_per_step = tiny.train.micro_batch * tiny.model.context
    tiny.model.vocab_size = 0
    tiny.train.flops = str(7 * tokens_per_step * flops_per_token)
    summary = train(tiny, progress=False)
    assert summary["steps"] == 7 and summary["tokens"] == 7 * tokens_per_step
    assert read_log(tmp_path / "run", "run")[0]["governs"] == "flops"
