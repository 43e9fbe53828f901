"""The mixture of experts: routing computed as a plain per-token sum would, balance, active-parameter FLOPs, and a
sparse run that trains, logs its routing and resumes exactly."""

import copy
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_train import continue_from_export, tiny  # noqa: F401  (tiny: a fixture)

from nextword.config import ModelConfig, RunConfig, model_preset, validate
from nextword.errors import ConfigError
from nextword.model.moe import MoE, _grouped_mm_answers, balance_loss, grouped_mm_runs, idle_params
from nextword.model.network import GPT
from nextword.tools.report import write_report
from nextword.training.checkpoint import latest_checkpoint
from nextword.training.trainer import train


def sparse_config(**changes) -> ModelConfig:
    shape = dict(arch="llama", n_layers=2, d_model=32, n_heads=2, context=16, vocab_size=64, d_ff=48,
                 n_experts=4, experts_per_token=2, d_expert=24)
    return ModelConfig(**{**shape, **changes})


def per_token_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """What the block should compute, one token and one chosen expert at a time."""
    out = torch.zeros_like(x)
    for n, token in enumerate(x):
        logits = moe.router(token).float()
        if moe.scale_inputs:  # Llama 4: sigmoid of the top logits, scaling each expert's input
            top, chosen = torch.topk(logits, moe.top_k)
            weights = torch.sigmoid(top)
        else:  # Mixtral: softmax, top-k, renormalised, scaling each expert's output
            top, chosen = torch.topk(torch.softmax(logits, -1), moe.top_k)
            weights = top / top.sum()
        for w, e in zip(weights, chosen):
            inp = token * w if moe.scale_inputs else token
            gate, up = (inp @ moe.gate_up[e]).chunk(2)
            y = (F.silu(gate) * up) @ moe.down[e]
            out[n] += y if moe.scale_inputs else w * y
        if moe.shared is not None:
            out[n] += moe.shared(token)
    return out


@pytest.mark.parametrize("path", ["auto", "loop"])
@pytest.mark.parametrize("changes", [dict(), dict(shared_experts=1, experts_per_token=1),
                                     dict(shared_experts=2, experts_per_token=3)])
def test_the_sparse_block_sums_each_tokens_chosen_experts_and_drops_none(changes, path):
    torch.manual_seed(0)
    moe = MoE(sparse_config(**changes))
    moe.expert_path = path
    x = torch.randn(3, 5, 32)
    out = moe(x)
    assert torch.allclose(out.view(-1, 32), per_token_reference(moe, x.view(-1, 32)), atol=1e-5)
    experts, weights = moe.routing
    assert experts.shape == weights.shape == (3, 5, moe.top_k)
    # Every token got its k experts: 15 tokens × k slots, none dropped however uneven the routing.
    assert int(moe.load.sum()) == 15 * moe.top_k


CPU = torch.device("cpu")
needs_cpu_grouped_mm = pytest.mark.skipif(not grouped_mm_runs(CPU, torch.float32),
                                          reason=f"torch {torch.__version__} runs no grouped matmul on CPU")


def outputs_and_gradients(moe: MoE, path: str, x: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    """The block's output and the gradients of x and of every routed weight, with the experts run by `path`."""
    moe.expert_path = path
    moe.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = moe(x)
    out.float().backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return [out.detach().float(), x.grad, moe.gate_up.grad, moe.down.grad, moe.router.weight.grad]


@needs_cpu_grouped_mm
# Error relative to the norm. On CPU torch's grouped kernel is its own loop of matmuls, so the two agree exactly
# there; the tolerances allow a kernel that sums in another order (fp32), or rounds each product to bf16 (bf16).
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("bf16", 2e-2)])
@pytest.mark.parametrize("changes", [dict(), dict(shared_experts=1, experts_per_token=1)])  # Mixtral, Llama 4
def test_grouped_mm_and_the_expert_loop_agree_with_an_expert_left_idle(changes, precision, tolerance):
    torch.manual_seed(0)
    moe = MoE(sparse_config(**changes))
    # Positive inputs and a strongly negative router row: the last expert gets no token, an empty group.
    moe.router.weight.data[-1] = -1.0
    x = torch.rand(3, 5, 32)
    bf16 = precision == "bf16"
    assert moe.takes_grouped_path(CPU, torch.bfloat16 if bf16 else torch.float32)
    grouped = outputs_and_gradients(moe, "grouped", x, autocast=bf16)
    assert int(moe.routing[0].eq(moe.n_experts - 1).sum()) == 0
    looped = outputs_and_gradients(moe, "loop", x, autocast=bf16)
    for name, a, b in zip(["output", "x", "gate_up", "down", "router"], grouped, looped):
        assert float((a - b).norm() / b.norm()) < tolerance, name
    assert float(grouped[2][-1].abs().max()) == 0.0  # the idle expert's weights get no gradient


@needs_cpu_grouped_mm
def test_grouped_mm_is_skipped_for_a_shape_it_cannot_align():
    # d_expert 12: rows of 12 fp32 are 48 bytes, a multiple of 16, but 12 bf16 are 24 bytes, which is not.
    torch.manual_seed(0)
    moe = MoE(sparse_config(d_expert=12))
    assert moe.takes_grouped_path(CPU, torch.float32)
    assert not moe.takes_grouped_path(CPU, torch.bfloat16)
    x = torch.randn(3, 5, 32)
    auto = outputs_and_gradients(moe, "auto", x, autocast=True)
    looped = outputs_and_gradients(moe, "loop", x, autocast=True)
    assert all(torch.equal(a, b) for a, b in zip(auto, looped))
    with pytest.raises(ConfigError, match="d_expert"):
        outputs_and_gradients(moe, "grouped", x, autocast=True)


@needs_cpu_grouped_mm
def test_grouped_mm_probe_answers_the_same_from_inside_an_evaluation():
    """A run's first sparse forward may be under no_grad or inference_mode: the probe's backward must still run."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert _grouped_mm_answers(CPU, torch.float32)
    with torch.no_grad():
        assert _grouped_mm_answers(CPU, torch.bfloat16)


def test_grouped_mm_probe_says_no_where_the_kernel_cannot_run_and_the_loop_takes_over():
    assert not grouped_mm_runs(CPU, torch.float64)  # the kernel takes fp32, bf16 and fp16 only
    torch.manual_seed(0)
    moe = MoE(sparse_config()).double()
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    assert torch.allclose(moe(x).view(-1, 32), per_token_reference(moe, x.view(-1, 32)), atol=1e-10)
    moe.expert_path = "grouped"
    with pytest.raises(ConfigError, match="does not run on cpu in torch.float64"):
        moe(x)
    moe.expert_path = "grouped matmul"
    with pytest.raises(ConfigError, match="auto, grouped, loop"):
        moe(x)


@pytest.mark.slow
@needs_cpu_grouped_mm
def test_grouped_mm_compiles_a_sparse_block_into_one_graph():
    """The loop reads the expert counts on the host, which splits a compiled graph; the grouped path does not."""
    torch.manual_seed(0)
    moe = MoE(sparse_config())
    x = torch.randn(3, 5, 32)
    breaks = {}
    for path in ("grouped", "loop"):
        moe.expert_path = path
        torch._dynamo.reset()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            breaks[path] = torch._dynamo.explain(moe)(x).graph_break_count
    torch._dynamo.reset()
    assert breaks["grouped"] == 0 and breaks["loop"] > 0


def test_the_balance_loss_is_one_when_balanced_and_more_when_not():
    uniform = torch.zeros(8, 4)
    assert float(balance_loss(uniform, torch.tensor([2, 2, 2, 2]), 1)) == pytest.approx(1.0)
    skewed = torch.tensor([[5.0, 0, 0, 0]] * 8)
    assert float(balance_loss(skewed, torch.tensor([8, 0, 0, 0]), 1)) > 3.0


def test_moe_every_interleaves_dense_and_sparse_blocks():
    model = GPT(sparse_config(n_layers=4, moe_every=2))
    assert [isinstance(block.mlp, MoE) for block in model.blocks] == [False, True, False, True]


def test_flops_count_the_active_experts_and_the_router_only():
    cfg = sparse_config(n_experts=8, experts_per_token=1, shared_experts=1, d_expert=16, d_ff=32)
    sparse = GPT(cfg)
    # Per block: one routed + one shared expert of width 16 = one dense SwiGLU of width 32, plus the router.
    dense = GPT(ModelConfig(**{**vars(cfg), "n_experts": 0}))
    router = cfg.n_layers * cfg.d_model * cfg.n_experts
    assert sparse.flops_per_token() == dense.flops_per_token() + 6 * router
    assert sparse.num_params() - idle_params(sparse) == dense.num_params() + router
    assert sparse.num_params() > dense.num_params() + 6 * cfg.n_layers * 3 * 32 * 16


def test_a_sparse_config_that_cannot_work_is_refused():
    for changes, words in ((dict(arch="gpt2"), "arch"), (dict(experts_per_token=5), "experts_per_token"),
                           (dict(moe_every=0), "moe_every")):
        cfg = RunConfig(model=sparse_config(**changes))
        with pytest.raises(ConfigError, match=words):
            validate(cfg)


def test_the_moe_tiny_preset_is_sparse_with_a_dense_blocks_active_width():
    cfg = model_preset("moe-tiny")
    assert cfg.n_experts == 8 and (cfg.experts_per_token + cfg.shared_experts) * cfg.expert_dim == cfg.d_ff


def make_sparse(cfg: RunConfig) -> RunConfig:
    m = cfg.model
    m.arch, m.n_experts, m.experts_per_token, m.shared_experts, m.d_expert = "llama", 4, 1, 1, 32
    m.embedding_norm = False  # as the sparse architectures transformers has (Llama 4, Mixtral, Qwen3-MoE): exportable
    return cfg


def train_lines(run_dir):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] in ("train", "run")]


def test_a_sparse_run_trains_logs_its_routing_and_resumes_exactly(tiny, tmp_path):  # noqa: F811
    make_sparse(tiny).train.steps = 10
    straight = copy.deepcopy(tiny)
    train(straight, progress=False)
    run, *steps = train_lines(tmp_path / "run")
    assert run["balance_coef"] == 0.01 and run["params_active"] < run["params"]
    for line in steps:
        assert len(line["expert_load"]) == 2 and all(len(row) == 4 for row in line["expert_load"])
        assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in line["expert_load"])
        assert line["balance_loss"] >= 0.99  # 1.0 at perfect balance, more otherwise
    assert steps[-1]["loss"] < steps[0]["loss"]
    page = write_report(tmp_path / "run").read_text()
    assert 'src="experts.png"' in page and "parameters active per token" in page
    assert (tmp_path / "run" / "report" / "experts.png").stat().st_size > 0

    resumed = copy.deepcopy(straight)
    resumed.train.run_dir = str(tmp_path / "resumed")
    assert train(resumed, progress=False, stop_after=5)["step"] == 5
    assert latest_checkpoint(tmp_path / "resumed") is not None
    train(resumed, progress=False)
    again = train_lines(tmp_path / "resumed")
    again = [r for r in again if r["kind"] == "train"]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in steps], abs=1e-6)
    assert again[-1]["expert_load"] == steps[-1]["expert_load"]


def test_a_sparse_run_gives_the_same_losses_under_ddp_and_resumes_from_fsdp(tmp_path):
    from test_distributed import launch, losses, torchrun
    from test_train import make_corpus

    env = {**os.environ, "NEXTWORD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    cfg = make_sparse(RunConfig())
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context = 2, 32, 2, 32
    cfg.data.sources, cfg.data.vocab_size, cfg.data.val_fraction = [str(make_corpus(tmp_path / "corpus"))], 300, 0.2
    cfg.data.data_dir = str(tmp_path / "data")
    cfg.train.micro_batch, cfg.train.log_every, cfg.train.steps, cfg.train.batch_tokens = 4, 1, 8, 4 * 32 * 2
    cfg.train.precision, cfg.train.compile, cfg.train.threads = "fp32", "off", 1
    cfg.eval.batches, cfg.eval.every, cfg.eval.sample_tokens, cfg.eval.prompts = 2, 1000, 4, ["def "]
    # The balance loss is taken over each micro-batch, and a rank's micro-batch holds other windows than the
    # single process's (the loader gives each rank its own stream): with it, the runs differ by design. Without
    # it, routing and everything else must match.
    cfg.model.balance_coef = 0.0
    cfg.train.optimizer = "adamw"  # its fp32 step matches one process to 1e-5; Muon's bf16 Newton–Schulz to 1e-4
    config = tmp_path / "config.toml"
    cfg.save(config)
    base = [sys.executable, "-m", "nextword", "train", "--config", str(config), "--quiet"]

    done, _ = launch([*base, "--run-dir", str(tmp_path / "single")], env)
    assert done.returncode == 0, done.stderr[-3000:]
    done, _ = launch([*base, "--nproc", "2", "--run-dir", str(tmp_path / "ddp")], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=1e-5)
    # What the log shows is over both ranks: each expert's share of all routed tokens.
    ddp_load, single_load = losses(tmp_path / "ddp", field="expert_load"), losses(tmp_path / "single", field="expert_load")
    assert sum(ddp_load[0], []) == pytest.approx(sum(single_load[0], []), abs=1e-3)

    done, _ = launch([*base, "--nproc", "2", "--run-dir", str(tmp_path / "balanced"), "--model.balance_coef", "0.01"],
                     env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(tmp_path / "balanced", "run", "balance_coef") == [0.01]

    fsdp = tmp_path / "fsdp"
    done, _ = launch(torchrun("-m", "nextword", "train", "--config", str(config), "--run-dir", str(fsdp),
                              "--train.parallel", "fsdp", "--stop-after", "4", "--quiet"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    done, _ = launch([sys.executable, "-m", "nextword", "train", "--run-dir", str(fsdp), "--quiet"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(fsdp, "run", "world_size") == [2, 1]
    assert losses(fsdp) == pytest.approx(losses(tmp_path / "single"), rel=1e-5)


def test_a_dense_runs_checkpoints_match_as_before_and_a_sparse_shape_is_its_own():
    from nextword.training.checkpoint import config_hash

    dense = RunConfig()
    dense.model.arch, dense.model.tie_embeddings, dense.model.embedding_norm = "gpt2", True, False
    # The hash the first default config had before sparse fields and the recipe options existed: old checkpoints
    # still resume. An option that changes the function changes it; one that only changes the start does not.
    assert config_hash(dense) == "9a4dc357562827d2"
    for field, value, changes in (("mlp_activation", "relu2", True), ("logit_softcap", 30.0, True),
                                  ("zero_init_projections", True, False)):
        option = copy.deepcopy(dense)
        setattr(option.model, field, value)
        assert (config_hash(option) != config_hash(dense)) == changes, field
    sparse = make_sparse(RunConfig())
    other = make_sparse(RunConfig())
    other.model.experts_per_token = 2
    assert config_hash(sparse) != config_hash(other)
    other.model.experts_per_token, other.model.balance_coef = 1, 0.0  # a training setting, free to change
    assert config_hash(sparse) == config_hash(other)


@pytest.mark.parametrize("shared", [1, 0])  # exported as Llama 4, and as Mixtral
def test_continued_pretraining_starts_from_an_exported_sparse_model(tiny, tmp_path, shared):  # noqa: F811
    pytest.importorskip("transformers")
    make_sparse(tiny).train.steps = 6
    tiny.model.shared_experts, tiny.model.experts_per_token = shared, 2 - shared
    first, start = continue_from_export(tiny, tmp_path)
    assert start["step"] == 0 and start["val_loss"] == pytest.approx(first["val_loss"], abs=1e-4)
