"""torch.compile with its real backend, inductor, which builds C++ for the CPU with the machine's compiler: a
compiled run trains as the eager one does and resumes, a mixture of experts compiles, FSDP compiles each block on
its own, and where the compiler fails the run says why in one line and trains eagerly to its end.

A real compile takes a minute or more on a busy CPU, whatever the shape. So these tests share one inductor cache
(a graph compiled once is loaded by every later test, and by the processes torchrun starts), keep the model tiny,
are marked slow and each has a time cap.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._inductor.config
from test_train import make_corpus, read_log, tiny  # noqa: F401  (tiny is a fixture)

from nextword.config import RunConfig, model_preset
from nextword.model import GPT
from nextword.model.moe import moe_layers, total_balance_loss
from nextword.training.trainer import train

STEPS, STOP_AT = 8, 4
# Compiled and eager losses agree this closely (relative). Inductor fuses the model's elementwise ops and norms and
# reorders their fp32 sums, so each op may differ from eager in its last bits (fp32's epsilon is 1.2e-7); over a
# few steps AdamW carries those differences into the weights. Here the losses part by 1e-7 at most; the tolerance
# leaves a hundredfold margin for other CPUs' vector widths. A wrong graph, or a warm-up that moved the weights or
# read a batch of the training data, parts them by far more.
COMPILED_REL = 1e-5

# `nextword train`, in a process whose compiler fails on the rank named by FAILING_RANK.
FAILS_ON_ONE_RANK = """
import os, sys
import torch._inductor.config
from nextword import cli

if os.environ["RANK"] == os.environ["FAILING_RANK"]:
    torch._inductor.config.cpp.cxx = (None, "/nonexistent/c++")
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory):
    """One inductor cache for every test here and the processes they start."""
    folder = tmp_path_factory.getbasetemp() / "inductor-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles for itself: code compiled by an earlier test in this process is forgotten (what inductor
    built stays in the cache folder)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_config(tmp: Path) -> RunConfig:
    """A tiny model on a few KB of text, trained in two micro-batches a step: one per rank at world size 2."""
    cfg = RunConfig()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context = 2, 32, 2, 32
    cfg.model.size = "fixed"
    cfg.data.sources, cfg.data.vocab_size, cfg.data.val_fraction = [str(make_corpus(tmp / "corpus"))], 300, 0.2
    cfg.data.data_dir = str(tmp / "data")
    cfg.train.micro_batch, cfg.train.log_every, cfg.train.steps, cfg.train.batch_tokens = 4, 1, STEPS, 4 * 32 * 2
    cfg.train.precision, cfg.train.compile, cfg.train.threads, cfg.train.optimizer = "fp32", "off", 1, "adamw"
    # No samples: under FSDP the model's compiled blocks would compile again for every token sampled.
    cfg.eval.batches, cfg.eval.every, cfg.eval.sample_tokens, cfg.eval.prompts = 2, 1000, 0, ["def "]
    return cfg


def train_in(cfg: RunConfig, run_dir: Path, **options) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.train.run_dir = str(run_dir)
    return train(cfg, progress=False, **options)


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_log(run_dir, "train")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inductor_cache):
    """The tiny config, its eager run and its compiled run, each trained to the end."""
    tmp = tmp_path_factory.mktemp("compile")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEXTWORD_CACHE", str(tmp / "cache"))
        cfg = tiny_config(tmp)
        train_in(cfg, tmp / "eager")
        torch._dynamo.reset()
        cfg.train.compile = "on"
        train_in(cfg, tmp / "compiled")
        torch._dynamo.reset()
    cfg.train.compile = "off"
    return tmp, cfg


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_compiled_run_gives_the_eager_runs_losses(runs):
    tmp, _ = runs
    record = read_log(tmp / "compiled", "run")[0]
    assert record["compile"] is True and record["compile_reason"] == "set in the config"
    assert len(losses(tmp / "compiled")) == STEPS
    assert losses(tmp / "compiled") == pytest.approx(losses(tmp / "eager"), rel=COMPILED_REL)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_compiled_run_resumes_with_the_losses_of_the_uninterrupted_one(runs, monkeypatch):
    tmp, cfg = runs
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp / "cache"))
    cfg.train.compile = "on"
    assert train_in(cfg, tmp / "resumed", stop_after=STOP_AT)["step"] == STOP_AT
    torch._dynamo.reset()  # a resume is a new process: it compiles again (from the cache)
    train_in(cfg, tmp / "resumed")
    assert [r["compile"] for r in read_log(tmp / "resumed", "run")] == [True, True]
    # The same compiled code on the same data from the same state: only a warm-up that changed the run could part them.
    assert losses(tmp / "resumed") == pytest.approx(losses(tmp / "compiled"), abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_failing_compiler_leaves_one_line_and_the_run_trains_eagerly(runs, tmp_path, monkeypatch, capsys):
    tmp, cfg = runs
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp / "cache"))
    # A cache of its own, so that nothing compiled before can stand in for the compiler that is missing.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, str(tmp_path / "no-such-c++")))
    cfg.train.compile = "on"
    assert train_in(cfg, tmp_path / "run")["steps"] == STEPS
    said = [line for line in capsys.readouterr().out.splitlines() if "torch.compile failed" in line]
    assert len(said) == 1 and said[0].startswith("torch.compile failed, training eagerly: InductorError: "
                                                 "InvalidCxxCompiler: No working C++ compiler found"), said
    record = read_log(tmp_path / "run", "run")[0]
    assert record["compile"] is False and record["compile_reason"].startswith("failed, so eager: InductorError")
    # Eager from its first step, and the failed warm-up changed nothing: the eager run's losses, exactly.
    assert losses(tmp_path / "run") == losses(tmp / "eager")


@pytest.mark.slow
def test_the_warm_up_leaves_the_run_as_it_was(tiny, tmp_path, monkeypatch):
    """With dropout and a mixture of experts, a run whose warm-up ran gives the losses and expert loads of one
    without: the warm-up read no batch, drew no random number and left no gradient or routing count behind."""
    tiny.model.dropout, tiny.model.n_experts, tiny.model.experts_per_token = 0.1, 4, 2
    tiny.train.steps = 4
    train_in(tiny, tmp_path / "eager")
    # The eager backend traces as a real compile does and then runs the same kernels, drawing the same numbers.
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: compile(model, backend="eager"))
    tiny.train.compile = "on"
    train_in(tiny, tmp_path / "compiled")
    assert read_log(tmp_path / "compiled", "run")[0]["compile"] is True
    trained = [(r["loss"], r["expert_load"]) for r in read_log(tmp_path / "compiled", "train")]
    assert trained == [(r["loss"], r["expert_load"]) for r in read_log(tmp_path / "eager", "train")]


def tiny_sparse_model() -> GPT:
    """The moe-tiny preset made tinier: one block, four routed experts (two per token) and a shared one."""
    cfg = model_preset("moe-tiny")
    cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.context, cfg.vocab_size = 1, 32, 2, 1, 16, 64
    cfg.n_experts, cfg.experts_per_token, cfg.d_expert, cfg.d_ff = 4, 2, 24, 48
    torch.manual_seed(0)
    return GPT(cfg)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_compiled_mixture_of_experts_steps_as_the_eager_one(inductor_cache):
    # One step: each later step whose routing differs compiles the expert loop again, a cost this test need not pay.
    eager = tiny_sparse_model()
    compiled = copy.deepcopy(eager)
    batch = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(1))
    stepped = []
    for model, run in ((eager, eager), (compiled, torch.compile(compiled))):
        loss = run(batch[:, :-1], batch[:, 1:])
        (loss + total_balance_loss(moe_layers(model), 0.01)).backward()
        routed = [m.load.tolist() for m in moe_layers(model)]
        stepped.append((loss.item(), [p.grad for p in model.parameters()], routed))
    (eager_loss, eager_grads, eager_load), (compiled_loss, compiled_grads, compiled_load) = stepped
    assert compiled_loss == pytest.approx(eager_loss, rel=COMPILED_REL)
    for e, c in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(c, e, rtol=COMPILED_REL, atol=1e-6)
    assert compiled_load == eager_load  # the same tokens went to the same experts


def torchrun_train(script: Path, config: Path, run_dir: Path, *options: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               "train", "--config", str(config), "--run-dir", str(run_dir), "--train.parallel", "fsdp",
               "--train.compile", "on", *options]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=280, check=False)


@pytest.fixture
def fsdp_job(runs, inductor_cache):
    """How to start a 2-process FSDP job on gloo whose ranks fail to compile where FAILING_RANK says."""
    tmp, cfg = runs
    config = tmp / "config.toml"
    cfg.save(config)
    script = tmp / "fails_on_one_rank.py"
    script.write_text(FAILS_ON_ONE_RANK)
    env = {**os.environ, "NEXTWORD_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}

    def run(run_dir: Path, failing_rank: int | None) -> subprocess.CompletedProcess:
        env["FAILING_RANK"] = str(failing_rank)
        return torchrun_train(script, config, run_dir, env=env)

    return tmp, run


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_whose_compiler_fails_sends_every_rank_eager(fsdp_job):
    tmp, run = fsdp_job
    done = run(tmp / "fsdp-one-fails", failing_rank=1)
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stdout.splitlines() if "torch.compile failed" in line]
    assert len(said) == 1 and "InvalidCxxCompiler" in said[0] and said[0].endswith("(on rank 1)"), done.stdout
    record = read_log(tmp / "fsdp-one-fails", "run")[0]
    assert record["compile"] is False and record["compile_reason"].endswith("(on rank 1)")
    assert losses(tmp / "fsdp-one-fails") == pytest.approx(losses(tmp / "eager"), rel=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fsdp_compiles_each_block_and_gives_the_eager_losses(fsdp_job):
    # After the test above, whose rank 0 compiled the blocks before going eager: both ranks here load them.
    tmp, run = fsdp_job
    done = run(tmp / "fsdp", failing_rank=None)
    assert done.returncode == 0, done.stderr[-3000:]
    record = read_log(tmp / "fsdp", "run")[0]
    assert record["compile"] is True and record["compile_reason"] == "each block on its own under FSDP"
    assert losses(tmp / "fsdp") == pytest.approx(losses(tmp / "eager"), rel=COMPILED_REL)


def test_samples_from_blocks_compiled_in_place_compile_nothing(tmp_path):
    """FSDP compiles the blocks in place, so an evaluation samples from compiled blocks; each sampled token grows the
    cache, which would compile them again at every new length. Samples are drawn eagerly."""
    from nextword.config import EvalConfig, ModelConfig
    from nextword.data.tokenizer import Tokenizer
    from nextword.training.evaluator import samples

    tokenizer = Tokenizer.train(["def add(a, b):\n    return a + b\n"] * 20, 300)
    model = GPT(ModelConfig(n_layers=1, d_model=32, n_heads=2, context=32, vocab_size=tokenizer.vocab_size))
    compiled_graphs = []

    def counting_backend(graph, example_inputs):
        compiled_graphs.append(graph)
        return graph.forward

    for block in model.blocks:
        block.compile(backend=counting_backend)
    texts = samples(model, tokenizer, EvalConfig(prompts=["def "], sample_tokens=12), seed=0)
    assert texts[0]["text"] and compiled_graphs == []
