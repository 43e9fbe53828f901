"""The global batch: the tokens one optimizer update trains on, the same at every world size.

An update takes `accumulation` micro-steps of `micro_batch` windows of `context` tokens on every rank, so that a run
keeps its global batch (and the learning rate and length planned for it) on any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from nextword.config import TrainConfig
from nextword.errors import ConfigError


@dataclass(frozen=True)
class GlobalBatch:
    micro_batch: int  # windows per micro-step on one rank
    context: int  # tokens per window
    accumulation: int  # micro-steps per optimizer update
    ranks: int

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.context * self.accumulation * self.ranks

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
