"""How long a run trains, and training to a wall-clock budget: how many steps fit, decided from measured speed.

Exactly one of train.steps, train.tokens or train.budget sets a run's length (RunLength). A step or token count
comes to a number of steps at once; a budget is planned once the first steps are timed.

The plan counts what is still to come besides training steps (the evaluations, the final checkpoint, a safety
margin) and divides the rest by the measured time per step. It is checked at every log step against the speed
measured since it was first made: whenever the steps still planned would no longer fit, it shrinks, annealing or
not (a budget is a promise about the wall clock); before the learning rate starts to anneal, it also grows when
more steps would fit, which a warmup–stable–decay schedule allows without bending the rate.

The speed is measured by the loop's StepTimer, between synchronisations of the device, so it counts the device's
work and not the launch of it. Until the first plan every step is timed on its own (a synchronisation each, for
the first few steps only); after it, the steps between two log steps are timed together, each at their mean.

Under a batch warmup (train.batch_warmup) the first steps are smaller and faster. Their time is scaled up to the
full batch by their tokens (BatchWarmup.at_full_batch), which overestimates it, so the plan errs short rather than
past the deadline; revisions grow it back once full-batch steps are timed, before the rate anneals.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

from nextword.config import TrainConfig, parse_count, parse_duration
from nextword.errors import ConfigError
from nextword.training.batch import BatchWarmup
from nextword.training.distributed import World
from nextword.training.progress import Progress
from nextword.training.runlog import RunLog
from nextword.training.schedule import decay_start

DEFAULT_BUDGET = "10m"
GROW_SLACK = 0.02  # before annealing, a plan grows when this fraction more steps would fit
SAFETY_MARGIN = 0.03  # of the budget, kept back for what the plan cannot foresee
EVALS_PER_RUN = 4  # evaluations in a run besides the one at step 0 (the last one at the end)
TIMED_WARMUP_STEPS = 3  # steps not timed: the first ones pay for allocation and lazy initialisation
TIMED_STEPS = 10  # steps timed before a budget is planned
REVISE_AFTER_STEPS = 10  # steps timed since the first plan before it is revised
REVISE_OVER_STEPS = 100  # latest steps whose mean time a revision plans with: a median of a few can be optimistic


@dataclass(frozen=True)
class RunLength:
    """What sets how long a run trains, and that setting's value: steps, tokens, FLOPs, or seconds of wall clock.
    A FLOPs count becomes tokens at the model's training FLOPs per token (GPT.flops_per_token), which the trainer
    gives once the model is built (`for_model`)."""

    governs: Literal["steps", "tokens", "flops", "budget"]
    limit: float
    flops_per_token: float = 0.0

    @classmethod
    def from_config(cls, t: TrainConfig) -> RunLength:
        if t.steps:
            return cls("steps", t.steps)
        if t.tokens:
            return cls("tokens", parse_count(t.tokens, "train.tokens"))
        if t.flops:
            return cls("flops", parse_count(t.flops, "train.flops"))
        return cls("budget", parse_duration(t.budget or DEFAULT_BUDGET, "train.budget"))

    def for_model(self, flops_per_token: float) -> RunLength:
        return replace(self, flops_per_token=flops_per_token)

    def steps(self, tokens_per_step: int, warmup: BatchWarmup | None = None) -> int:
        """The steps that a step, token or FLOPs count comes to; 0 for a time budget, which plans them once timed.
        A batch warmup's smaller first steps train fewer tokens: a token or FLOPs count then takes more steps."""
        if self.governs == "steps":
            return int(self.limit)
        if warmup and warmup.fraction and self.governs in ("tokens", "flops"):
            tokens = self.limit if self.governs == "tokens" else self.limit / self.flops_per_token
            return warmup.steps_for(tokens, at_least=self.governs == "tokens")
        if self.governs == "tokens":
            return math.ceil(self.limit / tokens_per_step)
        if self.governs == "flops":
            return max(1, math.floor(self.limit / self.flops_per_token / tokens_per_step))
        return 0

    def describe(self, progress: Progress) -> str:
        if self.governs == "budget" and progress.step and progress.planned_steps:
            # The plan was made when the run began and its learning rate is scheduled over it; a budget given now
            # would be printed but not followed.
            return (f"resuming at step {progress.step:,} of the {progress.planned_steps:,} steps planned when the run "
                    "began (train.budget sizes new runs)")
        if self.governs == "budget":
            return f"budget {self.limit:.0f} s of wall clock (steps planned from measured speed)"
        if self.governs == "flops":
            return (f"{self.limit:.3g} FLOPs ({self.limit / self.flops_per_token:,.0f} tokens at "
                    f"{self.flops_per_token:,.0f} FLOPs per token)")
        return f"{self.limit:,.0f} {self.governs}"

    def refuse_another(self, progress: Progress, warmup: BatchWarmup, t: TrainConfig, run_dir: Path) -> None:
        """A resumed run keeps the length it was planned for, as its learning rate is scheduled over it; a step or
        token count that asks for another would otherwise be written to config.toml and then ignored."""
        asked = self.steps(warmup.full.tokens_per_step, warmup)
        if progress.planned_steps and asked and asked != progress.planned_steps:
            raise ConfigError(
                f"{run_dir}: the run is at step {progress.step:,} of the {progress.planned_steps:,} it was planned "
                f"for, but train.{self.governs} = {getattr(t, self.governs)} asks for {asked:,} steps; a run keeps "
                f"its length once started: resume with the run's own length, or start another with --run-dir DIR")


def plan_length(length: RunLength, progress: Progress, warmup: BatchWarmup, t: TrainConfig,
                start: float) -> BudgetPlanner | None:
    """Set the planned steps of a step or token count; for a new budgeted run, return the planner that will set
    them once a few steps are timed (a resumed run keeps the total it planned)."""
    if not progress.planned_steps:
        progress.planned_steps = length.steps(warmup.full.tokens_per_step, warmup)
        progress.batch_warmup_steps = warmup.warmup_steps(progress.planned_steps)
    if length.governs == "budget" and not progress.planned_steps:
        return BudgetPlanner(start + length.limit, length.limit, t.decay_frac, t.ckpt_every, t.batch_warmup)
    return None


def reads(tokens: int, train_tokens: int) -> str:
    """How many times `tokens` of training read the training split, in words."""
    return f"{tokens / 1e6:.1f}M tokens, {tokens / max(1, train_tokens):.1f} reads of the training split"


@dataclass
class BudgetPlanner:
    deadline: float  # on the time.monotonic() clock
    budget: float  # seconds
    decay_frac: float
    ckpt_every: int = 0
    batch_warmup: float = 0.0  # train.batch_warmup: the fraction of the first plan's steps that grow the batch
    clock: Callable[[], float] = time.monotonic

    def plan(self, step: int, step_seconds: float, eval_seconds: float, ckpt_seconds: float) -> int:
        """The total number of steps that end inside the budget, counting from `step` at the present speed."""
        return self._steps_that_fit(step, step_seconds, eval_seconds, ckpt_seconds)

    def revise(self, step: int, planned: int, step_seconds: float, eval_seconds: float,
               ckpt_seconds: float) -> int | None:
        """A new total when the run would overrun, or, before annealing, when more steps would fit; else None."""
        fits = self._steps_that_fit(step, step_seconds, eval_seconds, ckpt_seconds)
        annealing = step >= decay_start(planned, self.decay_frac)
        # Until WSD starts to anneal, the rate does not depend on the total, so the plan may grow freely.
        if fits < planned or (not annealing and fits > planned * (1 + GROW_SLACK)):
            return fits
        return None  # on time; faster while annealing: finish early rather than bend the schedule

    def _steps_that_fit(self, step: int, step_seconds: float, eval_seconds: float, ckpt_seconds: float) -> int:
        left = self.deadline - self.clock() - SAFETY_MARGIN * self.budget
        evals_left = 1 + math.ceil((EVALS_PER_RUN - 1) * max(0.0, left) / self.budget)
        saves_left = 1 + (int(left / step_seconds) // self.ckpt_every if self.ckpt_every else 0)
        left -= evals_left * eval_seconds + saves_left * ckpt_seconds
        return step + max(1, int(left / step_seconds))


class TimeBudget:
    """The planner at work in the loop: it plans the run's steps once enough of them are timed, and revises the
    plan at log steps. Without a planner (a step or token count, or a resumed run) it does nothing."""

    def __init__(self, planner: BudgetPlanner | None, world: World, log: RunLog, train_tokens: int = 0) -> None:
        self.planner, self.world, self.log = planner, world, log
        self.train_tokens = train_tokens  # of the training split: the plan says how many times it will be read
        self.step_seconds: list[float] = []
        self.planned_at = 0  # how many steps had been timed when the plan was first made

    def times_each_step(self) -> bool:
        """Whether each step is to be timed on its own: until the plan, so the first steps, which pay for
        allocation and compilation, can be left out of it."""
        return self.planner is not None and not self.planned_at

    def record_time(self, steps: int, seconds: float) -> None:
        """`steps` steps took `seconds` in all (as they would at the full batch: BatchWarmup.at_full_batch): each is
        counted at their mean."""
        if self.planner:
            self.step_seconds.extend([seconds / steps] * steps)

    def plan_once_timed(self, progress: Progress, eval_seconds: float, ckpt_seconds: float) -> None:
        if not (self.planner and not progress.planned_steps
                and len(self.step_seconds) >= TIMED_WARMUP_STEPS + TIMED_STEPS):
            return
        measured = statistics.median(self.step_seconds[TIMED_WARMUP_STEPS:])
        self.planned_at = len(self.step_seconds)
        # Planned on rank 0 and shared: every rank must train the same number of steps.
        progress.planned_steps = self.world.from_main(self.planner.plan, progress.step, measured, eval_seconds,
                                                      ckpt_seconds)
        # Fixed by this first plan: a re-plan that grew the run would otherwise shrink the batch again.
        progress.batch_warmup_steps = round(self.planner.batch_warmup * progress.planned_steps)
        self.log.write(kind="plan", step=progress.step, step_seconds=measured, planned_steps=progress.planned_steps)
        print(f"\nplan: {progress.planned_steps:,} steps fit in the budget at {measured:.2f} s a step; "
              f"{reads(progress.planned_steps * progress.tokens_per_step, self.train_tokens)}")

    def revise_if_due(self, progress: Progress, eval_seconds: float, ckpt_seconds: float) -> None:
        """At a log step before the last: re-plan from the measured speed when the steps left would not fit (or
        more would)."""
        planner = self.planner
        # Asked of what every rank knows alike: a rank that skipped the broadcast below would leave the others in it.
        if progress.finished() or not (planner and self.planned_at
                                       and len(self.step_seconds) - self.planned_at >= REVISE_AFTER_STEPS):
            return
        measured = statistics.mean(self.step_seconds[max(self.planned_at, len(self.step_seconds) - REVISE_OVER_STEPS):])
        revised = self.world.from_main(planner.revise, progress.step, progress.planned_steps, measured, eval_seconds,
                                       ckpt_seconds)
        if revised:
            progress.replans += 1
            progress.planned_steps = revised
            self.log.write(kind="plan", step=progress.step, step_seconds=measured, planned_steps=revised, replan=True)
