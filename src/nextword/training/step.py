"""One optimizer update: forward, −log p of the tokens that came next, backward, clip, update.

This is the code a learner reads first. Everything around it (when to evaluate, save, stop; the learning rate's
schedule; how ranks share the work) lives in the training loop and its components.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from nextword.model.moe import moe_layers, total_balance_loss
from nextword.training import distributed
from nextword.training.optimizer import step_unless


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, next_batch: Callable[[], tuple],
               accumulation: int, lr: float, grad_clip: float, autocast: contextlib.AbstractContextManager,
               scaler: torch.amp.GradScaler, balance_coef: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer update over `accumulation` micro-batches: (mean loss, gradient norm, 1.0 if skipped).

    `lr` is the schedule's rate for train.lr; a parameter group with its own peak rate (Muon's) takes it scaled by
    the group's `lr_scale`, so the schedule shapes every rate alike.
    A mixture of experts also learns from its load-balancing loss, times balance_coef (see model/moe.py); the
    loss returned is −log p alone, comparable with a dense model's.

    Nothing here reads a value back to the host, so on a GPU the step runs without a synchronisation, except in
    fp16: GradScaler reads its overflow flag back to decide whether to step (torch's fused AdamW alone takes the
    flag on the device instead).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    total = None
    sparse = moe_layers(model)
    for micro_step in range(accumulation):
        x, y = next_batch()
        # Over several processes, gradients are averaged across ranks once, in the last micro-step's backward.
        with distributed.gradient_sync(model, micro_step == accumulation - 1):
            with autocast:
                loss = model(x, y)
                objective = loss + total_balance_loss(sparse, balance_coef)
            scaler.scale(objective / accumulation).backward()
        total = loss.detach() if total is None else total + loss.detach()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # under FSDP: a DTensor that every rank holds whole
        norm = norm.full_tensor()
    nonfinite = (~torch.isfinite(norm)).float()
    if scaler.is_enabled():  # fp16: the scaler skips an update whose gradients overflowed, and lowers its scale
        scaler.step(optimizer)
        scaler.update()
    else:
        step_unless(optimizer, nonfinite)  # a non-finite gradient changes nothing, decided on the device
    optimizer.zero_grad(set_to_none=True)
    return total / accumulation, norm, nonfinite
