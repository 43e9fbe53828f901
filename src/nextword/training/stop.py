"""A request to stop: SIGINT or SIGTERM asks the run to save a checkpoint and stop at the end of the current step."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

from nextword.training.distributed import World


class StopRequest:
    """The signal handler for SIGINT and SIGTERM, and the record of the first one caught."""

    def __init__(self, world: World = World()) -> None:
        self.world = world
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if signum == self.signal == signal.SIGINT:  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        # Any other second signal repeats the first while its save is under way: torchrun passes a Ctrl-C on as
        # SIGTERM, and a scheduler that ends a job (SLURM's scancel) signals every process of it, which torchrun
        # then passes on again.
        if self.signal is not None:
            return
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint, then stopping…", file=sys.stderr)

    def agreed(self, at_log_step: bool) -> bool:
        """Whether to save and stop now. Ranks must stop at the same step, so over several processes a signal any
        rank caught is agreed on at log steps only (that exchange is a host synchronisation)."""
        if self.world.size == 1:
            return self.signal is not None
        return at_log_step and self.world.any(self.signal is not None)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in previous:
                signal.signal(s, self)
        except ValueError:  # not the main thread: no handlers, Ctrl-C behaves as usual
            pass
        try:
            yield self
        finally:
            with contextlib.suppress(ValueError):
                for s, handler in previous.items():
                    signal.signal(s, handler)
