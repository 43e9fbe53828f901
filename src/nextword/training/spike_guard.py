"""The spike guard (train.spike_rollback): a logged loss far above the recent ones sends the run back to the
checkpoint before it, and on past the data it trained on since, as large runs recover from loss spikes.

A spike is measured in standard deviations of the recent logged losses. After a rollback the model, optimizer and
step are those of the checkpoint; the loader is not: it goes on from where it is, so the batches that led to the
spike are skipped rather than trained on again.
"""

from __future__ import annotations

import math
import statistics
import sys

import torch

from nextword.config import TrainConfig
from nextword.errors import NextwordError
from nextword.training import distributed
from nextword.training.checkpointer import Checkpointer
from nextword.training.distributed import World
from nextword.training.metrics import Metrics
from nextword.training.progress import Progress
from nextword.training.runlog import RunLog

# A spike is measured in standard deviations of the recent logged losses, but in no less than this fraction of their
# mean: on a plateau where they nearly agree, ordinary batch-to-batch noise would otherwise count as a spike.
SPIKE_MIN_SPREAD = 0.01


class LossSpikeError(NextwordError):
    """The loss spiked again after train.max_spike_rollbacks rollbacks."""


def spike_limit(recent_losses: list[float], sigmas: float) -> float:
    """The loss above which a logged loss is a spike: the mean of the recent logged losses plus `sigmas` standard
    deviations of them (a deviation of at least SPIKE_MIN_SPREAD of the mean)."""
    mean = statistics.fmean(recent_losses)
    spread = max(statistics.pstdev(recent_losses, mean), SPIKE_MIN_SPREAD * mean)
    return mean + sigmas * spread


class SpikeGuard:
    """Judges each logged loss and rolls the run back from a spike (with train.spike_rollback; else it does
    nothing)."""

    def __init__(self, t: TrainConfig, checkpointer: Checkpointer, metrics: Metrics, world: World,
                 log: RunLog) -> None:
        self.t, self.checkpointer, self.metrics, self.world, self.log = t, checkpointer, metrics, world, log

    def rolled_back(self, progress: Progress, loss: float) -> bool:
        """Whether this logged loss was a spike that the run rolled back from; a loss that was not a spike joins
        the recent ones the next is measured against."""
        t = self.t
        if not t.spike_rollback or not math.isfinite(loss):  # non-finite: train.on_nonfinite deals with it
            return False
        recent = [value for _, value in progress.recent_losses]
        limit = spike_limit(recent, t.spike_sigmas) if len(recent) >= t.spike_window else math.inf
        if loss <= limit:
            progress.recent_losses = [*progress.recent_losses, [progress.step, loss]][-t.spike_window:]
            return False
        return self._roll_back(progress, loss, limit)

    def _roll_back(self, progress: Progress, loss: float, limit: float) -> bool:
        """Reload the newest checkpoint saved no later than the last logged loss that was not a spike (model,
        optimizer, RNG, step) and leave the loader where it is, past the data trained on since that checkpoint.
        False when there is no such checkpoint."""
        t = self.t
        spike_step, last_good_step = progress.step, int(progress.recent_losses[-1][0])
        spike = (f"loss spike at step {spike_step:,}: {loss:.3f}, above {limit:.3f} (the mean + {t.spike_sigmas:g} "
                 f"standard deviations of the last {len(progress.recent_losses)} logged losses)")
        if progress.spike_rollbacks >= t.max_spike_rollbacks:
            raise LossSpikeError(f"{spike} after {progress.spike_rollbacks} rollback(s), as many as "
                                 f"train.max_spike_rollbacks allows; lower train.lr or check the data. The checkpoints "
                                 f"in {self.checkpointer.folder} are kept")
        checkpoint = self.checkpointer.latest(at_most=last_good_step)
        if checkpoint is None:
            print(f"\nwarning: {spike}; no checkpoint from before it to go back to, so training goes on",
                  file=sys.stderr)
            return False
        restored = self.checkpointer.load(checkpoint)
        if self.world.size > 1:
            torch.manual_seed(distributed.rank_seed(t.seed, self.world, restored.step))
        skipped_steps, skipped_tokens = spike_step - restored.step, progress.tokens - restored.tokens
        progress.step, progress.tokens, progress.recent_losses = restored.step, restored.tokens, restored.recent_losses
        progress.spike_rollbacks += 1
        progress.spike_skipped_steps += skipped_steps
        # A later checkpoint may hold the start of the spike, and resuming from it would train on the skipped data.
        self.checkpointer.remove_after(restored.step)
        self.metrics.rolled_back(progress)
        self.log.write(kind="rollback", step=spike_step, loss=loss, limit=limit, to_step=restored.step,
                       skipped_steps=skipped_steps, skipped_tokens=skipped_tokens,
                       rollbacks=progress.spike_rollbacks)
        print(f"\n{spike}; back to {checkpoint.name}, skipping the data of the {skipped_steps} steps since it",
              file=sys.stderr)
        return True
