"""Batches of (x, y) for next-token prediction: rows of context + 1 tokens cut from the shards.

x is a row's first T tokens and y its last T: y[t] is the token that follows x[t]. A row never crosses a shard's
end. How the split is cut into rows is `rows` (train.rows):

"windows" (the default): slot i of a shard covers tokens [i·T, i·T + T + 1), so the inputs of neighbouring slots do
not overlap and, in one epoch, every token is predicted once. Slots cross document boundaries anywhere, so a row
mostly starts in the middle of a document.

"documents": every row starts at a document's first token (its beginning token, in families that use one). A
document longer than a row is cut into chunks of T + 1 tokens at its first token (chunk k covers doc[k·T : k·T +
T + 1], overlapping by one token as windows do); its last chunk is shorter. Each epoch the chunks are packed into
rows by best fit (as nanochat's BOS-aligned loader does): a row takes the next chunk of the epoch's order, then
the largest chunk left that fits the space left, and so on; when none fits, the smallest chunk left fills the row
and its tail is dropped for that epoch. So a row and every chunk in it start at a document's first token or at a
multiple of T inside a long document, no padding is needed, and the tokens dropped in an epoch are a small share
(counted in `RowLayout.dropped`: 0.02% for documents of 400 tokens on average in rows of 1025).

All ranks walk one global stream of rows: each epoch's order is a permutation (of slots, or of chunks before they
are packed) seeded by (seed + epoch), or the split's own order when `shuffle=False`. A batch takes the next
batch_size × world_size rows of the stream and rank r gets every world_size-th of them, starting at r, so ranks
never share a row. The loader's state is where the stream stands, (epoch, cursor in global rows), so it resumes
exactly, and at another world size too.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from nextword.config import ROWS
from nextword.data.shards import TokenShards
from nextword.errors import DataError


class TokenLoader:
    def __init__(self, shards: TokenShards, batch_size: int, context: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True, rows: str = "windows",
                 device: str | torch.device = "cpu") -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if rows not in ROWS:
            raise ValueError(f"rows {rows!r} is not one of: {', '.join(ROWS)}")
        self.shards = shards
        self.batch_size = batch_size
        self.context = context
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.rows = rows
        self.device = torch.device(device)
        self._split = _Windows(shards, context) if rows == "windows" else _Documents(shards, context)
        self._epochs: dict[int, _EpochRows] = {}
        self.epoch = 0
        self.cursor = 0

    @property
    def num_windows(self) -> int:
        """Rows in the current epoch: the split's window slots, or this epoch's packed rows (a count that varies a
        little between epochs, with the tokens dropped)."""
        return self._rows_of(self.epoch).count

    def next_batch(self, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) of this rank, int64 [rows, context] (rows: batch_size unless given), on the loader's
        device. The stream moves on by the rows taken, so a smaller batch skips no data; every rank must take as
        many rows as the others."""
        rows = self.batch_size if rows is None else rows
        positions = self.cursor + self.rank + self.world_size * np.arange(rows, dtype=np.int64)
        windows = self._tokens_at(positions)
        self.cursor += rows * self.world_size
        while self.cursor >= self._rows_of(self.epoch).count:
            self.cursor -= self._rows_of(self.epoch).count
            self.epoch += 1
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
        if epoch < 0 or not 0 <= cursor < self._rows_of(epoch).count:
            raise DataError(f"loader state epoch={epoch}, cursor={cursor} does not fit the {self.shards.split} "
                            f"split's {self._rows_of(max(epoch, 0)).count} rows (train.rows = {self.rows}); the "
                            "data changed since the checkpoint")
        self.epoch, self.cursor = epoch, cursor

    def _tokens_at(self, positions: np.ndarray) -> np.ndarray:
        """The rows at stream positions counted from the start of the current epoch, [len(positions), T + 1]."""
        rows = np.empty((len(positions), self.context + 1), dtype=np.int64)
        epoch, epoch_start, last = self.epoch, 0, int(positions.max())
        while epoch_start <= last:
            epoch_rows = self._rows_of(epoch)
            here = (positions >= epoch_start) & (positions < epoch_start + epoch_rows.count)
            if here.any():
                rows[here] = epoch_rows.tokens(positions[here] - epoch_start)
            epoch_start += epoch_rows.count
            epoch += 1
        return rows

    def _rows_of(self, epoch: int) -> _EpochRows:
        if epoch not in self._epochs:
            # Keep only the epochs a batch can touch: this one and the next.
            self._epochs = {e: rows for e, rows in self._epochs.items() if e >= epoch - 1}
            order = np.random.default_rng(self.seed + epoch).permutation(self._split.items) if self.shuffle else None
            self._epochs[epoch] = self._split.epoch_rows(order)
        return self._epochs[epoch]


class _EpochRows(Protocol):
    """One epoch's rows: how many, and the tokens of those at given places in the epoch."""

    count: int

    def tokens(self, within: np.ndarray) -> np.ndarray: ...


class _Windows:
    """The split cut into window slots; an epoch's rows are its slots in the epoch's order."""

    def __init__(self, shards: TokenShards, context: int) -> None:
        self.shards, self.context = shards, context
        slots_per_shard = np.array([max(len(a) - 1, 0) // context for a in shards.arrays], dtype=np.int64)
        self.items = int(slots_per_shard.sum())
        if self.items == 0:
            raise DataError(
                f"{shards.data_dir}: the {shards.split} split has {shards.num_tokens:,} tokens, but one window "
                f"needs context + 1 = {context + 1}; lower model.context or add data"
            )
        # first_slot[k] = global number of shard k's first slot, for mapping a global slot to (shard, offset).
        self._first_slot = np.concatenate([[0], np.cumsum(slots_per_shard)])

    def epoch_rows(self, order: np.ndarray | None) -> _EpochRows:
        return _WindowEpoch(self, order)

    def tokens(self, slots: np.ndarray) -> np.ndarray:
        shard_of = np.searchsorted(self._first_slot, slots, side="right") - 1
        starts = (slots - self._first_slot[shard_of]) * self.context
        offsets = np.arange(self.context + 1, dtype=np.int64)
        windows = np.empty((len(slots), self.context + 1), dtype=np.int64)
        for k in np.unique(shard_of):
            rows = shard_of == k
            windows[rows] = self.shards.arrays[k][starts[rows, None] + offsets]
        return windows


class _WindowEpoch:
    def __init__(self, windows: _Windows, order: np.ndarray | None) -> None:
        self.windows, self.order, self.count = windows, order, windows.items

    def tokens(self, within: np.ndarray) -> np.ndarray:
        return self.windows.tokens(within if self.order is None else self.order[within])


class _Documents:
    """The split's documents as chunks of at most T + 1 tokens; an epoch's rows are its chunks packed by best fit."""

    def __init__(self, shards: TokenShards, context: int) -> None:
        self.shards, self.row_length = shards, context + 1
        self._shard_start = np.concatenate([[0], np.cumsum([len(a) for a in shards.arrays])]).astype(np.int64)
        per_shard = [document_chunks(_document_starts(shards, k), len(a), context)
                     for k, a in enumerate(shards.arrays)]
        # Chunk starts as positions in the split (its shards one after another): a chunk never crosses a shard.
        none = [np.empty(0, dtype=np.int64)]
        self.starts = np.concatenate(none + [starts + self._shard_start[k] for k, (starts, _) in enumerate(per_shard)])
        self.lengths = np.concatenate(none + [lengths for _, lengths in per_shard])
        self.items = len(self.starts)
        if self.items == 0 or int(self.lengths.sum()) < self.row_length:
            raise DataError(
                f"{shards.data_dir}: the {shards.split} split has {shards.documents:,} documents of "
                f"{shards.num_tokens:,} tokens, but one row needs context + 1 = {self.row_length}; lower "
                "model.context or add data")

    def epoch_rows(self, order: np.ndarray | None) -> _EpochRows:
        chunks = np.arange(self.items, dtype=np.int64) if order is None else order
        return _PackedEpoch(self, pack_rows(self.lengths, chunks, self.row_length))

    def tokens(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The tokens of segments (split positions and lengths), one after another."""
        total = int(lengths.sum())
        ends = np.cumsum(lengths)
        positions = np.repeat(starts - (ends - lengths), lengths) + np.arange(total, dtype=np.int64)
        shard_of = np.searchsorted(self._shard_start, positions, side="right") - 1
        tokens = np.empty(total, dtype=np.int64)
        for k in np.unique(shard_of):
            here = shard_of == k
            tokens[here] = self.shards.arrays[k][positions[here] - self._shard_start[k]]
        return tokens


class _PackedEpoch:
    def __init__(self, documents: _Documents, layout: RowLayout) -> None:
        self.documents, self.layout, self.count = documents, layout, len(layout.first) - 1

    def tokens(self, within: np.ndarray) -> np.ndarray:
        first, chunks = self.layout.first, self.layout.chunks
        per_row = first[within + 1] - first[within]
        ends = np.cumsum(per_row)
        segments = np.repeat(first[within] - (ends - per_row), per_row) + np.arange(int(ends[-1]), dtype=np.int64)
        starts = self.documents.starts[chunks[segments]]
        tokens = self.documents.tokens(starts, self.layout.lengths[segments])
        return tokens.reshape(len(within), self.documents.row_length)


def _document_starts(shards: TokenShards, k: int) -> np.ndarray:
    """Where shard k's documents begin, as the shards record them: the writer puts each document's tokens
    (beginning token, ids, end-of-document token) one after another and notes where each begins."""
    starts = np.asarray(shards.doc_starts[k], dtype=np.int64)
    length = len(shards.arrays[k])
    if len(starts) and (starts[0] != 0 or starts[-1] >= length or np.any(np.diff(starts) <= 0)):
        raise DataError(f"{shards.data_dir}: shard {k} of the {shards.split} split has document offsets that do not "
                        "fit its tokens; run `nextword prepare` again")
    return starts


def document_chunks(doc_starts: np.ndarray, num_tokens: int, context: int) -> tuple[np.ndarray, np.ndarray]:
    """The chunks of one shard's documents, as (starts, lengths): chunk k of a document covers doc[k·T : k·T + T +
    1], as many as it takes for every token after the first to be a target once (one, for a one-token document)."""
    doc_lengths = np.diff(np.append(doc_starts, num_tokens))
    per_doc = np.maximum(1, -(-(doc_lengths - 1) // context))  # ceil((n - 1) / T), at least 1
    ends = np.cumsum(per_doc)
    index_in_doc = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) - np.repeat(ends - per_doc, per_doc)
    offsets = index_in_doc * context
    starts = np.repeat(doc_starts, per_doc) + offsets
    lengths = np.minimum(context + 1, np.repeat(doc_lengths, per_doc) - offsets)
    return starts, lengths


@dataclass
class RowLayout:
    """An epoch's rows as runs of chunks: row i is chunks[first[i]:first[i + 1]], of which each keeps its first
    lengths[j] tokens (all of them but for the chunk that fills the row's end)."""

    chunks: np.ndarray  # int64 chunk numbers
    lengths: np.ndarray  # int64 tokens kept of each
    first: np.ndarray  # int64 [rows + 1]
    dropped: int  # tokens of chunks left out: cropped tails, and the chunks of a last row too short to fill


def pack_rows(lengths: np.ndarray, order: np.ndarray, row_length: int) -> RowLayout:
    """Pack the chunks of `lengths` (each at most row_length) into rows of exactly `row_length` tokens by best fit.

    A row starts with the next unused chunk of `order`, then takes the largest unused chunk that fits the space
    left (the first in `order` among those as large), until none fits; the smallest unused chunk then fills the
    rest and its tail is dropped. (Filling with the next chunk in order instead drops ten times as many tokens: it
    is often a long document's whole chunk.) One pass over the chunks, a few Python steps each: 0.3 s for 100k
    chunks, 3 s for a million, on a busy 2-core machine, once per epoch."""
    length_of = lengths.tolist()
    queue = order.tolist()
    # Unused chunks by length, each in `order`: by_length[bucket_next[L]:bucket_end[L]] holds those of length L
    # (some already used as a row's start or end, skipped when met). `sizes` are the lengths still held, sorted.
    by_length_arr = order[np.argsort(lengths[order], kind="stable")]
    sizes_arr, first_at, held = np.unique(lengths[by_length_arr], return_index=True, return_counts=True)
    by_length = by_length_arr.tolist()
    bucket_next = dict(zip(sizes_arr.tolist(), first_at.tolist()))
    bucket_end = dict(zip(sizes_arr.tolist(), (first_at + held).tolist()))
    sizes = sizes_arr.tolist()
    used = bytearray(len(length_of))

    def take(size: int) -> int | None:
        """The first unused chunk of this length, marked used; None when none is left."""
        at, end = bucket_next[size], bucket_end[size]
        while at < end and used[by_length[at]]:
            at += 1
        bucket_next[size] = min(at + 1, end)
        if at == end:
            return None
        used[by_length[at]] = 1
        return by_length[at]

    def largest_fitting(space: int) -> int | None:
        i = bisect.bisect_right(sizes, space) - 1
        while i >= 0:
            chunk = take(sizes[i])
            if chunk is not None:
                return chunk
            del sizes[i]
            i -= 1
        return None

    def smallest() -> int | None:
        while sizes:
            chunk = take(sizes[0])
            if chunk is not None:
                return chunk
            del sizes[0]
        return None

    chunks: list[int] = []
    kept: list[int] = []
    first = [0]
    dropped = 0
    next_in_order = 0
    while True:
        while next_in_order < len(queue) and used[queue[next_in_order]]:
            next_in_order += 1
        if next_in_order == len(queue):
            break
        start = queue[next_in_order]
        used[start] = 1
        row, space = [(start, length_of[start])], row_length - length_of[start]
        while space > 0:
            chunk = largest_fitting(space)
            if chunk is None:
                chunk = smallest()  # none fits: it fills the row, and loses the least of its tail
            if chunk is None:
                break
            kept_here = min(length_of[chunk], space)
            dropped += length_of[chunk] - kept_here
            row.append((chunk, kept_here))
            space -= kept_here
        if space > 0:  # the chunks ran out before the row was full
            dropped += sum(kept_here for _, kept_here in row)
            break
        chunks.extend(chunk for chunk, _ in row)
        kept.extend(kept_here for _, kept_here in row)
        first.append(len(chunks))
    return RowLayout(np.array(chunks, dtype=np.int64), np.array(kept, dtype=np.int64),
                     np.array(first, dtype=np.int64), dropped)
