"""The global batch: the tokens one optimizer update trains on, the same at every world size.

An update takes `accumulation` micro-steps of `micro_batch` windows of `context` tokens on every rank, so that a run
keeps its global batch (and the learning rate and length planned for it) on any number of processes.

With train.batch_warmup, the first steps of a run train on a smaller batch (BatchWarmup): a quarter of it, then a
half, then the whole, in three equal stages of the warmup's steps. The stages are few and fixed so that a compiled
model meets at most three shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from nextword.config import TrainConfig
from nextword.errors import ConfigError
from nextword.training.progress import Progress

WARMUP_DIVISORS = (4, 2, 1)  # the full batch divided by these in the three stages of a batch warmup


@dataclass(frozen=True)
class GlobalBatch:
    micro_batch: int  # windows per micro-step on one rank
    context: int  # tokens per window
    accumulation: int  # micro-steps per optimizer update
    ranks: int

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.context * self.accumulation * self.ranks

    def divided(self, divisor: int) -> GlobalBatch:
        """A batch about 1/divisor of this one, the same on every rank: fewer micro-steps where an update
        accumulates several, else fewer windows per micro-step, never less than one. Where the micro-steps do not
        divide evenly (2 micro-steps, a quarter of the batch), the fewer micro-steps also take fewer windows, so
        the batch is 1/divisor of the whole as nearly as it can be, and the same at any world size that divides
        the whole alike (2 micro-steps in one process, or one on each of 2 ranks)."""
        if divisor == 1:
            return self
        micro_steps = -(-self.accumulation // divisor)  # rounded up: never more windows in a micro-step than now
        windows = max(1, self.micro_batch * self.accumulation // (divisor * micro_steps))
        return replace(self, micro_batch=windows, accumulation=micro_steps)

    def describe(self) -> str:
        """16 × 256 × 4 micro-steps × 2 ranks (the factors above 1 only)."""
        return (f"{self.micro_batch} × {self.context}"
                f"{f' × {self.accumulation} micro-steps' if self.accumulation > 1 else ''}"
                f"{f' × {self.ranks} ranks' if self.ranks > 1 else ''}")


def global_batch(t: TrainConfig, context: int, ranks: int) -> GlobalBatch:
    return GlobalBatch(t.micro_batch, context, accumulation(t, context, ranks), ranks)


def accumulation(t: TrainConfig, context: int, ranks: int) -> int:
    """Micro-steps per update, so that the global batch is train.batch_tokens whatever the number of ranks."""
    if not t.batch_tokens:
        return 1
    per_micro_step = t.micro_batch * context * ranks
    if ranks > 1 and t.batch_tokens % per_micro_step:
        raise ConfigError(f"train.batch_tokens = {t.batch_tokens:,} is not a multiple of micro_batch × context × "
                          f"ranks = {t.micro_batch} × {context} × {ranks} = {per_micro_step:,}; set it to a "
                          f"multiple so every world size trains on the same global batch")
    return max(1, t.batch_tokens // per_micro_step)


def keep_saved_batch(batch: GlobalBatch, saved_tokens_per_step: int, t: TrainConfig, run_dir: Path) -> GlobalBatch:
    """Without train.batch_tokens, a run resumed at another world size keeps the tokens per step it was saved
    with, by accumulating micro-steps where it has fewer ranks than before."""
    saved = saved_tokens_per_step
    if not saved or saved == batch.tokens_per_step or t.batch_tokens:
        return batch
    per_micro_step = batch.micro_batch * batch.context * batch.ranks
    if saved % per_micro_step:
        raise ConfigError(f"{run_dir}: the run trains on {saved:,} tokens per step, which micro_batch × context "
                          f"× ranks = {batch.micro_batch} × {batch.context} × {batch.ranks} = "
                          f"{per_micro_step:,} does not divide; resume with a number of processes that divides it, "
                          f"or set train.batch_tokens = {saved} and a train.micro_batch that divides it")
    return replace(batch, accumulation=saved // per_micro_step)


def warmup_divisor(step: int, warmup_steps: int) -> int:
    """What the full batch is divided by at update `step` (0-based) of a batch warmup of `warmup_steps` updates: 4
    in its first third, 2 in its second, 1 from then on."""
    if step >= warmup_steps:
        return 1
    return WARMUP_DIVISORS[3 * step // warmup_steps]


@dataclass(frozen=True)
class BatchWarmup:
    """The batch of each step of a run whose first `fraction` of planned steps grows the batch (train.batch_warmup).

    The warmup's length in steps is fixed when the run's steps are first planned (Progress.batch_warmup_steps), so
    that a time budget's later re-plans never shrink the batch again, and a resumed run continues in its stage.
    """

    full: GlobalBatch
    fraction: float = 0.0

    def warmup_steps(self, planned_steps: int) -> int:
        return round(self.fraction * planned_steps)

    def batch_at(self, progress: Progress) -> GlobalBatch:
        """The batch of the step the run is at."""
        if self.fraction and not progress.planned_steps:  # a time budget still timing its first steps
            return self.full.divided(WARMUP_DIVISORS[0])
        return self.full.divided(warmup_divisor(progress.step, progress.batch_warmup_steps))

    def tokens_in(self, steps: int) -> int:
        """The tokens that a run planned for `steps` updates trains on."""
        warmup = self.warmup_steps(steps)
        quarter = min(steps, -(-warmup // 3))  # the steps s with 3s < warmup
        half = min(steps, -(-2 * warmup // 3)) - quarter  # those with warmup <= 3s < 2·warmup
        return (quarter * self.full.divided(4).tokens_per_step + half * self.full.divided(2).tokens_per_step
                + (steps - quarter - half) * self.full.tokens_per_step)

    def steps_for(self, tokens: float, *, at_least: bool) -> int:
        """The planned steps that train on `tokens`: the fewest that train at least that many (`at_least`), else the
        most that train no more (at least one step either way)."""
        full, quarter, half = (self.full.divided(d).tokens_per_step for d in (1, 4, 2))
        # With a fraction w of S steps in three equal stages at a quarter, a half and all of the batch B, the run
        # trains S·B·(1 − w) + (w·S/3)·(B/4 + B/2 + B) = S·B·(1 − 5w/12) tokens. The shares are taken as the
        # divided batches really are (a micro-batch of 2 windows has no quarter: its first stage is a half too).
        mean_per_step = full * (1 - self.fraction + self.fraction * (quarter + half + full) / (3 * full))
        steps = max(1, round(tokens / mean_per_step))
        # The stages are whole steps: walk from that estimate to the exact count.
        if at_least:
            while self.tokens_in(steps) < tokens:
                steps += 1
            while steps > 1 and self.tokens_in(steps - 1) >= tokens:
                steps -= 1
        else:
            while self.tokens_in(steps + 1) <= tokens:
                steps += 1
            while steps > 1 and self.tokens_in(steps) > tokens:
                steps -= 1
        return steps

    def at_full_batch(self, steps: int, tokens: int, seconds: float) -> float:
        """The seconds that `steps` steps, which trained on `tokens` in `seconds`, would take at the full batch,
        scaled by their tokens. A smaller step carries the same fixed costs as a full one, so this overestimates:
        a time budget planned from it errs short, never past its deadline, and grows back once full steps are timed
        (BudgetPlanner.revise)."""
        full_tokens = steps * self.full.tokens_per_step
        return seconds if tokens == full_tokens else seconds * full_tokens / tokens
