"""The optimizer a run trains with: AdamW (`train.optimizer = "adamw"`), or Muon for the blocks' hidden matrices
with AdamW for everything else (`"muon"`).

Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/) keeps SGD momentum for each weight matrix
and replaces the update by its nearest semi-orthogonal matrix (about U·Vᵀ of the momentum's SVD U·S·Vᵀ, by five
Newton–Schulz iterations), so every direction of the matrix moves by the same amount however small its gradient.
It is meant for the hidden matrices only: embeddings, the output head, norms and biases keep AdamW. torch's own
Muon (torch.optim.Muon) gives the hyperparameters and the scaling by shape; its step is written out here
(Muon.step) so that a matrix sharded by FSDP is orthogonalised whole, and its Newton–Schulz iterations
(`orthogonalise`) so that they run in the run's own precision: torch's run in bf16 always, which on a CPU without
native bf16 (AVX2 only) takes 20–60 times as long as fp32 (benchmarks/RESULTS.md, "Muon's Newton–Schulz").

Both kinds of parameter sit in one optimizer object (MuonAdamW): one step, one zero_grad, one state_dict that the
checkpoints store as they store AdamW's. Every parameter group carries `lr_scale`, its peak rate over train.lr, so
the learning-rate schedule drives both rates with one number (training/step.py).

An update with a non-finite gradient is skipped on the device (step_unless): every optimizer built here reads a
`found_inf` flag, the tensor torch's fused AdamW kernel takes from GradScaler, and leaves the weights and its state
as they were where the flag is 1, so the host never waits to read the flag back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nextword.config import TrainConfig
from nextword.errors import ConfigError
from nextword.model import GPT

try:  # torch 2.9 and later
    from torch.optim._muon import _adjust_lr
    TorchMuon = torch.optim.Muon
except (ImportError, AttributeError):
    TorchMuon = None


def build_optimizer(model: GPT, t: TrainConfig, precision: str = "bf16") -> torch.optim.Optimizer:
    """The run's optimizer over `model`'s parameters (after FSDP has sharded them, when it does). `precision` is
    the one the run computes in: Muon orthogonalises in bf16 where the run trains in bf16, in fp32 otherwise."""
    groups = model.optimizer_groups(t.weight_decay, t.decay_embeddings)
    if t.optimizer == "adamw":
        return adamw(groups, t)
    hidden = {id(p) for p in model.hidden_matrices()}
    rest = [{**group, "params": [p for p in group["params"] if id(p) not in hidden]} for group in groups]
    orthogonal_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return MuonAdamW(muon(model.hidden_matrices(), t, orthogonal_dtype), adamw([g for g in rest if g["params"]], t))


def adamw(groups: list[dict], t: TrainConfig) -> torch.optim.AdamW:
    kwargs = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    groups = [{**group, "lr_scale": 1.0} for group in groups]
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)  # one kernel for all parameters
    except (RuntimeError, TypeError):
        return ForeachAdamW(groups, **kwargs)


def step_unless(optimizer: torch.optim.Optimizer, skip: Tensor) -> None:
    """optimizer.step(), except where `skip` (a flag on the device) is 1: then the weights and every state tensor,
    step counts included, stay as they were. The choice is made on the device, so the host does not wait for it."""
    if not (isinstance(optimizer, (Muon, MuonAdamW, ForeachAdamW)) or optimizer.defaults.get("fused")):
        raise TypeError(f"{type(optimizer).__name__} cannot skip an update on the device; build it with "
                        "build_optimizer")
    optimizer.found_inf = skip
    try:
        optimizer.step()
    finally:
        optimizer.__dict__.pop("found_inf", None)


def _skip_flag(optimizer: torch.optim.Optimizer) -> Tensor | None:
    """The flag a caller set to skip this step (1.0: skip), under the name torch's fused kernels read it by."""
    return optimizer.__dict__.get("found_inf")


def _unless(skip: Tensor | None, before: Tensor, after: Tensor) -> Tensor:
    """`after`, or `before` where the step is skipped, chosen on the device (a NaN in `after` is not kept)."""
    return after if skip is None else torch.where(skip != 0, before, after)


class ForeachAdamW(torch.optim.AdamW):
    """torch's AdamW without its fused kernel (where that is unavailable), skipping an update when `found_inf` is 1
    as the fused kernel does.

    torch's other AdamW kernels refuse the flag, so here the update is taken and then undone on the device: the
    weights and moments are copied before it, which costs their memory once more while the step runs (on this
    fallback only). On a GPU the step count lives on the GPU (capturable), so restoring it needs no copy to the host.
    """

    def __init__(self, groups: list[dict], **kwargs: Any) -> None:
        on_gpu = any(p.is_cuda for group in groups for p in group["params"])
        super().__init__(groups, foreach=True, capturable=on_gpu, **kwargs)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = _loss_of(closure)
        skip = self.__dict__.pop("found_inf", None)  # torch's own step refuses it
        stepping = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        before = [(p.clone(), {name: value.clone() for name, value in self.state[p].items()})
                  for p in stepping] if skip is not None else []
        super().step()
        for p, (weight, state) in zip(stepping, before):
            p.copy_(_unless(skip, weight, p))
            for name, value in self.state[p].items():
                # Every AdamW state tensor starts at zero: one made by a skipped first step goes back to zero.
                value.copy_(_unless(skip, state.get(name, torch.zeros_like(value)), value))
        return loss


def muon(matrices: list[torch.nn.Parameter], t: TrainConfig,
         orthogonal_dtype: torch.dtype = torch.bfloat16) -> "Muon":
    """Muon over the hidden matrices at train.muon_lr, with torch's defaults otherwise: Nesterov momentum 0.95 and
    the update scaled by √max(1, rows/columns), as in Keller Jordan's Muon (github.com/KellerJordan/Muon, whose
    README pairs lr 0.02 with momentum 0.95 for the hidden weights and AdamW for the rest).

    Decoupled weight decay shrinks a weight by lr·weight_decay per step. Muon's rate is several times AdamW's, so
    its decay is train.weight_decay · train.lr / train.muon_lr: each matrix shrinks per step as it would under
    AdamW (0.015 at the defaults, near the 0.01 of Keller Jordan's MuonWithAuxAdam)."""
    if TorchMuon is None:
        raise ConfigError(f"train.optimizer = muon needs torch.optim.Muon (torch 2.9 or later; this is torch "
                          f"{torch.__version__}); upgrade torch or set train.optimizer = adamw")
    return Muon([{"params": matrices, "lr_scale": t.muon_lr / t.lr}], lr=t.muon_lr,
                weight_decay=t.weight_decay * t.lr / t.muon_lr, momentum=t.muon_momentum,
                orthogonal_dtype=orthogonal_dtype)


class Muon(TorchMuon or torch.optim.Optimizer):
    """torch.optim.Muon, taking the whole matrix's update under FSDP.

    FSDP2 holds each weight as a DTensor of which this rank keeps a slice of rows. Momentum is kept per element and
    stays sharded, but Newton–Schulz needs the whole matrix: the update is gathered (`full_tensor`), orthogonalised
    by torch's own routine (every rank computes the same result), and each rank applies its slice. Letting DTensor
    run Newton–Schulz on the shards instead would be exact in principle, but it sums bf16 partial products across
    ranks at every iteration and drifted by 3% of the update from the single-process result (CPU, 2 ranks).
    """

    def __init__(self, params: Any, orthogonal_dtype: torch.dtype = torch.bfloat16, **kwargs: Any):
        """orthogonal_dtype: the precision Newton–Schulz runs in; kwargs are torch.optim.Muon's."""
        super().__init__(params, **kwargs)
        self.orthogonal_dtype = orthogonal_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = _loss_of(closure)
        skip = _skip_flag(self)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group, skip)
        return loss

    def _update(self, p: Tensor, group: dict[str, Any], skip: Tensor | None) -> None:
        """torch's _single_tensor_muon for one matrix, with the orthogonalisation on the whole matrix; where `skip`
        is 1, the matrix and its momentum keep their values."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buffer, momentum = state["momentum_buffer"], group["momentum"]
        moved = buffer.lerp(p.grad, 1 - momentum)
        update = p.grad.lerp(moved, momentum) if group["nesterov"] else moved
        update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                               self.orthogonal_dtype)
        stepped = torch.add(p * (1 - group["lr"] * group["weight_decay"]), update, alpha=-adjusted_lr(group, p.shape))
        buffer.copy_(_unless(skip, buffer, moved))
        p.copy_(_unless(skip, p, stepped))


def orthogonalise(update: Tensor, coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                  steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Newton–Schulz orthogonalisation of a matrix in `dtype`, whole even when it is a sharded DTensor: the result
    has the input's layout."""
    if not hasattr(update, "full_tensor"):
        return newton_schulz(update, coefficients, steps, eps, dtype)
    from torch.distributed.tensor import distribute_tensor

    whole = newton_schulz(update.full_tensor(), coefficients, steps, eps, dtype)
    # Every rank holds the same whole result; src_data_rank=None keeps its own slice without communicating.
    return distribute_tensor(whole, update.device_mesh, update.placements, src_data_rank=None)


def newton_schulz(matrix: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> Tensor:
    """torch.optim.Muon's quintic iteration (Keller Jordan's coefficients), the same operations in the same order,
    in `dtype` instead of always bf16: X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ, from X = G/‖G‖, taken on the wide
    side."""
    a, b, c = coefficients
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.to(dtype)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def adjusted_lr(group: dict[str, Any], shape: torch.Size) -> float:
    """The group's rate scaled for a matrix's shape, as torch's Muon does it."""
    return _adjust_lr(group["lr"], group["adjust_lr_fn"], shape)


class MuonAdamW(torch.optim.Optimizer):
    """Muon for some parameters and AdamW for the others, as one optimizer: its param_groups are Muon's followed by
    AdamW's, and both share its `state`, so step, zero_grad, state_dict and load_state_dict (and the sharded
    checkpoints built on them) see one ordinary optimizer."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, defaults={})
        self._share_state()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = _loss_of(closure)
        skip = _skip_flag(self)
        for part in (self.muon, self.adamw):
            if skip is None:
                part.step()
            else:
                step_unless(part, skip)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Moments and hyperparameters from a checkpoint, except each group's `lr_scale`, which follows this run's
        train.lr and train.muon_lr (as the rate itself does)."""
        scales = [group["lr_scale"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, scale in zip(self.param_groups, scales):
            group["lr_scale"] = scale

    def __setstate__(self, state: dict[str, Any]) -> None:
        # load_state_dict (and copy, pickle) replace the groups and the state: hand the new ones to both parts.
        super().__setstate__(state)
        if "muon" in self.__dict__:
            self._share_state()

    def _share_state(self) -> None:
        count = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:count], self.param_groups[count:]
        self.muon.state = self.adamw.state = self.state


def _loss_of(closure: Any) -> Any:
    """What torch's optimizers do with a step's closure: call it, with gradients on, for the loss it returns."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
