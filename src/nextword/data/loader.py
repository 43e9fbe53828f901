"""Batches of (x, y) for next-token prediction: windows of context + 1 tokens cut from the shards.

The split is cut into window slots: slot i of a shard covers tokens [i·T, i·T + T + 1), so the inputs of
neighbouring slots do not overlap and, in one epoch, every token is predicted once. Windows never cross a shard's
end. x is a window's first T tokens and y its last T: y[t] is the token that follows x[t].

All ranks walk one global stream of slots: each epoch a permutation seeded by (seed + epoch), or the slots in
order when `shuffle=False`. A batch takes the next batch_size × world_size slots of the stream and rank r gets
every world_size-th of them, starting at r, so ranks never share a window. The loader's state is where the
stream stands, (epoch, cursor in global windows), so it resumes exactly, and at another world size too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nextword.data.shards import TokenShards
from nextword.errors import DataError


class TokenLoader:
    def __init__(self, shards: TokenShards, batch_size: int, context: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 device: str | torch.device = "cpu") -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.shards = shards
        self.batch_size = batch_size
        self.context = context
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.device = torch.device(device)
        slots_per_shard = np.array([max(len(a) - 1, 0) // context for a in shards.arrays], dtype=np.int64)
        self.num_windows = int(slots_per_shard.sum())
        if self.num_windows == 0:
            raise DataError(
                f"{shards.data_dir}: the {shards.split} split has {shards.num_tokens:,} tokens, but one window "
                f"needs context + 1 = {context + 1}; lower model.context or add data"
            )
        # first_slot[k] = global number of shard k's first slot, for mapping a global slot to (shard, offset).
        self._first_slot = np.concatenate([[0], np.cumsum(slots_per_shard)])
        self._permutations: dict[int, np.ndarray] = {}
        self.epoch = 0
        self.cursor = 0

    def next_batch(self, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) of this rank, int64 [rows, context] (rows: batch_size unless given), on the loader's
        device. The stream moves on by the rows taken, so a smaller batch skips no data; every rank must take as
        many rows as the others."""
        rows = self.batch_size if rows is None else rows
        positions = self.cursor + self.rank + self.world_size * np.arange(rows, dtype=np.int64)
        windows = self._tokens(self._slots(positions))
        self.cursor += rows * self.world_size
        self.epoch += self.cursor // self.num_windows
        self.cursor %= self.num_windows
        # Contiguous, so that callers may .view() them.
        x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))
        y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        if epoch < 0 or not 0 <= cursor < self.num_windows:
            raise DataError(f"loader state epoch={epoch}, cursor={cursor} does not fit the {self.shards.split} "
                            f"split's {self.num_windows} windows; the data changed since the checkpoint")
        self.epoch, self.cursor = epoch, cursor

    def _slots(self, positions: np.ndarray) -> np.ndarray:
        """Global slot numbers at stream positions counted from the start of the current epoch."""
        within = positions % self.num_windows
        if not self.shuffle:
            return within
        epochs = self.epoch + positions // self.num_windows
        slots = np.empty_like(positions)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            slots[chosen] = self._permutation(int(epoch))[within[chosen]]
        return slots

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            # Keep only the epochs a batch can touch: this one and the next.
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = np.random.default_rng(self.seed + epoch).permutation(self.num_windows)
        return self._permutations[epoch]

    def _tokens(self, slots: np.ndarray) -> np.ndarray:
        shard_of = np.searchsorted(self._first_slot, slots, side="right") - 1
        starts = (slots - self._first_slot[shard_of]) * self.context
        offsets = np.arange(self.context + 1, dtype=np.int64)
        windows = np.empty((len(slots), self.context + 1), dtype=np.int64)
        for k in np.unique(shard_of):
            rows = shard_of == k
            windows[rows] = self.shards.arrays[k][starts[rows, None] + offsets]
        return windows
