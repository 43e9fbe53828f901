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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextword.config import ModelConfig


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
        self.n_experts, self.top_k, self.expert_dim = n, cfg.experts_per_token, f
        self.scale_inputs = cfg.shared_experts > 0  # Llama 4's routing (see the module's docstring)
        self.router = nn.Linear(d, n, bias=False)
        self.gate_up = nn.Parameter(torch.empty(n, d, 2 * f))
        self.down = nn.Parameter(torch.empty(n, f, d))
        nn.init.normal_(self.gate_up, std=cfg.init_std)
        nn.init.normal_(self.down, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))  # as every residual output
        self.shared = SharedExperts(d, cfg.shared_experts * f) if cfg.shared_experts else None
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
        counts = torch.bincount(experts.flatten(), minlength=self.n_experts)
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
        if grouped_mm_fits(rows, self.gate_up):
            # One kernel for all experts; offsets are where each expert's rows end.
            ends = counts.cumsum(0).to(torch.int32)
            gate, up = F.grouped_mm(rows, self.gate_up.to(rows.dtype), offs=ends).chunk(2, dim=-1)
            out = F.grouped_mm(F.silu(gate) * up, self.down.to(rows.dtype), offs=ends)
        else:
            parts = []
            for e, part in enumerate(rows.split(counts.tolist())):
                gate, up = (part @ self.gate_up[e].to(part.dtype)).chunk(2, dim=-1)
                parts.append((F.silu(gate) * up) @ self.down[e].to(part.dtype))
            out = torch.cat(parts)
        if not self.scale_inputs:
            out = out * slot_weight
        return torch.zeros_like(x).index_add_(0, token, out.to(x.dtype))

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


def grouped_mm_fits(rows: Tensor, weights: Tensor) -> bool:
    """torch's grouped matmul runs on CUDA in bf16, with every row 16-byte aligned; elsewhere a loop over experts."""
    return (rows.is_cuda and rows.dtype == torch.bfloat16 and hasattr(F, "grouped_mm")
            and rows.shape[-1] % 8 == 0 and weights.shape[-1] % 8 == 0)


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
