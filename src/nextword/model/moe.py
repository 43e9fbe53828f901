"""A mixture-of-experts feed-forward block for the llama family: a router sends each token to `experts_per_token`
of `n_experts` SwiGLU experts, and `shared_experts` more see every token. No token is ever dropped: every expert
takes however many tokens were routed to it.

Routing follows the transformers architecture the model exports to, so the exported model computes the same:

    no shared expert   softmax over the experts, top-k, the k weights renormalised to sum to 1, each expert's
                       output scaled by its weight (Mixtral; Qwen3-MoE with norm_topk_prob)
    shared experts     top-k of the router's logits, sigmoid of each, each expert's *input* scaled by its weight,
                       plus the shared experts on the unscaled input (Llama 4)

Balance: a Switch-Transformer auxiliary loss, E · Σ_e f_e · P_e (f_e the share of routed slots expert e got,
P_e its mean softmax probability), 1.0 when perfectly balanced, added to the training loss times
`model.balance_coef`. DeepSeek-V3's auxiliary-loss-free bias was not chosen: it changes which experts are picked
through a per-expert bias that is not a weight of any router in transformers' Llama 4, Mixtral or Qwen3-MoE, so an
exported model would route differently from the one trained.

State-dict keys of a sparse block (in place of the dense mlp.gate/up/down):

    blocks.{i}.mlp.router.weight            [experts, d]
    blocks.{i}.mlp.gate_up                  [experts, d, 2·f]   gate then up, as x @ W (Llama 4's layout)
    blocks.{i}.mlp.down                     [experts, f, d]
    blocks.{i}.mlp.shared.gate.weight       [shared·f, d]       shared experts, as one SwiGLU of their total width
    blocks.{i}.mlp.shared.up.weight         [shared·f, d]
    blocks.{i}.mlp.shared.down.weight       [d, shared·f]

The routed experts run as one grouped matmul (torch.nn.functional.grouped_mm: every expert's rows in one call,
no host sync, one compiled graph) wherever the kernel runs and the shapes are aligned, or else as a loop of one
matmul per expert. `MoE.expert_path` forces either; "auto" takes the grouped matmul on CUDA and, on CPU, the path
benchmarks/moe.py measured faster (figures in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextword.config import ModelConfig
from nextword.errors import ConfigError

EXPERT_PATHS = ("auto", "grouped", "loop")
# Devices on which "auto" takes the grouped matmul when it can. On CPU the grouped matmul is torch's loop over
# experts in C++, backward included: benchmarks/moe.py --paths measured it against the Python loop.
GROUPED_BY_DEFAULT = ("cuda", "cpu")


class SharedExperts(nn.Module):
    """down(silu(gate(x)) · up(x)): shared experts summed are one SwiGLU of their widths added up."""

    def __init__(self, d_model: int, width: int):
        super().__init__()
        self.gate = nn.Linear(d_model, width, bias=False)
        self.up = nn.Linear(d_model, width, bias=False)
        self.down = nn.Linear(width, d_model, bias=False)
        self.down.is_residual_output = True

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, f, n = cfg.d_model, cfg.expert_dim, cfg.n_experts
        self.d_model, self.n_experts, self.top_k, self.expert_dim = d, n, cfg.experts_per_token, f
        self.scale_inputs = cfg.shared_experts > 0  # Llama 4's routing (see the module's docstring)
        self.router = nn.Linear(d, n, bias=False)
        self.gate_up = nn.Parameter(torch.empty(n, d, 2 * f))
        self.down = nn.Parameter(torch.empty(n, f, d))
        nn.init.normal_(self.gate_up, std=cfg.init_std)
        nn.init.normal_(self.down, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))  # as every residual output
        self.shared = SharedExperts(d, cfg.shared_experts * f) if cfg.shared_experts else None
        self.expert_path = "auto"  # or "grouped" or "loop" to force one (see the module's docstring)
        # What the last forward did, for the training loss, the log and `nextword trace`.
        self.balance_loss: Tensor | None = None
        self.routing: tuple[Tensor, Tensor] | None = None  # chosen experts and their weights, [B, T, k] each
        # Slots routed to each expert and the balance loss, summed since the log last read them.
        self.register_buffer("load", torch.zeros(n), persistent=False)
        self.register_buffer("balance_sum", torch.zeros(()), persistent=False)
        self.register_buffer("forwards", torch.zeros(()), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        flat = x.reshape(-1, d)
        logits = self.router(flat).float()
        experts, weights = self.route(logits)
        counts = expert_counts(experts, self.n_experts)
        if self.training:
            self.balance_loss = balance_loss(logits, counts, self.top_k)
            with torch.no_grad():
                self.load += counts
                self.balance_sum += self.balance_loss.detach()
                self.forwards += 1
        self.routing = (experts.detach().view(B, T, -1), weights.detach().view(B, T, -1))
        out = self.run_experts(flat, experts, weights.to(x.dtype), counts)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(B, T, d)

    def route(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Each token's chosen experts and their weights, [N, k] each, from the router's fp32 logits [N, E]."""
        if self.scale_inputs:
            top, experts = torch.topk(logits, self.top_k, dim=-1)
            return experts, torch.sigmoid(top)
        top, experts = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        return experts, top / top.sum(dim=-1, keepdim=True)

    def run_experts(self, x: Tensor, experts: Tensor, weights: Tensor, counts: Tensor) -> Tensor:
        """Σ over each token's chosen experts of weight · expert(x) (or expert(weight · x)): the token slots sorted
        by expert, each expert run on its contiguous run of rows, the results added back to their tokens."""
        order = experts.flatten().argsort(stable=True)
        token = order // self.top_k
        slot_weight = weights.flatten()[order, None]
        rows = x[token]
        if self.scale_inputs:
            rows = rows * slot_weight
        dtype = matmul_dtype(rows)
        if self.takes_grouped_path(rows.device, dtype):
            out = self.experts_grouped(rows.to(dtype), counts)
        else:
            out = self.experts_looped(rows, counts)
        if not self.scale_inputs:
            out = out * slot_weight
        return torch.zeros_like(x).index_add_(0, token, out.to(x.dtype))

    def takes_grouped_path(self, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether the experts run as one grouped matmul, by `expert_path` and what this device can do."""
        if self.expert_path not in EXPERT_PATHS:
            raise ConfigError(f"MoE.expert_path = {self.expert_path!r}; use one of {', '.join(EXPERT_PATHS)}")
        if self.expert_path == "loop":
            return False
        fits = grouped_mm_fits(device, dtype, self.d_model, self.expert_dim)
        if self.expert_path == "grouped" and not fits:
            runs = "runs" if grouped_mm_runs(device, dtype) else "does not run"
            raise ConfigError(
                f"MoE.expert_path = 'grouped', but torch {torch.__version__}'s grouped matmul {runs} on "
                f"{device.type} in {dtype}, and it needs d_model ({self.d_model}) and d_expert ({self.expert_dim}) "
                f"to be multiples of {16 // dtype.itemsize} there; set it to 'auto' or 'loop'")
        return fits and (self.expert_path == "grouped" or device.type in GROUPED_BY_DEFAULT)

    def experts_grouped(self, rows: Tensor, counts: Tensor) -> Tensor:
        """Every expert on its rows in two grouped matmuls; the offsets are where each expert's rows end, so an
        expert with no rows is an empty group."""
        ends = counts.cumsum(0).to(torch.int32)
        gate, up = F.grouped_mm(rows, self.gate_up.to(rows.dtype), offs=ends).chunk(2, dim=-1)
        return F.grouped_mm(F.silu(gate) * up, self.down.to(rows.dtype), offs=ends)

    def experts_looped(self, rows: Tensor, counts: Tensor) -> Tensor:
        """Every expert on its rows, one matmul pair at a time. Splitting by the counts reads them on the host:
        a sync on a GPU, and a graph break under torch.compile."""
        parts = []
        for e, part in enumerate(rows.split(counts.tolist())):
            gate, up = (part @ self.gate_up[e].to(part.dtype)).chunk(2, dim=-1)
            parts.append((F.silu(gate) * up) @ self.down[e].to(part.dtype))
        return torch.cat(parts)

    def routed_params_per_token(self) -> int:
        """Routed-expert weights one token multiplies by: k experts' worth (the router and shared experts are
        linear layers, counted as such)."""
        return self.top_k * (self.gate_up[0].numel() + self.down[0].numel())

    def take_stats(self) -> tuple[Tensor, Tensor, Tensor]:
        """The routed slots per expert, the summed balance loss and the forwards since the last call; resets them."""
        stats = self.load.clone(), self.balance_sum.clone(), self.forwards.clone()
        for buffer in (self.load, self.balance_sum, self.forwards):
            buffer.zero_()
        return stats


def expert_counts(experts: Tensor, n_experts: int) -> Tensor:
    """Slots routed to each expert, [n_experts]. A scatter, not torch.bincount, whose output length depends on
    the data and so breaks a compiled graph."""
    flat = experts.flatten()
    return torch.zeros(n_experts, dtype=flat.dtype, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))


def matmul_dtype(rows: Tensor) -> torch.dtype:
    """The dtype the experts' matmuls run in: autocast's where it is on (it does not cast a grouped matmul itself,
    so the grouped path casts to it), else the rows' own."""
    device = rows.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else rows.dtype


def grouped_mm_fits(device: torch.device, dtype: torch.dtype, d_model: int, expert_dim: int) -> bool:
    """Whether the experts' two grouped matmuls can run here, now.

    - Every operand's row stride a multiple of 16 bytes, as torch checks of each operand forward and backward
      ("strides should be multiple of 16 bytes", aten/src/ATen/native/GroupedMMUtils.h). The operands are rows
      [N, d] @ gate_up [E, d, 2f], then hidden [N, f] @ down [E, f, d], and their transposes backward; so d, f
      and 2f (which f covers) must each be a multiple of 8 elements in bf16, 4 in fp32.
    - The offsets are int32 ends of each group (F.grouped_mm's docstring); a group may be empty: only a
      2D × 2D product with K split by the offsets needs non-empty groups (aten/src/ATen/native/cuda/
      GroupMMCommon.cuh), and this block's weight gradient is the transposed-rows case that it exempts.
    - Under torch.compile, bf16 only: the shape function the compiler traces with accepts nothing else
      ("Expected inputs of BF16 type", torch/_meta_registrations.py, _meta_grouped_mm_common), though the
      eager CPU kernel takes fp32 too.
    - The kernel runs on this device in this dtype (`grouped_mm_runs`).
    """
    per_16_bytes = 16 // dtype.itemsize
    aligned = d_model % per_16_bytes == 0 and expert_dim % per_16_bytes == 0
    traceable = dtype == torch.bfloat16 or not torch.compiler.is_compiling()
    return aligned and traceable and grouped_mm_runs(device, dtype)


_grouped_mm_verdicts: dict[tuple[torch.device, torch.dtype], bool] = {}


# Evaluated once while torch.compile traces, its result a constant in the graph: the probe itself runs a backward.
@torch.compiler.assume_constant_result
def grouped_mm_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's grouped matmul runs, forward and backward, on `device` in `dtype`: a tiny real call, once
    per device and dtype. Its reach differs between torch versions and GPUs (its docstring asks for bf16 on CUDA
    with compute capability 8.0 or newer, yet torch 2.13 also runs it on CPU in bf16 and fp32), so it is tried
    rather than assumed."""
    key = (device, dtype)
    if key not in _grouped_mm_verdicts:
        _grouped_mm_verdicts[key] = _grouped_mm_answers(device, dtype)
    return _grouped_mm_verdicts[key]


def _grouped_mm_answers(device: torch.device, dtype: torch.dtype) -> bool:
    """Two groups, the first empty: 16 rows of ones times 8 × 8 ones, and the gradients back. Asked with
    gradients on and autocast off whatever the caller's mode (the first forward may be an evaluation), so the
    verdict is about `dtype` itself."""
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            rows = torch.ones(16, 8, device=device, dtype=dtype, requires_grad=True)
            weights = torch.ones(2, 8, 8, device=device, dtype=dtype, requires_grad=True)
            out = F.grouped_mm(rows, weights, offs=torch.tensor([0, 16], dtype=torch.int32, device=device))
            out.backward(torch.ones_like(out))
    except (AttributeError, RuntimeError, NotImplementedError):  # no grouped_mm in this torch, or not here
        return False
    return bool((out == 8).all() and (weights.grad[0] == 0).all() and (weights.grad[1] == 16).all()
                and (rows.grad == 8).all())


def balance_loss(logits: Tensor, counts: Tensor, top_k: int) -> Tensor:
    """Switch Transformer's load-balancing loss (Fedus et al. 2021, eq. 4) for top-k: E · Σ_e f_e · P_e."""
    n_experts = logits.shape[-1]
    share = counts.float() / counts.sum().clamp(min=1)
    mean_prob = torch.softmax(logits, dim=-1).mean(dim=0)
    return n_experts * (share * mean_prob).sum()


def idle_params(model: nn.Module) -> int:
    """Parameters a token does not use: the routed experts it is not sent to, in every sparse block. The active
    parameters are the model's total less these."""
    return sum((m.n_experts - m.top_k) * (m.gate_up[0].numel() + m.down[0].numel()) for m in moe_layers(model))


def moe_layers(model: nn.Module) -> list[MoE]:
    """The sparse blocks of a model (wrapped for DDP, sharded or compiled alike); [] for a dense one."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def total_balance_loss(layers: list[MoE], coef: float) -> Tensor | float:
    """coef × the mean balance loss of the last forward's sparse blocks: the term training adds to its loss."""
    losses = [m.balance_loss for m in layers if m.balance_loss is not None]
    if not losses or coef == 0:
        return 0.0
    return coef * torch.stack(losses).mean()
