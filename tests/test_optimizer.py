"""train.optimizer: AdamW, or Muon for the blocks' matrices with AdamW for the rest, as one optimizer object."""

import contextlib
import copy
import math

import pytest
import torch

from nextword.config import RunConfig
from nextword.errors import ConfigError
from nextword.model import GPT
from nextword.training import optimizer as optimizer_module
from nextword.training.optimizer import ForeachAdamW, MuonAdamW, build_optimizer, orthogonalise
from nextword.training.precision import autocast_for
from nextword.training.step import train_step


def tiny_run(**train) -> RunConfig:
    cfg = RunConfig()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context, cfg.model.vocab_size = 2, 32, 2, 16, 64
    # GPT-2's blocks (biases, learned positions: every kind of parameter the optimizers split), an untied head
    cfg.model.arch, cfg.model.tie_embeddings, cfg.model.zero_init_head = "gpt2", False, False
    for name, value in train.items():
        setattr(cfg.train, name, value)
    return cfg.validate()


def model_and_batch(cfg: RunConfig, seed: int = 0) -> tuple[GPT, torch.Tensor]:
    torch.manual_seed(seed)
    return GPT(cfg.model), torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(seed))


def steps(model: GPT, optimizer: torch.optim.Optimizer, batch: torch.Tensor, count: int, lr: float) -> list[float]:
    """`count` training-loop updates on one batch; their losses."""
    return [train_step(model, optimizer, lambda: (batch[:, :-1], batch[:, 1:]), 1, lr, 1.0,
                       contextlib.nullcontext(), torch.amp.GradScaler("cpu", enabled=False))[0].item()
            for _ in range(count)]


def test_muon_takes_the_blocks_matrices_and_adamw_everything_else_once():
    cfg = tiny_run(optimizer="muon")
    model, _ = model_and_batch(cfg)
    optimizer = build_optimizer(model, cfg.train)
    assert isinstance(optimizer, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in optimizer.adamw.param_groups for p in g["params"]}
    assert muon == {n for n in names.values() if n.startswith("blocks.") and n.endswith("weight")
                    and "norm" not in n}
    assert {"tok_emb.weight", "pos_emb.weight", "lm_head.weight", "norm.weight", "blocks.0.attn.q.bias"} <= adamw
    assert not muon & adamw and muon | adamw == set(names.values())
    # One list of groups, Muon's first: what checkpoints and the schedule see
    assert optimizer.param_groups == optimizer.muon.param_groups + optimizer.adamw.param_groups
    assert [g["lr_scale"] for g in optimizer.muon.param_groups] == [0.02 / 3e-3]
    assert all(g["lr_scale"] == 1.0 for g in optimizer.adamw.param_groups)
    # Muon's decay per step, lr · weight_decay, is AdamW's
    muon_group = optimizer.muon.param_groups[0]
    assert muon_group["lr"] * muon_group["weight_decay"] == pytest.approx(3e-3 * 0.1)


def test_the_schedule_drives_each_group_at_its_own_peak():
    cfg = tiny_run(optimizer="muon", lr=1e-3, muon_lr=0.05)
    model, batch = model_and_batch(cfg)
    optimizer = build_optimizer(model, cfg.train)
    steps(model, optimizer, batch, 1, lr=5e-4)  # halfway up the warmup, say
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.025)
    assert all(g["lr"] == pytest.approx(5e-4) for g in optimizer.adamw.param_groups)


def test_a_muon_step_is_torchs_muon_step():
    cfg = tiny_run(optimizer="muon")
    model, batch = model_and_batch(cfg)
    reference = copy.deepcopy(model)
    ours = build_optimizer(model, cfg.train)
    group = ours.muon.param_groups[0]
    torchs = torch.optim.Muon(reference.hidden_matrices(), lr=group["lr"], weight_decay=group["weight_decay"],
                              momentum=group["momentum"])
    for _ in range(3):
        for net in (model, reference):
            net(batch[:, :-1], batch[:, 1:]).backward()
        ours.muon.step()
        torchs.step()
        ours.zero_grad()
        reference.zero_grad()
    for a, b in zip(model.hidden_matrices(), reference.hidden_matrices()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class AdamWWithoutFusedKernel(torch.optim.AdamW):
    """torch's AdamW on a machine whose torch has no fused kernel for it."""

    def __init__(self, *args, fused=None, **kwargs):
        if fused:
            raise RuntimeError("no fused AdamW kernel for this device")
        super().__init__(*args, **kwargs)


READ_BACKS = ("item", "tolist", "__bool__", "__float__", "__int__")


def snapshot(model: GPT, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every weight and every optimizer state tensor (moments, momentum, step counts), copied."""
    state = [value for per_param in optimizer.state.values() for _, value in sorted(per_param.items())]
    return [t.detach().clone() for t in [*model.parameters(), *state]]


# fp16 is not among these: GradScaler reads its overflow flag back by design (see training/step.py).
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_an_inf_gradient_changes_no_weight_or_state_and_is_never_read_back(kind, fused, monkeypatch):
    if not fused:
        monkeypatch.setattr(torch.optim, "AdamW", AdamWWithoutFusedKernel)
    cfg = tiny_run(optimizer=kind)
    model, batch = model_and_batch(cfg)
    optimizer = build_optimizer(model, cfg.train)
    assert isinstance(optimizer.adamw if kind == "muon" else optimizer, ForeachAdamW) != fused
    steps(model, optimizer, batch, 2, lr=3e-3)  # moments, momentum and step counts that must stay as they are
    before = snapshot(model, optimizer)

    weight = model.blocks[0].mlp.fc.weight
    poisoned = weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    reads = []
    with monkeypatch.context() as patch:
        for name in READ_BACKS:
            original = getattr(torch.Tensor, name)
            patch.setattr(torch.Tensor, name,
                          lambda tensor, *a, _name=name, _original=original: reads.append((_name, tensor))
                          or _original(tensor, *a))
        skipped = train_step(model, optimizer, lambda: (batch[:, :-1], batch[:, 1:]), 1, 3e-3, 1.0,
                             contextlib.nullcontext(), torch.amp.GradScaler("cpu", enabled=False))[2]
    poisoned.remove()
    # On a CPU, torch's unfused AdamW keeps its step count on the host and reads it there; on a GPU that count is
    # on the device (ForeachAdamW is capturable there) and is not read back.
    counts = [state["step"] for state in optimizer.state.values() if "step" in state] if not fused else []
    assert [name for name, tensor in reads if not any(tensor is count for count in counts)] == []
    assert float(skipped) == 1.0
    after = snapshot(model, optimizer)
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))

    kept = weight.detach().clone()
    steps(model, optimizer, batch, 1, lr=3e-3)  # a finite step moves the weights again
    assert not torch.equal(weight, kept) and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_a_gpu_step_with_an_inf_gradient_never_waits_for_the_device(kind):
    cfg = tiny_run(optimizer=kind)
    model, batch = model_and_batch(cfg)
    model, batch = model.cuda(), batch.cuda()
    optimizer = build_optimizer(model, cfg.train)
    model.blocks[0].mlp.fc.weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        for _ in range(2):  # the first step makes the optimizer's state
            skipped = train_step(model, optimizer, lambda: (batch[:, :-1], batch[:, 1:]), 1, 3e-3, 1.0,
                                 torch.autocast("cuda", dtype=torch.bfloat16),
                                 torch.amp.GradScaler("cuda", enabled=False))[2]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(skipped) == 1.0


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_a_skipped_first_update_leaves_the_optimizer_as_new(kind, fused, monkeypatch):
    """State made by a skipped first step is what a fresh optimizer would make: the next update is the first."""
    if not fused:
        monkeypatch.setattr(torch.optim, "AdamW", AdamWWithoutFusedKernel)
    cfg = tiny_run(optimizer=kind)
    model, batch = model_and_batch(cfg)
    fresh = copy.deepcopy(model)
    optimizer, fresh_optimizer = build_optimizer(model, cfg.train), build_optimizer(fresh, cfg.train)
    poisoned = model.lm_head.weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    steps(model, optimizer, batch, 1, lr=3e-3)
    poisoned.remove()
    assert steps(model, optimizer, batch, 2, lr=3e-3) == steps(fresh, fresh_optimizer, batch, 2, lr=3e-3)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model, optimizer), snapshot(fresh, fresh_optimizer)))


@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_fp16_on_a_cpu_scales_the_loss_up_and_backs_off_at_an_overflow(kind):
    """The fp16 path a GPU without native bf16 takes, run on a CPU: autocast in fp16 and a GradScaler."""
    cfg = tiny_run(optimizer=kind)
    model, batch = model_and_batch(cfg)
    optimizer = build_optimizer(model, cfg.train)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)  # doubles every 2 good steps

    def step() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return train_step(model, optimizer, lambda: (batch[:, :-1], batch[:, 1:]), 1, 3e-3, 1.0,
                          autocast_for(torch.device("cpu"), "fp16"), scaler)

    losses = [float(step()[0]) for _ in range(4)]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert scaler.get_scale() == 2.0**12

    before, weight = snapshot(model, optimizer), model.blocks[0].mlp.fc.weight
    kept = weight.detach().clone()
    overflow = weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    step()
    overflow.remove()
    assert scaler.get_scale() == 2.0**11  # backed off
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model, optimizer), before))  # and the update skipped
    assert math.isfinite(float(step()[0])) and not torch.equal(weight, kept)


def test_the_orthogonalised_update_has_singular_values_near_one():
    gradient = torch.randn(48, 16, generator=torch.Generator().manual_seed(0)) @ torch.diag(torch.logspace(-2, 0, 16))  # singular values over 2 decades
    update = orthogonalise(gradient).float()
    values = torch.linalg.svdvals(update)
    assert torch.linalg.svdvals(gradient).max() / torch.linalg.svdvals(gradient).min() > 20
    assert values.min() > 0.5 and values.max() < 1.3  # Newton–Schulz's quintic: about 0.7 to 1.2


def test_muon_and_adamw_state_round_trips_through_a_state_dict_and_resumes_exactly():
    cfg = tiny_run(optimizer="muon")
    model, batch = model_and_batch(cfg)
    optimizer = build_optimizer(model, cfg.train)
    steps(model, optimizer, batch, 2, lr=3e-3)
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    kinds = [sorted(s) for s in saved_state["state"].values()]
    assert ["momentum_buffer"] in kinds and ["exp_avg", "exp_avg_sq", "step"] in kinds
    uninterrupted = steps(model, optimizer, batch, 3, lr=3e-3)

    resumed_model, _ = model_and_batch(cfg, seed=1)
    resumed_model.load_state_dict(saved_model)
    resumed = build_optimizer(resumed_model, cfg.train)
    resumed.load_state_dict(saved_state)
    assert resumed.muon.state is resumed.state and resumed.adamw.param_groups[0] is resumed.param_groups[1]
    assert steps(resumed_model, resumed, batch, 3, lr=3e-3) == uninterrupted


def test_a_resumed_run_takes_its_own_muon_lr_not_the_checkpoints():
    cfg = tiny_run(optimizer="muon")
    model, batch = model_and_batch(cfg)
    optimizer = build_optimizer(model, cfg.train)
    steps(model, optimizer, batch, 1, lr=3e-3)
    changed = build_optimizer(model, tiny_run(optimizer="muon", muon_lr=0.04).train)
    changed.load_state_dict(optimizer.state_dict())
    assert changed.muon.param_groups[0]["lr_scale"] == pytest.approx(0.04 / 3e-3)


def test_muon_is_the_default_and_adamw_a_choice():
    cfg = tiny_run()
    model, _ = model_and_batch(cfg)
    assert cfg.train.optimizer == "muon" and isinstance(build_optimizer(model, cfg.train), MuonAdamW)
    cfg = tiny_run(optimizer="adamw")
    assert isinstance(build_optimizer(model, cfg.train), torch.optim.AdamW)


def test_a_torch_without_muon_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setattr(optimizer_module, "TorchMuon", None)
    cfg = tiny_run(optimizer="muon")
    model, _ = model_and_batch(cfg)
    with pytest.raises(ConfigError, match="train.optimizer = muon needs torch.optim.Muon .* set train.optimizer = "
                                          "adamw"):
        build_optimizer(model, cfg.train)


@pytest.mark.parametrize("section, field, value, message", [
    ("train", "optimizer", "sgd", "train.optimizer = 'sgd' is not one of: adamw, muon"),
    ("train", "muon_lr", 0.0, "train.muon_lr = 0.0 must be above 0"),
    ("train", "muon_momentum", 1.0, "train.muon_momentum = 1.0 in"),
    ("model", "mlp_activation", "tanh", "model.mlp_activation = 'tanh' is not one of: gelu, relu2, swiglu"),
    ("model", "mlp_activation", "swiglu", "swiglu is the llama family's gated MLP"),
    ("model", "logit_softcap", -1.0, "model.logit_softcap = -1.0 must be 0"),
])
def test_the_recipe_options_refuse_values_that_cannot_work(section, field, value, message):
    cfg = RunConfig()
    cfg.model.arch = "gpt2"
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_a_run_saved_before_the_optimizer_field_resumes_with_adamw(tmp_path):
    """A run directory's config.toml from before train.optimizer existed (and Muon became the default) was trained
    with AdamW; resuming it must ask for AdamW, or its checkpoint would be refused."""
    from nextword.config import RunConfig, load_saved_run

    saved = tmp_path / "config.toml"
    RunConfig().save(saved)
    assert load_saved_run(saved).train.optimizer == "muon" == RunConfig().train.optimizer
    saved.write_text("\n".join(line for line in saved.read_text().splitlines()
                               if not line.startswith("optimizer")))
    assert load_saved_run(saved).train.optimizer == "adamw"


def test_a_run_in_fp32_orthogonalises_in_fp32_and_one_in_bf16_as_torch_does():
    """Newton–Schulz in bf16 is 20–60 times slower than fp32 on a CPU without native bf16: a run that trains in fp32
    orthogonalises in fp32, and one in bf16 as torch's Muon does, to the bit."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    gradient = torch.randn(48, 16, generator=torch.Generator().manual_seed(1))
    coefficients = (3.4445, -4.775, 2.0315)
    in_bf16 = orthogonalise(gradient, coefficients, 5, 1e-7, torch.bfloat16)
    assert in_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(in_bf16, _zeropower_via_newtonschulz(gradient, coefficients, 5, 1e-7), rtol=0, atol=0)
    in_fp32 = orthogonalise(gradient, coefficients, 5, 1e-7, torch.float32)
    assert in_fp32.dtype == torch.float32
    assert (in_fp32 - in_bf16.float()).abs().max() < 0.05  # the same update, without bf16's rounding
    cfg = tiny_run(optimizer="muon")
    model, _ = model_and_batch(cfg)
    assert build_optimizer(model, cfg.train, "fp32").muon.orthogonal_dtype == torch.float32
    assert build_optimizer(model, cfg.train, "bf16").muon.orthogonal_dtype == torch.bfloat16
    assert build_optimizer(model, cfg.train, "fp16").muon.orthogonal_dtype == torch.float32
