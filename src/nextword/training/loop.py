"""The training loop: one optimizer update after another, until the run's planned steps are done or it is asked
to stop.

The loop decides nothing itself. Each component it calls owns its "is it due now": the time budget plans the
run's steps once enough are timed and revises the plan at log steps, the metrics log at log steps, the spike
guard judges each logged loss, the evaluator evaluates at its interval and the checkpointer saves at its own.
The loop keeps their order: a step, its log, an evaluation, a save; and it reads the step timer where the device
is waited for anyway (StepTimer).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nextword.training.batch import BatchWarmup, GlobalBatch
from nextword.training.budget import TimeBudget
from nextword.training.checkpointer import Checkpointer
from nextword.training.evaluator import Evaluator
from nextword.training.metrics import Metrics
from nextword.training.progress import Progress
from nextword.training.spike_guard import SpikeGuard
from nextword.training.stop import StopRequest

# One optimizer update at a learning rate, on a global batch: (loss, gradient norm, 1.0 if skipped), all still on
# the device.
Update = Callable[[float, GlobalBatch], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Stopped:
    """A run stopped before its end, by a signal or at --stop-after, and the checkpoint it saved."""

    checkpoint: Path
    interrupted: bool  # by a signal


class StepTimer:
    """Wall-clock seconds of the training steps, read only once the device has finished them.

    On a GPU an update returns as soon as its kernels are queued, so a clock read around one step measures the
    launch, not the work. The timer reads the clock after synchronising the device, at the points the loop
    chooses: log steps, which read the loss back anyway, and before an evaluation or a save, which wait for the
    device as well. The seconds between two reads are exact, the device's work included; the time of each step
    between them is known only as their mean, and that mean is what the budget and the metrics are given.
    """

    def __init__(self, synchronize: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> None:
        self.synchronize, self.clock = synchronize, clock
        self.since, self.since_step, self.since_tokens = clock(), 0, 0

    @classmethod
    def for_device(cls, device: torch.device) -> StepTimer:
        if device.type == "cuda":
            return cls(functools.partial(torch.cuda.synchronize, device))
        return cls(lambda: None)  # a CPU step has finished when it returns

    def restart(self, progress: Progress) -> None:
        """Time the steps from where `progress` is on, leaving out what came before (work that was not a training
        step)."""
        self.synchronize()
        self.since, self.since_step, self.since_tokens = self.clock(), progress.step, progress.tokens

    def lap(self, progress: Progress) -> tuple[int, int, float]:
        """The steps done since the last lap or restart, up to where `progress` is, the tokens they trained on, and
        the exact seconds they took."""
        self.synchronize()
        now = self.clock()
        steps, tokens, seconds = progress.step - self.since_step, progress.tokens - self.since_tokens, now - self.since
        self.since, self.since_step, self.since_tokens = now, progress.step, progress.tokens
        return steps, tokens, seconds


def train_loop(progress: Progress, update: Update, learning_rate: Callable[[int, int], float], batches: BatchWarmup,
               *, timer: StepTimer, budget: TimeBudget, metrics: Metrics, spike_guard: SpikeGuard,
               evaluator: Evaluator, checkpointer: Checkpointer, stop: StopRequest,
               stop_after: int | None) -> Stopped | None:
    """Train until the planned steps are done (None) or a stop is asked for (Stopped)."""

    def time_steps() -> None:
        """Give the steps since the timer was last read their time (a synchronisation on a GPU)."""
        steps, tokens, seconds = timer.lap(progress)
        if steps:
            progress.train_seconds += seconds
            metrics.record_time(steps, tokens, seconds)
            budget.record_time(steps, batches.at_full_batch(steps, tokens, seconds))

    timer.restart(progress)
    while True:
        budget.plan_once_timed(progress, evaluator.seconds, checkpointer.seconds)
        if progress.finished():
            return None
        lr = learning_rate(progress.step, progress.planned_steps)
        batch = batches.batch_at(progress)
        loss, grad_norm, nonfinite = update(lr, batch)
        progress.advance(batch.tokens_per_step)
        metrics.record_step(progress, nonfinite, batch.tokens_per_step)

        at_end = progress.finished()
        at_log_step = metrics.due(progress)
        stopping = stop.agreed(at_log_step)
        if at_log_step or budget.times_each_step():
            time_steps()
        if at_log_step:
            logged_loss = metrics.log_step(progress, loss, grad_norm, lr)
            budget.revise_if_due(progress, evaluator.seconds, checkpointer.seconds)
            if spike_guard.rolled_back(progress, logged_loss):
                timer.restart(progress)
                continue  # from the checkpoint before the spike, past the data trained on since
        evaluating = evaluator.due(progress)
        asked_to_stop = stopping or progress.step == stop_after
        saving = at_end or asked_to_stop or checkpointer.due(progress.step)
        if evaluating or saving:
            time_steps()  # what follows is not a training step: left out of the steps' time
        if evaluating:
            evaluator.evaluate(progress)
        if at_end:  # the run ends on an evaluation, then its last checkpoint
            metrics.close()
            evaluator.evaluate(progress)
        if saving:
            path = checkpointer.save(progress)
            if asked_to_stop and not at_end:  # a stop asked for at the last step: the run is finished
                return Stopped(path, interrupted=stopping)
        if evaluating or saving:
            timer.restart(progress)
