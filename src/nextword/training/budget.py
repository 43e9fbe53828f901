"""Training to a wall-clock budget: how many steps fit, decided from measured speed.

The plan counts what is still to come besides training steps (the evaluations, the final checkpoint, a safety
margin) and divides the rest by the measured time per step. It is checked at every log step against the speed
measured since it was first made: whenever the steps still planned would no longer fit, it shrinks, annealing or
not (a budget is a promise about the wall clock); before the learning rate starts to anneal, it also grows when
more steps would fit, which a warmup–stable–decay schedule allows without bending the rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

from nextword.training.schedule import decay_start

GROW_SLACK = 0.02  # before annealing, a plan grows when this fraction more steps would fit
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
        """A new total when the run would overrun, or, before annealing, when more steps would fit; else None."""
        fits = self._steps_that_fit(step, step_seconds, eval_seconds, ckpt_seconds)
        annealing = step >= decay_start(planned, self.decay_frac)
        # Until WSD starts to anneal, the rate does not depend on the total, so the plan may grow freely.
        if fits < planned or (not annealing and fits > planned * (1 + GROW_SLACK)):
            self.step_seconds = step_seconds
            return fits
        return None  # on time; faster while annealing: finish early rather than bend the schedule

    def _steps_that_fit(self, step: int, step_seconds: float, eval_seconds: float, ckpt_seconds: float) -> int:
        left = self.deadline - self.clock() - SAFETY_MARGIN * self.budget
        evals_left = 1 + math.ceil((EVALS_PER_RUN - 1) * max(0.0, left) / self.budget)
        saves_left = 1 + (int(left / step_seconds) // self.ckpt_every if self.ckpt_every else 0)
        left -= evals_left * eval_seconds + saves_left * ckpt_seconds
        return step + max(1, int(left / step_seconds))
