"""The training loop: one optimizer update after another, until the run's planned steps are done or it is asked
to stop.

The loop decides nothing itself. Each component it calls owns its "is it due now": the time budget plans the
run's steps once enough are timed and revises the plan at log steps, the metrics log at log steps, the spike
guard judges each logged loss, the evaluator evaluates at its interval and the checkpointer saves at its own.
The loop keeps their order: a step, its log, an evaluation, a save.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nextword.training.budget import TimeBudget
from nextword.training.checkpointer import Checkpointer
from nextword.training.evaluator import Evaluator
from nextword.training.metrics import Metrics
from nextword.training.progress import Progress
from nextword.training.spike_guard import SpikeGuard
from nextword.training.stop import StopRequest

# One optimizer update at a learning rate: (loss, gradient norm, 1.0 if skipped), all still on the device.
Update = Callable[[float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Stopped:
    """A run stopped before its end, by a signal or at --stop-after, and the checkpoint it saved."""

    checkpoint: Path
    interrupted: bool  # by a signal


def train_loop(progress: Progress, update: Update, learning_rate: Callable[[int, int], float], tokens_per_step: int,
               *, budget: TimeBudget, metrics: Metrics, spike_guard: SpikeGuard, evaluator: Evaluator,
               checkpointer: Checkpointer, stop: StopRequest, stop_after: int | None) -> Stopped | None:
    """Train until the planned steps are done (None) or a stop is asked for (Stopped)."""
    while True:
        budget.plan_once_timed(progress, evaluator.seconds, checkpointer.seconds)
        if progress.finished():
            return None
        lr = learning_rate(progress.step, progress.planned_steps)
        began = time.perf_counter()
        loss, grad_norm, nonfinite = update(lr)
        seconds = time.perf_counter() - began
        progress.advance(tokens_per_step, seconds)
        metrics.record_step(progress, seconds, nonfinite)
        budget.record_step(seconds)

        at_end = progress.finished()
        at_log_step = metrics.due(progress)
        stopping = stop.agreed(at_log_step)
        if at_log_step:
            logged_loss = metrics.log_step(progress, loss, grad_norm, lr)
            budget.revise_if_due(progress, evaluator.seconds, checkpointer.seconds)
            if spike_guard.rolled_back(progress, logged_loss):
                continue  # from the checkpoint before the spike, past the data trained on since
        if evaluator.due(progress):
            evaluator.evaluate(progress)
        asked_to_stop = stopping or progress.step == stop_after
        if at_end:  # the run ends on an evaluation, then its last checkpoint
            metrics.close()
            evaluator.evaluate(progress)
        if at_end or asked_to_stop or checkpointer.due(progress.step):
            path = checkpointer.save(progress)
            if asked_to_stop and not at_end:  # a stop asked for at the last step: the run is finished
                return Stopped(path, interrupted=stopping)
