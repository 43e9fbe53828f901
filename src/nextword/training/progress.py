"""What a run has done so far: the record that every checkpoint saves as trainer.json, so that a resumed run
carries on exactly where it stopped."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """What the loop has done: saved in every checkpoint, so a resumed run carries on exactly."""

    step: int = 0
    tokens: int = 0
    planned_steps: int = 0
    replans: int = 0
    train_seconds: float = 0.0  # of training steps alone, without evaluations and saves
    nonfinite_skipped: int = 0
    loader: dict[str, Any] = field(default_factory=dict)
    # With train.spike_rollback: [step, loss] of the latest logged losses that were not spikes, the rollbacks made,
    # and the steps whose data they skipped.
    recent_losses: list[list[float]] = field(default_factory=list)
    spike_rollbacks: int = 0
    spike_skipped_steps: int = 0
    # The train split and seed the loader's position counts windows of: resuming on other data would silently read
    # a different stream from a position that means nothing there.
    data_stream: str = ""
    # The global batch the run began with: resumed at another world size without train.batch_tokens, one
    # micro-batch per rank would change it under a length and learning rate planned for it.
    tokens_per_step: int = 0
    # With train.batch_warmup: the steps over which the batch grows, fixed when the run's steps were first planned.
    batch_warmup_steps: int = 0

    def finished(self) -> bool:
        return bool(self.planned_steps) and self.step >= self.planned_steps

    def advance(self, tokens: int) -> None:
        """Count one optimizer update that trained on `tokens` (its time is counted as the loop measures it)."""
        self.step += 1
        self.tokens += tokens

    def to_dict(self) -> dict[str, Any]:
        """The fields as trainer.json holds them."""
        return dataclasses.asdict(self)
