"""Learning-rate schedules, as a pure function of the step and the planned number of steps.

Warmup–stable–decay (WSD) holds the peak rate and anneals over a fixed last fraction of the planned steps, so a
run whose length is set by a time budget still ends on a properly annealed model. Cosine is the classic
alternative. Every schedule reaches its minimum on the last step.
"""

from __future__ import annotations

import math


def learning_rate(step: int, total: int, *, peak: float, min_ratio: float, schedule: str,
                  warmup_frac: float, decay_frac: float) -> float:
    """The rate for update number `step` (0-based) of a run planned for `total` updates."""
    lowest = peak * min_ratio
    warmup = round(warmup_frac * total)
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        progress = (step - warmup + 1) / max(1, total - warmup)
        return lowest + 0.5 * (peak - lowest) * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = total - max(1, round(decay_frac * total))
    if step < decay_start:
        return peak
    progress = (step - decay_start + 1) / (total - decay_start)
    return lowest + (peak - lowest) * (1 - min(1.0, progress))


def decay_start(total: int, decay_frac: float) -> int:
    """The first step of the WSD annealing phase."""
    return total - max(1, round(decay_frac * total))
