"""Training to a wall-clock budget: how many steps fit, decided from measured speed.

The plan counts what is still to come besides training steps (the evaluations, the final checkpoint, a safety
margin) and divides the rest by the measured time per step. When the speed drifts by more than 20% from the speed
the plan was made with, the plan is redone, before the learning rate starts to anneal; and whenever the steps
still planned would no longer fit, the plan shrinks, annealing or not. A budget is a promise about the wall clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

DRIFT = 0.2  # a speed change larger than this fraction re-plans
SAFETY_MARGIN = 0.03  # of the budget, kept back for what the plan cannot foresee
EVALS_PER_RUN = 4  # evaluations in a run besides the one at step 0 (the last one at the end)


@dataclass
class BudgetPlanner:
    deadline: float  # on the time.monotonic() clock
    budget: float  # seconds
    decay_frac: float
    ckpt_every: int = 0
    clock: Callable[[], float] = time.monotonic

    step_seconds: float = 0.0  # the speed the current plan was made with

    def plan(self, step: int, step_seconds: float, eval_seconds: float, ckpt_seconds: float) -> int:
        """The total number of steps that end inside the budget, counting from `step` at the present speed."""
        self.step_seconds = step_seconds
        return self._steps_that_fit(step, step_seconds, eval_seconds, ckpt_seconds)

    def revise(self, step: int, planned: int, step_seconds: float, eval_seconds: float,
               ckpt_seconds: float) -> int | None:
        """A new total when the run would overrun, or when the speed has drifted before annealing; else None."""
        fits = self._steps_that_fit(step, step_seconds, eval_seconds, ckpt_seconds)
        annealing = step >= planned - max(1, round(self.decay_frac * planned))
        drifted = abs(step_seconds / self.step_seconds - 1) > DRIFT
        if fits < planned or (drifted and not annealing and fits != planned):
            self.step_seconds = step_seconds
            return fits
        return None  # on time; faster while annealing: finish early rather than bend the schedule

    def _steps_that_fit(self, step: int, step_seconds: float, eval_seconds: float, ckpt_seconds: float) -> int:
        left = self.deadline - self.clock() - SAFETY_MARGIN * self.budget
        evals_left = 1 + math.ceil((EVALS_PER_RUN - 1) * max(0.0, left) / self.budget)
        saves_left = 1 + (int(left / step_seconds) // self.ckpt_every if self.ckpt_every else 0)
        left -= evals_left * eval_seconds + saves_left * ckpt_seconds
        return step + max(1, int(left / step_seconds))
