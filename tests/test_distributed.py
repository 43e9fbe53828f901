"""Training over several processes (gloo on CPU): the same losses as one process, resume at another world size,
and a failing rank that ends the job instead of hanging it."""

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import make_corpus

from nextword.training.checkpoint import latest_checkpoint, load_for_inference, read_manifest
from nextword.config import RunConfig, load
from nextword.training.distributed import World, parallel_mode
from nextword.errors import CheckpointError, ConfigError
from nextword.training.batch import accumulation
from nextword.training.trainer import train

STEPS, STOP_AT = 16, 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny config saved as TOML, its data prepared, and the single-process run every other run must match."""
    tmp = tmp_path_factory.mktemp("distributed")
    # The scripts the ranks run import their helpers from this folder.
    env = {**os.environ, "NEXTWORD_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    cfg = RunConfig()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context = 2, 32, 2, 32
    cfg.data.sources, cfg.data.vocab_size, cfg.data.val_fraction = [str(make_corpus(tmp / "corpus"))], 300, 0.2
    cfg.data.data_dir = str(tmp / "data")
    cfg.train.micro_batch, cfg.train.log_every, cfg.train.steps = 4, 1, STEPS
    cfg.train.batch_tokens = 4 * 32 * 2  # one micro-batch per rank at world size 2; two micro-steps alone
    cfg.train.precision, cfg.train.compile, cfg.train.threads = "fp32", "off", 1
    # AdamW, whose step sums in fp32, matches one process to 1e-5; Muon's Newton–Schulz runs in bf16 and has its
    # own tests below, to 1e-4.
    cfg.train.optimizer = "adamw"
    cfg.eval.batches, cfg.eval.every, cfg.eval.sample_tokens, cfg.eval.prompts = 2, 1000, 4, ["def "]
    cfg.save(tmp / "config.toml")

    single = copy.deepcopy(cfg)
    single.train.run_dir = str(tmp / "single")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEXTWORD_CACHE", env["NEXTWORD_CACHE"])
        train(single, progress=False)
    return tmp, env, cfg


def losses(run_dir, kind="train", field="loss"):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r[field] for r in map(json.loads, lines) if r["kind"] == kind]


def launch(command, env, timeout=120):
    began = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return done, time.monotonic() - began


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def test_ddp_over_two_processes_gives_the_single_process_losses(setup):
    tmp, env, _ = setup
    command = [sys.executable, "-m", "nextword", "train", "--nproc", "2", "--config", str(tmp / "config.toml"),
               "--run-dir", str(tmp / "ddp"), "--quiet"]
    done, _ = launch(command, env)
    assert done.returncode == 0, done.stderr[-3000:]
    # The job it starts, printed as a command one can run oneself
    assert f"torchrun --standalone --nproc_per_node=2 -m nextword train --config {tmp / 'config.toml'}" in done.stderr
    assert done.stdout.count("done:") == 1  # rank 0 alone prints
    assert done.stderr.count("prepare: reusing") == 1
    run_line = losses(tmp / "ddp", "run", "parallel")
    assert run_line == ["ddp"]
    assert losses(tmp / "ddp") == pytest.approx(losses(tmp / "single"), rel=1e-5)
    assert losses(tmp / "ddp", "eval", "val_loss") == pytest.approx(losses(tmp / "single", "eval", "val_loss"),
                                                                   rel=1e-5)


def gloo_threads() -> list[str]:
    """The names of this process's threads that gloo started (its workers and its socket loop)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended while being listed
            names.append((task / "comm").read_text().strip())
    return [name for name in names if "gloo" in name]


# `nextword train`, then how many of gloo's threads are still running once training has returned.
REPORTS_GLOO_THREADS = """
import sys
from nextword import cli
from test_distributed import gloo_threads

code = cli.main(sys.argv[1:])
print(f"gloo threads left: {len(gloo_threads())}", file=sys.stderr)
sys.exit(code)
"""


def test_fsdp_saved_at_two_processes_resumes_in_one_with_the_same_losses(setup):
    tmp, env, _ = setup
    run_dir = tmp / "fsdp"
    script = tmp / "reports_gloo_threads.py"
    script.write_text(REPORTS_GLOO_THREADS)
    done, _ = launch(torchrun(str(script), "train", "--config", str(tmp / "config.toml"), "--run-dir", str(run_dir),
                              "--train.parallel", "fsdp", "--stop-after", str(STOP_AT), "--quiet"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    # Each rank freed its process group before the interpreter began to shut down: a gloo thread still running
    # then can abort the process ("terminate called without an active exception") after a run that succeeded.
    assert done.stderr.count("gloo threads left: 0") == 2, done.stderr[-3000:]
    checkpoint = latest_checkpoint(run_dir)
    assert read_manifest(checkpoint)["world_size"] == 2 and read_manifest(checkpoint)["layout"] == "sharded"

    # The sharded checkpoint's consolidated weights serve `sample` and `export` like any checkpoint's.
    model, _, _ = load_for_inference(run_dir)
    assert model.num_params() > 0

    done, _ = launch([sys.executable, "-m", "nextword", "train", "--run-dir", str(run_dir), "--quiet"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout
    assert losses(run_dir, "run", "world_size") == [2, 1]
    assert losses(run_dir) == pytest.approx(losses(tmp / "single"), rel=1e-5)


def test_a_run_without_batch_tokens_keeps_its_global_batch_when_resumed_in_one_process(setup):
    tmp, env, _ = setup
    run_dir = tmp / "no-batch-tokens"
    # Without train.batch_tokens a step is one micro-batch per rank: at two ranks, the single run's global batch.
    tokens = str(STEPS * 4 * 32 * 2)
    done, _ = launch(torchrun("-m", "nextword", "train", "--config", str(tmp / "config.toml"), "--run-dir",
                              str(run_dir), "--train.batch_tokens", "0", "--tokens", tokens, "--stop-after",
                              str(STOP_AT), "--quiet"), env)
    assert done.returncode == 0, done.stderr[-3000:]

    done, _ = launch([sys.executable, "-m", "nextword", "train", "--run-dir", str(run_dir), "--quiet"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(run_dir, "run", "tokens_per_step") == [256, 256]
    assert losses(run_dir, "run", "accumulation") == [1, 2]
    assert losses(run_dir) == pytest.approx(losses(tmp / "single"), rel=1e-5)


def test_a_single_process_checkpoint_resumes_under_fsdp(setup, monkeypatch):
    tmp, env, cfg = setup
    monkeypatch.setenv("NEXTWORD_CACHE", env["NEXTWORD_CACHE"])
    cfg = copy.deepcopy(cfg)
    cfg.train.run_dir = str(tmp / "single-then-fsdp")
    train(copy.deepcopy(cfg), progress=False, stop_after=STOP_AT)
    cfg.train.parallel = "fsdp"  # one process, sharded over a group of one
    train(cfg, progress=False)
    assert losses(tmp / "single-then-fsdp", "run", "parallel") == ["none", "fsdp"]
    assert losses(tmp / "single-then-fsdp") == pytest.approx(losses(tmp / "single"), rel=1e-5)


def test_training_under_fsdp_frees_its_process_group(setup, monkeypatch):
    tmp, env, cfg = setup
    monkeypatch.setenv("NEXTWORD_CACHE", env["NEXTWORD_CACHE"])
    cfg = copy.deepcopy(cfg)
    cfg.train.run_dir, cfg.train.parallel, cfg.train.steps = str(tmp / "fsdp-frees-group"), "fsdp", 2
    before = gloo_threads()
    train(cfg, progress=False)  # a group of one, sharded checkpoint included
    assert gloo_threads() == before


def fails_on_call(next_batch, call: int, message: str):
    """TokenLoader.next_batch, but its `call`-th call raises RuntimeError(message)."""
    calls = []

    def next_batch_or_fail(loader, rows=None):
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError(message)
        return next_batch(loader, rows)

    return next_batch_or_fail


def test_a_run_that_fails_under_fsdp_frees_its_process_group_too(setup, monkeypatch):
    from nextword.data.loader import TokenLoader

    tmp, env, cfg = setup
    monkeypatch.setenv("NEXTWORD_CACHE", env["NEXTWORD_CACHE"])
    cfg = copy.deepcopy(cfg)
    cfg.train.run_dir, cfg.train.parallel, cfg.train.steps = str(tmp / "fsdp-fails"), "fsdp", 4
    monkeypatch.setattr(TokenLoader, "next_batch", fails_on_call(TokenLoader.next_batch, 3, "disk vanished"))
    before = gloo_threads()
    with pytest.raises(RuntimeError, match="disk vanished"):
        train(cfg, progress=False)
    assert gloo_threads() == before  # the failed run's frames no longer hold the model, and with it the group


FAILING_RANK = """
import os, sys
from nextword import cli
from nextword.data.loader import TokenLoader
from test_distributed import fails_on_call

if os.environ["RANK"] == "1":
    TokenLoader.next_batch = fails_on_call(TokenLoader.next_batch, 3, "disk vanished under rank 1")
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_failing_rank_stops_the_job_with_its_error(setup):
    tmp, env, _ = setup
    script = tmp / "failing_rank.py"
    script.write_text(FAILING_RANK)
    done, seconds = launch(torchrun(str(script), "train", "--config", str(tmp / "config.toml"), "--run-dir",
                                    str(tmp / "failing"), "--quiet"), env, timeout=90)
    assert done.returncode != 0
    assert seconds < 60
    assert "disk vanished under rank 1" in done.stderr
    assert "rank: 1" in done.stderr  # torchrun's failure report names the rank


def test_a_rank_stopped_by_bad_input_leaves_torchrun_its_one_line_not_a_traceback(tmp_path, monkeypatch):
    from nextword import cli

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))  # as torchrun sets it for each rank
    code = cli.main(["train", "--run-dir", str(tmp_path / "run"), "--train.parallel", "nonsense"])
    assert code == 2
    report = json.loads(error_file.read_text())["message"]["extraInfo"]["py_callstack"]
    assert "train.parallel" in report and "Traceback" not in report
    assert len(report.splitlines()) == 1


def test_the_global_batch_is_the_same_at_every_world_size():
    cfg = RunConfig()
    cfg.train.micro_batch, cfg.train.batch_tokens = 4, 4 * 32 * 8
    assert [accumulation(cfg.train, 32, n) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(ConfigError, match="batch_tokens"):
        accumulation(cfg.train, 32, 3)


def test_parallel_modes_follow_the_world_size():
    one, two = World(), World(rank=1, local_rank=1, size=2, local_size=2)
    assert parallel_mode("auto", one) == "none" and parallel_mode("auto", two) == "ddp"
    assert parallel_mode("ddp", one) == "none" and parallel_mode("fsdp", one) == "fsdp"
    with pytest.raises(ConfigError, match="torchrun started 2 processes"):
        parallel_mode("none", two)


def test_the_gpu_benchmark_runs_at_a_tiny_shape_on_a_cpu(tmp_path):
    pytest.importorskip("transformers")
    results = tmp_path / "RESULTS.md"
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_throughput.py"
    command = [sys.executable, str(script), "--device", "cpu", "--tiny", "--steps", "2",
               "--warmup", "1", "--max-fsdp-batch", "2", "--append", str(results)]
    done, _ = launch(command, {**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    table = results.read_text()
    for row in ("| nextword gpt2-124m | 4 × 64 |", "| transformers GPT2LMHeadModel | 4 × 64 |",
                "largest micro-batch that fits: 2"):
        assert row in table
    # The fastest FSDP micro-batch is kept; at this tiny shape timing noise decides between 1 and 2.
    assert re.search(r"\| nextword llama-1b FSDP \| [12] × 64 \|", table)


def test_a_sharded_checkpoint_round_trips_and_refuses_nan_weights(tmp_path):
    import torch

    from nextword.model import GPT
    from nextword.training.checkpoint import save_checkpoint
    from nextword.training.sharded import ShardedStorage, load_checkpoint

    cfg = RunConfig()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context, cfg.model.vocab_size = 1, 16, 2, 8, 50
    torch.manual_seed(0)
    model = GPT(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)).backward()
    optimizer.step()
    path = save_checkpoint(tmp_path, 1, model, optimizer, {"step": 1}, cfg, "tok", keep_last=2,
                           storage=ShardedStorage(), world=World())
    assert read_manifest(path)["layout"] == "sharded" and latest_checkpoint(tmp_path) == path

    torch.manual_seed(1)
    fresh = GPT(cfg.model)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    assert load_checkpoint(path, fresh, fresh_optimizer) == {"step": 1}
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    moments = [s["exp_avg"] for s in optimizer.state.values()]
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, fresh_optimizer.state.values()))

    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        save_checkpoint(tmp_path, 2, model, optimizer, {"step": 2}, cfg, "tok", keep_last=2,
                        storage=ShardedStorage(), world=World())
    assert latest_checkpoint(tmp_path) == path


@pytest.fixture(scope="module")
def muon(setup):
    """The setup's config trained with Muon in one process: the run every Muon run below must match."""
    tmp, env, cfg = setup
    cfg = copy.deepcopy(cfg)
    cfg.train.optimizer = "muon"
    cfg.save(tmp / "muon.toml")
    single = copy.deepcopy(cfg)
    single.train.run_dir = str(tmp / "muon-single")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEXTWORD_CACHE", env["NEXTWORD_CACHE"])
        train(single, progress=False)
    return cfg


def test_muon_under_fsdp_at_two_processes_gives_the_single_process_losses_and_resumes_in_one(setup, muon,
                                                                                              monkeypatch):
    tmp, env, _ = setup
    run_dir = tmp / "muon-fsdp"
    done, _ = launch(torchrun("-m", "nextword", "train", "--config", str(tmp / "muon.toml"), "--run-dir",
                              str(run_dir), "--train.parallel", "fsdp", "--stop-after", str(STOP_AT), "--quiet"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_manifest(latest_checkpoint(run_dir))["world_size"] == 2

    # Resumed in this process from the run's own config: every Muon momentum buffer and AdamW moment is read
    # back from both ranks' halves.
    monkeypatch.setenv("NEXTWORD_CACHE", env["NEXTWORD_CACHE"])
    train(load(run_dir / "config.toml"), progress=False)
    assert losses(run_dir, "run", "world_size") == [2, 1]
    # Newton–Schulz runs on the whole gathered matrix, so sharding changes only the order of fp32 sums in the
    # gradients, as under DDP (below).
    assert losses(run_dir) == pytest.approx(losses(tmp / "muon-single"), rel=1e-4)
    assert losses(run_dir) != pytest.approx(losses(tmp / "single"), rel=1e-3)  # Muon did train, not AdamW


def test_muon_under_ddp_at_two_processes_gives_the_single_process_losses(setup, muon):
    tmp, env, _ = setup
    done, _ = launch(torchrun("-m", "nextword", "train", "--config", str(tmp / "muon.toml"), "--run-dir",
                              str(tmp / "muon-ddp"), "--quiet"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(tmp / "muon-ddp", "run", "parallel") == ["ddp"]
    assert losses(tmp / "muon-ddp", "run", "optimizer") == ["muon"]
    # All-reduced gradients differ from one process's in the order of fp32 sums; Newton–Schulz's bf16 rounding
    # then lets that grow to about 2e-5 of the loss in 16 steps.
    assert losses(tmp / "muon-ddp") == pytest.approx(losses(tmp / "muon-single"), rel=1e-4)


def test_muon_resumes_exactly_from_a_single_file_checkpoint_alone_or_under_fsdp(setup, muon, monkeypatch):
    tmp, env, _ = setup
    monkeypatch.setenv("NEXTWORD_CACHE", env["NEXTWORD_CACHE"])
    for parallel in ("none", "fsdp"):  # fsdp: one process, sharded over a group of one
        cfg = copy.deepcopy(muon)
        cfg.train.run_dir = str(tmp / f"muon-single-then-{parallel}")
        train(copy.deepcopy(cfg), progress=False, stop_after=STOP_AT)
        cfg.train.parallel = parallel
        train(cfg, progress=False)
        assert losses(Path(cfg.train.run_dir), "run", "parallel") == ["none", parallel]
        assert losses(Path(cfg.train.run_dir)) == pytest.approx(losses(tmp / "muon-single"), rel=1e-6)


def test_a_run_saved_with_adamw_refuses_to_resume_with_muon(setup, muon, monkeypatch):
    tmp, env, cfg = setup
    monkeypatch.setenv("NEXTWORD_CACHE", env["NEXTWORD_CACHE"])
    cfg = copy.deepcopy(cfg)
    cfg.train.run_dir = str(tmp / "adamw-then-muon")
    train(copy.deepcopy(cfg), progress=False, stop_after=2)
    cfg.train.optimizer = "muon"
    with pytest.raises(CheckpointError, match="saved with train.optimizer = adamw, but this run asks for muon"):
        train(cfg, progress=False)


@pytest.fixture(scope="module")
def foreign_state(setup):
    """A run stopped at a checkpoint whose state.pt another program wrote, with a manifest that vouches for it."""
    import torch

    from nextword.training.checkpoint import _sha256

    tmp, env, cfg = setup
    cfg = copy.deepcopy(cfg)
    cfg.train.run_dir = str(tmp / "foreign-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEXTWORD_CACHE", env["NEXTWORD_CACHE"])
        train(cfg, progress=False, stop_after=STOP_AT)
    checkpoint = latest_checkpoint(cfg.train.run_dir)
    state = checkpoint / "state.pt"
    torch.save({"model": {"weight": torch.zeros(2)}, "epoch": 3}, state)  # another trainer's checkpoint
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["state.pt"] = {"bytes": state.stat().st_size, "sha256": _sha256(state)}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    return Path(cfg.train.run_dir), state


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_foreign_state_file_is_the_same_one_line_error_in_one_process_and_under_ddp(setup, foreign_state,
                                                                                     processes):
    _, env, _ = setup
    run_dir, state = foreign_state
    command = ["-m", "nextword", "train", "--run-dir", str(run_dir), "--quiet"]
    done, _ = launch(torchrun(*command) if processes == 2 else [sys.executable, *command], env)
    assert done.returncode != 0
    error = f"{state}: not optimizer state nextword wrote; delete {state.parent} to resume from the checkpoint before it"
    assert done.stderr.count(error) >= processes, done.stderr[-3000:]  # every rank says it, in one line
    # No frame of nextword's own code: torchrun's report of the failed ranks is its launcher's traceback alone.
    assert not re.search(r'File ".*nextword[/\\]', done.stderr), done.stderr[-3000:]
