"""Learning-rate schedules, as a pure function of the step and the planned number of steps.

Warmup–stable–decay (WSD) holds the peak rate and anneals over a fixed last fraction of the planned steps, so a
run whose length is set by a time budget still ends on a properly annealed model. Cosine is the classic
alternative. Every schedule reaches its minimum on the last step.

Warmup is counted in updates, with a floor: Adam's moment estimates and the early, large gradients need a number
of steps to settle whatever the run's length, so a short run (a time budget on a slow or busy machine) keeps the
same warmup as a long one. Measured on the default model over 480 steps: warmups of 24, 48 and 100 updates ended
at 4.89, 4.65 and 4.60 nats of validation loss (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math

from nextword.config import TrainConfig

MAX_WARMUP_SHARE = 0.25  # the floor in steps never makes warmup longer than this share of the run


def warmup_length(total: int, warmup_steps: int, warmup_frac: float) -> int:
    """Updates of linear warmup in a run of `total`: `warmup_frac` of it, and at least `warmup_steps` as long as
    that is no more than a quarter of the run."""
    return max(round(warmup_frac * total), min(warmup_steps, int(MAX_WARMUP_SHARE * total)))


def learning_rate(step: int, total: int, *, peak: float, min_ratio: float, schedule: str,
                  warmup_steps: int, warmup_frac: float, decay_frac: float) -> float:
    """The rate for update number `step` (0-based) of a run planned for `total` updates."""
    lowest = peak * min_ratio
    warmup = warmup_length(total, warmup_steps, warmup_frac)
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        progress = (step - warmup + 1) / max(1, total - warmup)
        return lowest + 0.5 * (peak - lowest) * (1 + math.cos(math.pi * min(1.0, progress)))
    annealing_from = decay_start(total, decay_frac)
    if step < annealing_from:
        return peak
    progress = (step - annealing_from + 1) / (total - annealing_from)
    return lowest + (peak - lowest) * (1 - min(1.0, progress))


def decay_start(total: int, decay_frac: float) -> int:
    """The first step of the WSD annealing phase."""
    return total - max(1, round(decay_frac * total))


def rate_for(t: TrainConfig, step: int, planned_steps: int) -> float:
    """The rate of update `step` under the run's settings, in a run planned for `planned_steps` updates."""
    if not planned_steps:  # while a time budget is being measured: the warmup's floor, the same in any plan
        return t.lr * min(1.0, (step + 1) / max(1, t.warmup_steps))
    return learning_rate(step, planned_steps, peak=t.lr, min_ratio=t.min_lr_ratio, schedule=t.schedule,
                         warmup_steps=t.warmup_steps, warmup_frac=t.warmup_frac, decay_frac=t.decay_frac)
