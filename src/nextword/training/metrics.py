"""What a run reports while it trains: at every log step a record of the loss, learning rate, gradient norm,
tokens per second and MFU (a mixture of experts adds each sparse block's per-expert load and its balance loss), and
between them a progress bar; and the count of updates skipped for a non-finite
loss or gradient, which stops a run that keeps diverging.

Between log steps these numbers stay on the device: reading them back is a host synchronisation, made once per
log step, never inside the training step. Tokens per second and MFU are over the steps since the last log step,
timed between synchronisations (loop.StepTimer), so they count the device's work and not only its launch.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from nextword.config import TrainConfig
from nextword.errors import NextwordError
from nextword.model.moe import MoE
from nextword.training.distributed import World
from nextword.training.progress import Progress
from nextword.training.runlog import RunLog


class NonFiniteError(NextwordError):
    """Training diverged: every recent update was skipped for NaN or Inf."""


class Metrics:
    """Logs the run's training numbers at log steps (every train.log_every steps, and the last) and keeps the bar."""

    def __init__(self, log: RunLog, t: TrainConfig, progress: Progress, *, tokens_per_step: int,
                 flops_per_token: float, peak_flops: float, world: World, device: torch.device, run_dir: Path,
                 start: float, show_bar: bool, sparse: list[MoE] | None = None) -> None:
        self.log, self.t, self.world, self.run_dir, self.start = log, t, world, run_dir, start
        self.sparse = sparse or []  # a mixture of experts' sparse blocks, whose routing is logged
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.timed_tokens, self.timed_seconds = 0, 0.0  # since the last log step, for tokens/s
        # With train.batch_warmup, a train record names the tokens per step where they changed since the last one.
        self.step_tokens, self.logged_step_tokens = tokens_per_step, 0
        self.skipped_since_log = torch.zeros((), device=device)
        self.skipped_in_a_row = torch.zeros((), device=device)  # kept on the device: no sync in the step
        self.bar = _progress_bar(show_bar, progress)

    def record_step(self, progress: Progress, nonfinite: torch.Tensor, tokens: int) -> None:
        """Count a step that trained on `tokens`; `nonfinite` is 1.0 (on the device) when its update was skipped."""
        self.step_tokens = tokens
        self.skipped_since_log += nonfinite
        self.skipped_in_a_row.add_(nonfinite).mul_(nonfinite)  # counts up while updates are skipped, else 0
        self.bar.total = progress.planned_steps or None  # a time budget plans, and may re-plan, as it goes
        self.bar.update(1)

    def record_time(self, steps: int, tokens: int, seconds: float) -> None:
        """`steps` steps trained on `tokens` in `seconds` in all, as timed between two synchronisations."""
        self.timed_tokens += tokens
        self.timed_seconds += seconds

    def due(self, progress: Progress) -> bool:
        return progress.step % self.t.log_every == 0 or progress.finished()

    def log_step(self, progress: Progress, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> float:
        """Read back what the interval's steps kept on the device and log this step; return its loss."""
        self._count_skipped_updates(progress)
        tokens_per_s = self.timed_tokens / self.timed_seconds if self.timed_seconds else 0.0
        self.timed_tokens, self.timed_seconds = 0, 0.0
        mfu = self.flops_per_token * tokens_per_s / (self.peak_flops * self.world.size)
        mean_loss = float(self.world.mean(loss))  # each rank's loss is over its own windows
        self.log.write(kind="train", step=progress.step, tokens=progress.tokens, loss=mean_loss, lr=lr,
                       grad_norm=float(grad_norm), tokens_per_s=tokens_per_s, mfu=mfu,
                       elapsed_s=time.monotonic() - self.start, **self._step_tokens(), **self._routing())
        self.bar.set_postfix_str(f"loss {mean_loss:.3f}, {tokens_per_s:,.0f} tok/s, MFU {mfu:.1%}")
        return mean_loss

    def _step_tokens(self) -> dict[str, Any]:
        """Under a batch warmup, the tokens per step where they changed since the last train record."""
        if not self.t.batch_warmup or self.step_tokens == self.logged_step_tokens:
            return {}
        self.logged_step_tokens = self.step_tokens
        return {"tokens_per_step": self.step_tokens}

    def _routing(self) -> dict[str, Any]:
        """Since the last log step, over every rank: each sparse block's share of routed tokens per expert
        (a row summing to 1; 1/experts each when balanced) and the mean balance loss (1.0 when balanced)."""
        if not self.sparse:
            return {}
        loads, balance, forwards = zip(*(block.take_stats() for block in self.sparse))
        loads = [self.world.mean(load) for load in loads]
        shares = [[round(float(x), 4) for x in load / load.sum().clamp(min=1)] for load in loads]
        balance_loss = float(self.world.mean(sum(balance) / max(1.0, float(sum(forwards)))))
        return {"expert_load": shares, "balance_loss": balance_loss}

    def rolled_back(self, progress: Progress) -> None:
        """The run went back to an earlier step: a fresh count of skipped updates, and the bar there."""
        self.skipped_in_a_row.zero_()
        self.bar.n = progress.step
        self.bar.refresh()

    def close(self) -> None:
        """Take the bar off the screen (again: a closed bar stays closed)."""
        self.bar.close()

    def _count_skipped_updates(self, progress: Progress) -> None:
        """Count the updates skipped for NaN or Inf since the last log step; stop the run when told to."""
        t = self.t
        skipped = int(self.skipped_since_log)  # read back only here: no host sync inside the step
        self.skipped_since_log.zero_()
        progress.nonfinite_skipped += skipped
        if not skipped:
            return
        print(f"\nwarning: {skipped} update(s) skipped for a non-finite loss or gradient before step "
              f"{progress.step}", file=sys.stderr)
        in_a_row = int(self.skipped_in_a_row)
        if t.on_nonfinite == "stop" or in_a_row >= t.max_nonfinite_in_a_row:
            raise NonFiniteError(f"{in_a_row or skipped} update(s) in a row had a non-finite loss or gradient by "
                                 f"step {progress.step} (train.on_nonfinite = {t.on_nonfinite}); lower train.lr or "
                                 f"check the data. The last good checkpoint is untouched in "
                                 f"{self.run_dir / 'checkpoints'}")


def _progress_bar(enabled: bool, progress: Progress) -> Any:
    from tqdm import tqdm

    return tqdm(total=progress.planned_steps or None, initial=progress.step, unit="step", disable=not enabled,
                dynamic_ncols=True, mininterval=1.0, desc="train")
