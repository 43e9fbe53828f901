"""The optimizer a run trains with."""

from __future__ import annotations

import torch

from nextword.config import TrainConfig
from nextword.model import GPT


def build_optimizer(model: GPT, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the model's two parameter groups (decayed matrices; undecayed norms, biases, embeddings)."""
    groups = model.optimizer_groups(t.weight_decay, t.decay_embeddings)
    kwargs = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)  # one kernel for all parameters
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)
