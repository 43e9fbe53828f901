import dataclasses
import json
import math

import pytest
import torch

from nextword import cli
from nextword.config import ModelConfig, RunConfig, load, model_preset
from nextword.errors import ConfigError, DataError
from nextword.model import GPT
from nextword.tools.plan import (
    GPUS, RUNS, Moe, chinchilla_loss, compute_time, count_flops, count_params, layer_activation_bytes,
    memory_plan, plan_run, render, shape_for_params,
)
from nextword.model.moe import idle_params


def tiny(arch: str, **overrides) -> ModelConfig:
    shape = dict(arch=arch, n_layers=2, d_model=32, n_heads=4, context=24, vocab_size=97, embedding_norm=False)
    return ModelConfig(**(shape | overrides))


TINY = {
    "gpt2": tiny("gpt2"),
    "gpt2-untied-wide": tiny("gpt2", tie_embeddings=False, d_ff=80),
    "llama": tiny("llama"),
    "llama-gqa-qknorm-untied": tiny("llama", n_kv_heads=2, qk_norm=True, tie_embeddings=False),
}


@pytest.mark.parametrize("name", TINY)
def test_analytic_counts_match_the_real_model(name):
    cfg = TINY[name]
    model = GPT(cfg)
    params = count_params(cfg)
    assert params.total == model.num_params()
    assert params.non_embedding == model.num_params(non_embedding=True)
    flops = count_flops(cfg, params, tokens=1)
    assert flops.per_token == model.flops_per_token()


def test_gpt2_124m_flops_by_hand():
    cfg = model_preset("gpt2-124m")
    params = count_params(cfg)
    # Per block: attention 4·768² + MLP 2·768·3072 weights; plus the 50257×768 output head (tied, still a matmul).
    assert params.matmul == 12 * (4 * 768**2 + 2 * 768 * 3072) + 50257 * 768 == 123_532_032
    assert params.total == 124_439_808  # GPT-2 small as Hugging Face counts it
    flops = count_flops(cfg, params, tokens=10e9)
    assert flops.dense_per_token == 6 * 123_532_032
    assert flops.attention_per_token == 12 * 12 * 1024 * 768 == 113_246_208
    assert flops.total == pytest.approx((741_192_192 + 113_246_208) * 10e9)


def test_llama_405b_shape_gives_the_published_size_and_compute():
    run = RUNS["llama3.1-405b"]
    cfg = ModelConfig(**run.model)
    params = count_params(cfg)
    assert 405e9 < params.total < 407e9
    # The Llama 3 paper quotes 3.8e25 FLOPs for 405B on 15.6T tokens (6·N·D, attention not counted).
    assert count_flops(cfg, params, run.tokens).six_n_d == pytest.approx(3.8e25, rel=0.01)


def test_moe_counts_total_and_active_like_llama4_scout():
    run = RUNS["llama4-scout"]
    params = count_params(ModelConfig(**run.model), run.moe)
    assert params.total == pytest.approx(109e9, rel=0.02)
    assert params.active == pytest.approx(17e9, rel=0.03)
    dense = count_params(ModelConfig(**run.model))
    # One expert's worth more than dense per layer is active (the shared expert), plus the router.
    assert params.active - dense.total == 48 * (3 * 5120 * 8192 + 5120 * 16)


@pytest.mark.parametrize("name", ["llama3.1-8b", "llama3.1-70b", "llama3.1-405b"])
def test_llama31_estimates_are_within_25_percent_of_published_hours(name):
    run = RUNS[name]
    plan = plan_run(ModelConfig(**run.model), run.tokens, gpu=run.gpu, gpus=run.gpus, mfu=run.mfu, run_name=name)
    published = plan.published
    assert 0.15 <= run.mfu <= 0.45  # plausible for BF16 training on H100s
    assert published.estimate_gpu_hours == pytest.approx(plan.compute.gpu_hours)
    assert abs(published.ratio - 1) < 0.25
    # The implied MFU reproduces the published hours exactly.
    again = compute_time(plan.flops.total, plan.flops.per_token, GPUS[run.gpu], run.gpus, published.implied_mfu, 0)
    assert again.gpu_hours == pytest.approx(run.gpu_hours, rel=1e-9)


def test_time_and_cost_arithmetic():
    plan = plan_run(tiny("gpt2"), tokens=1e9, gpu="a100", gpus=4, mfu=0.5, price=2.0)
    seconds_on_one = plan.flops.total / (312e12 * 0.5)
    assert plan.compute.gpu_hours == pytest.approx(seconds_on_one / 3600)
    assert plan.compute.days == pytest.approx(seconds_on_one / 4 / 86400)
    assert plan.compute.cost == pytest.approx(2.0 * seconds_on_one / 3600)


def test_chinchilla_view():
    assert chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.69 + 406.4 / 70e9**0.34 + 410.7 / 1.4e12**0.28)
    assert chinchilla_loss(70e9, 1.4e12) == pytest.approx(1.937, abs=0.002)
    plan = plan_run(tiny("gpt2"), tokens=5e6)
    ch = plan.chinchilla
    assert ch.optimal_tokens == pytest.approx(20 * ch.optimal_params)
    assert 6 * ch.optimal_params * ch.optimal_tokens == pytest.approx(ch.compute)
    # Off the optimum, the fit predicts a higher loss for the same compute.
    assert ch.loss > ch.optimal_loss


def test_activation_formula_reduces_to_korthikanti_for_gpt2_with_dropout():
    cfg = ModelConfig(arch="gpt2", n_layers=1, d_model=1024, n_heads=16, context=2048, dropout=0.1, vocab_size=100)
    s, b, h, a = 2048, 2, 1024, 16
    got = layer_activation_bytes(cfg, None, micro_batch=b, act_bytes=2, flash=False)
    assert got == s * b * h * (34 + 5 * a * s / h)


def test_activation_estimate_matches_saved_tensors_on_cpu():
    """The bytes autograd really keeps for backward, counted with saved-tensor hooks, against the estimate."""
    for arch in ("gpt2", "llama"):
        cfg = ModelConfig(arch=arch, n_layers=2, d_model=128, n_heads=4, context=128, vocab_size=256)
        model = GPT(cfg)
        storages = {}

        def keep(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x = torch.randint(0, 256, (2, 128))
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            model(x, x)
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved = sum(n for ptr, n in storages.items() if ptr not in weights)
        estimate = memory_plan(cfg, count_params(cfg), None, "fp32", 2, 1, 80, flash=True).rows[0].activations
        assert saved == pytest.approx(estimate, rel=0.15), arch


def test_state_memory_matches_a_real_adamw_step_on_cpu():
    cfg = tiny("llama", n_kv_heads=2, tie_embeddings=False)
    model = GPT(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, cfg.vocab_size, (2, cfg.context))
    model(x, x).backward()
    optimizer.step()
    row = memory_plan(cfg, count_params(cfg), None, "fp32", 2, 1, 80, flash=True).rows[0]
    assert row.weights == sum(p.numel() * p.element_size() for p in model.parameters())
    assert row.grads == sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    moments = sum(t.numel() * t.element_size() for state in optimizer.state.values()
                  for key, t in state.items() if key in ("exp_avg", "exp_avg_sq"))
    assert row.optimizer == moments


def test_fsdp_shards_states_and_finds_the_fewest_gpus():
    cfg = ModelConfig(**RUNS["llama3.1-70b"].model)
    params = count_params(cfg)
    mem = memory_plan(cfg, params, None, "bf16", micro_batch=1, gpus=64, gpu_memory_gib=80, flash=True)
    ddp, ddp_ckpt, fsdp, fsdp_ckpt = mem.rows
    assert ddp.weights == 2 * params.total and ddp.optimizer == 12 * params.total
    assert fsdp.weights == pytest.approx(ddp.weights / 64)
    assert not ddp.fits and ddp.min_gpus is None  # 70B × 16 bytes is far more than one GPU
    assert fsdp_ckpt.activations < fsdp.activations
    n = fsdp_ckpt.min_gpus
    usable = 0.9 * 80 * 2**30
    at = lambda g: memory_plan(cfg, params, None, "bf16", 1, g, 80, True).rows[3].total
    assert at(n) <= usable < at(n - 1)


def test_shape_for_params_lands_near_the_target():
    for target in (124e6, 1e9, 8e9):
        cfg = shape_for_params(target, "llama", 32000, 2048)
        assert count_params(cfg).total == pytest.approx(target, rel=0.1)


def write_run(run_dir, cfg: ModelConfig, tokens_per_s: list[float], mfu: float, flops_per_token: float):
    run_dir.mkdir()
    RunConfig(model=cfg).save(run_dir / "config.toml")
    lines = [{"kind": "run", "device": "cpu", "params": 1000, "flops_per_token": flops_per_token,
              "peak_flops": 2e11, "planned_steps": 10}]
    lines += [{"kind": "train", "step": 10 * (i + 1), "tokens": 4096 * (i + 1), "loss": 5.0, "lr": 1e-3,
               "grad_norm": 1.0, "tokens_per_s": tps, "mfu": mfu, "elapsed_s": i + 1.0}
              for i, tps in enumerate(tokens_per_s)]
    (run_dir / "log.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_from_run_uses_the_measured_speed(tmp_path, capsys):
    cfg = tiny("gpt2")
    fpt = GPT(cfg).flops_per_token()
    # The first interval (compilation) is slow and is left out: the median of the rest is 2000 tokens/s.
    write_run(tmp_path / "run", cfg, [100.0, 1900.0, 2000.0, 2100.0], mfu=0.3, flops_per_token=fpt)
    code = cli.main(["plan", "--from-run", str(tmp_path / "run"), "--tokens", "1M", "--gpu", "h100", "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    measured = plan["measured"]
    assert measured["tokens_per_s"] == 2000.0
    assert measured["here_seconds"] == pytest.approx(1e6 / 2000.0)  # same model: tokens / tokens-per-second
    assert measured["cluster"]["mfu"] == 0.3
    assert measured["cluster"]["gpu_hours"] == pytest.approx(plan["flops"]["total"] / (989.4e12 * 0.3) / 3600)


def test_from_run_reads_a_log_whose_last_line_is_cut_short(tmp_path, capsys):
    cfg = tiny("gpt2")
    write_run(tmp_path / "run", cfg, [100.0, 1900.0, 2000.0, 2100.0], mfu=0.3,
              flops_per_token=GPT(cfg).flops_per_token())
    with open(tmp_path / "run" / "log.jsonl", "a") as log:
        log.write('{"kind": "train", "step": 50, "tok')  # a run still writing, or killed mid-line
    assert cli.main(["plan", "--from-run", str(tmp_path / "run"), "--tokens", "1M", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["measured"]["tokens_per_s"] == 2000.0


def test_from_run_without_a_log_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="log.jsonl"):
        plan_run(tiny("gpt2"), 1e6, from_run=tmp_path)


def test_cli_renders_a_published_run(capsys):
    assert cli.main(["plan", "--run", "llama3.1-405b"]) == 0
    out = capsys.readouterr().out
    assert "30.8M GPU-hours" in out and "imply" in out and "FSDP + checkpointing" in out


def test_cli_builds_a_model_from_dimensions_and_overrides(capsys):
    args = ["plan", "--arch", "llama", "--layers", "4", "--d-model", "128", "--heads", "4", "--vocab", "1000",
            "--context", "64", "--tokens", "2M", "--model.tie_embeddings", "false", "--json"]
    assert cli.main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    cfg = tiny("llama", n_layers=4, d_model=128, n_heads=4, vocab_size=1000, context=64, tie_embeddings=False)
    assert plan["params"]["total"] == GPT(cfg).num_params()
    assert plan["tokens"] == 2e6


def test_cli_moe_and_bad_input(capsys):
    assert cli.main(["plan", "--preset", "small", "--vocab", "8192", "--experts", "8", "--active-experts", "2",
                     "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["params"]["active"] < plan["params"]["total"]
    assert cli.main(["plan", "--gpu", "tpu9"]) == 2
    assert "not in the table" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        plan_run(tiny("gpt2"), 1e6, moe=Moe(experts=4, active=5))



@pytest.mark.parametrize("tokens", ["inf", "1e400"])
def test_an_infinite_token_count_is_a_clear_error(capsys, tokens):
    assert cli.main(["plan", "--preset", "tiny", "--tokens", tokens]) == 2
    assert "is not a count" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--gpus", "0"), ("--mfu", "0"), ("--peak-flops", "0"),
                                         ("--memory-gb", "0"), ("--peak-flops", "-1e15"), ("--price", "-1")])
def test_a_zero_or_negative_hardware_flag_is_refused_not_replaced_by_the_default(capsys, flag, value):
    assert cli.main(["plan", "--preset", "tiny", f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert flag in err and len(err.strip().splitlines()) == 1



@pytest.mark.parametrize("flags, named", [(["--heads=0"], "model.n_heads"), (["--kv-heads=-2"], "model.n_kv_heads"),
                                          (["--d-ff=-1"], "model.d_ff"), (["--experts=0"], "--experts 0"),
                                          (["--experts=-2"], "--experts -2"),
                                          (["--experts=4", "--shared-experts=-1"], "--shared-experts -1")])
def test_an_impossible_model_shape_is_refused_before_any_arithmetic(capsys, flags, named):
    assert cli.main(["plan", "--preset", "tiny", *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--layers=3", "--d-model=512", "--heads=7", "--kv-heads=2", "--d-ff=1000"])
def test_params_with_a_dimension_is_refused_instead_of_ignoring_the_dimension(capsys, flag):
    assert cli.main(["plan", "--params", "7B", flag]) == 2
    err = capsys.readouterr().err
    assert flag.split("=")[0] in err and len(err.strip().splitlines()) == 1


def test_params_keeps_the_arch_vocab_and_context_it_is_given(capsys):
    assert cli.main(["plan", "--params", "1e8", "--arch", "llama", "--vocab", "1000", "--context", "512",
                     "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert (model["arch"], model["vocab_size"], model["context"]) == ("llama", 1000, 512)


@pytest.mark.cuda
def test_memory_model_against_the_cuda_allocator():
    """fp32 weights, AdamW and bf16 autocast, as nextword trains on a GPU ("amp")."""
    cfg = ModelConfig(arch="gpt2", n_layers=4, d_model=512, n_heads=8, context=1024, vocab_size=4096)
    device = torch.device("cuda")
    # cuBLAS takes its workspace from the caching allocator on first use: allocate it before the baseline.
    with torch.autocast("cuda", dtype=torch.bfloat16):
        torch.ones(64, 64, device=device) @ torch.ones(64, 64, device=device)
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, cfg.vocab_size, (4, cfg.context), device=device)
    row = memory_plan(cfg, count_params(cfg), None, "amp", 4, 1, 80, flash=True).rows[0]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, x)
        loss.backward()
        optimizer.step()

    step()  # creates the optimizer state
    torch.cuda.synchronize()
    states = torch.cuda.memory_allocated() - baseline - x.numel() * x.element_size()
    assert states == pytest.approx(row.weights + row.grads + row.optimizer, rel=0.02)

    optimizer.zero_grad(set_to_none=True)
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline - x.numel() * x.element_size()
    # Activations are an estimate (temporaries and allocator rounding come on top); the peak must land near it.
    assert peak == pytest.approx(row.total, rel=0.35)


def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    """`nextword plan --list | head -1`: the reader closes the pipe; no traceback, as with Unix tools."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "nextword", "plan", "--run", "llama3.1-405b"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdout.close()  # before the plan is printed, so its print meets a closed pipe
        err = process.stderr.read().decode()
    assert process.returncode == 141  # 128 + SIGPIPE, as a Unix tool killed by the closed pipe
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_the_llama4_scout_preset_plans_17b_active_of_109b_total(capsys):
    assert cli.main(["plan", "--preset", "llama4-scout", "--tokens", "40T", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    params, flops = plan["params"], plan["flops"]
    # Meta's model card: 17B active, 109B total (the total there includes the vision encoder, about 1B).
    assert params["total"] == pytest.approx(109e9, rel=0.02) and params["active"] == pytest.approx(17e9, rel=0.03)
    assert flops["dense_per_token"] == 6 * params["matmul"] and params["matmul"] < params["active"]
    ddp = plan["memory"]["rows"][0]
    assert ddp["weights"] == 2 * params["total"]  # memory from the total: bf16 weights of every expert
    assert plan["moe"] == {"experts": 16, "active": 1, "shared": 1, "width": 8192, "every": 1}


def test_a_users_sparse_config_plans_what_the_model_it_builds_has(tmp_path, capsys):
    config = tmp_path / "sparse.toml"
    config.write_text("[model]\narch = 'llama'\nn_layers = 4\nd_model = 64\nn_heads = 4\nn_kv_heads = 2\n"
                      "context = 32\nvocab_size = 512\nd_ff = 160\nn_experts = 6\nexperts_per_token = 2\n"
                      "shared_experts = 1\nmoe_every = 2\nd_expert = 48\ntie_embeddings = false\n")
    assert cli.main(["plan", "--config", str(config), "--tokens", "1M", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    model = GPT(load(config).model)
    assert plan["params"]["total"] == model.num_params()
    assert plan["params"]["active"] == model.num_params() - idle_params(model)
    assert plan["flops"]["per_token"] == model.flops_per_token()
    assert "MoE 6 experts (2 routed + 1 shared) of width 48 in 1 block of every 2" in render(
        plan_run(load(config).model, 1e6))


@pytest.mark.parametrize("cfg", [tiny("gpt2"), tiny("llama", n_kv_heads=2, qk_norm=True),
                                 tiny("llama", n_experts=4, experts_per_token=2, shared_experts=1, moe_every=2)],
                         ids=["gpt2", "llama", "llama-moe"])
def test_muon_state_is_counted_on_the_matrices_it_optimizes(cfg):
    params = count_params(cfg)
    assert params.muon_matrices == sum(p.numel() for p in GPT(cfg).hidden_matrices())
    adamw = memory_plan(cfg, params, None, "bf16", 1, 1, 80, True, "adamw").rows[0]
    muon = memory_plan(cfg, params, None, "bf16", 1, 1, 80, True, "muon").rows[0]
    assert adamw.optimizer - muon.optimizer == 4 * params.muon_matrices
    assert "Muon: one fp32 momentum" in render(plan_run(cfg, 1e6, optimizer="muon"))


OPTIONED = {
    "value-embeddings-3-layers": tiny("llama", n_layers=3, n_kv_heads=2, value_embeddings=True),
    "value-embeddings-scalars-gpt2": tiny("gpt2", value_embeddings=True, residual_scalars=True),
    "everything-untied-zero-head": tiny("llama", n_layers=4, n_kv_heads=1, value_embeddings=True,
                                        residual_scalars=True, tie_embeddings=False, zero_init_head=True,
                                        logit_softcap=15.0, embedding_norm=True, doc_masking=True),
    "scalars-only-1-layer": tiny("llama", n_layers=1, residual_scalars=True),
}


@pytest.mark.parametrize("name", OPTIONED)
def test_counts_follow_the_networks_options_exactly(name):
    cfg = OPTIONED[name]
    model = GPT(cfg)
    params = count_params(cfg)
    assert params.total == model.num_params()
    assert params.non_embedding == model.num_params(non_embedding=True)
    tables = [b.attn.value_embed.weight for b in model.blocks if b.attn.value_embed is not None]
    assert params.value_embeddings == sum(t.numel() for t in tables)
    assert len(tables) == math.ceil(cfg.n_layers / 2) * cfg.value_embeddings
    assert params.residual_scalars == (2 * cfg.n_layers if cfg.residual_scalars else 0)
    assert params.muon_matrices == sum(p.numel() for p in model.hidden_matrices())  # no table is Muon's
    # The tables and scalars are elementwise: the same FLOPs as the model without them.
    assert count_flops(cfg, params, tokens=1).per_token == model.flops_per_token()
    bare = dataclasses.replace(cfg, value_embeddings=False, residual_scalars=False)
    assert count_flops(bare, count_params(bare), tokens=1).per_token == model.flops_per_token()


def state_bytes(state) -> int:
    """The bytes of the tensors (more than a step count) in a state dict, however nested."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size() if state.numel() > 1 else 0
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_memory_and_checkpoint_follow_value_embeddings_and_scalars(optimizer):
    import io

    from nextword.config import TrainConfig
    from nextword.training.optimizer import build_optimizer

    cfg = OPTIONED["everything-untied-zero-head"]
    model = GPT(cfg)
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer))
    x = torch.randint(0, cfg.vocab_size, (2, cfg.context))
    model(x, x).backward()
    opt.step()
    params = count_params(cfg)
    mem = memory_plan(cfg, params, None, "fp32", 2, 1, 80, True, optimizer)
    row = mem.rows[0]
    assert row.weights == sum(p.numel() * p.element_size() for p in model.parameters())
    assert row.grads == sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    # AdamW's two moments for every table and scalar, even under Muon (which keeps one momentum per matrix).
    assert row.optimizer == state_bytes(opt.state_dict())
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, saved)
    assert mem.checkpoint == pytest.approx(len(saved.getvalue()), rel=0.1)


def test_document_masking_adds_its_mask_to_the_activations_and_a_note():
    cfg = tiny("llama", n_layers=2)
    masked = dataclasses.replace(cfg, doc_masking=True)
    plain_rows = memory_plan(cfg, count_params(cfg), None, "bf16", 4, 1, 80, True).rows
    masked_rows = memory_plan(masked, count_params(masked), None, "bf16", 4, 1, 80, True).rows
    for plain, with_mask in zip(plain_rows, masked_rows):
        assert with_mask.activations - plain.activations == 4 * cfg.context**2  # [4, 1, T, T] booleans
    text = render(plan_run(masked, 1e6, micro_batch=4))
    assert "flash kernel" in text and "[micro-batch, 1, T, T] boolean mask" in text
    assert "flash kernel" not in render(plan_run(cfg, 1e6))
    optioned = render(plan_run(OPTIONED["value-embeddings-scalars-gpt2"], 1e6))
    assert "no matmul FLOPs" in optioned and "of which value embeddings" in optioned
    assert "of which residual scalars" in optioned and "no matmul FLOPs" not in render(plan_run(cfg, 1e6))


def test_cli_plans_a_model_with_the_new_options(capsys):
    args = ["plan", "--arch", "llama", "--layers", "3", "--d-model", "64", "--heads", "4", "--kv-heads", "2",
            "--vocab", "500", "--context", "32", "--tokens", "1M", "--model.value_embeddings", "true",
            "--model.residual_scalars", "true", "--model.tie_embeddings", "false", "--json"]
    assert cli.main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    cfg = tiny("llama", n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=500, context=32,
               value_embeddings=True, residual_scalars=True, tie_embeddings=False)
    assert plan["params"]["total"] == GPT(cfg).num_params()
    assert plan["params"]["value_embeddings"] == 2 * 500 * 32
