"""Token shards: the prepared corpus as flat arrays of token ids on disk, memory-mapped at train time.

A data dir holds, per split ("train", "val"):
  {split}_00000.bin       token ids, little-endian uint16 (vocab ≤ 65536) or uint32, EOS after every document
                          (and the tokenizer's beginning token before it, in families that use one)
  {split}_00000.docs.npy  int64 offsets where each document starts in that shard
(a cleaned corpus tokenized as tasks names them by unit: {split}_UUUUU_00000.bin, ...), and one `index.json`
naming every file with its token count, written last: a data dir without a complete
index is unfinished. Files are written under a temporary name and renamed when complete, so a crash never
leaves a half-written shard that looks finished.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nextword.errors import DataError
from nextword.files import atomic_write, replace_atomically, temporary_name, write_text_atomically

FORMAT_VERSION = 1
INDEX_NAME = "index.json"
SPLITS = ("train", "val")
# Large enough that a big corpus is a few hundred files, small enough that one shard is ≤ 400 MB.
MAX_SHARD_TOKENS = 100_000_000


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned little-endian type that holds every id of the vocabulary."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


class ShardWriter:
    """Writes one split's encoded documents, in the order given, as shard files of at most `max_tokens`.

    A document is never cut in two: one that would overflow the current shard starts the next one (a single
    document longer than `max_tokens` gets a shard of its own).
    """

    def __init__(self, data_dir: str | Path, split: str, *, vocab_size: int, eos_id: int, bos_id: int | None = None,
                 max_tokens: int = MAX_SHARD_TOKENS, name: str = "") -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        self.name = name or split  # files are NAME_00000.bin, ...: a task writing one unit names them by the unit
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.start = [] if bos_id is None else [bos_id]  # what each document begins with
        self.dtype = token_dtype(vocab_size)
        self.max_tokens = max_tokens
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self.tokens = 0
        self.bytes = 0
        self._file = None
        self._doc_starts: list[int] = []
        self._shard_tokens = 0

    def add(self, ids: Sequence[int] | np.ndarray, num_bytes: int) -> None:
        """Append one document's ids (the beginning token, where the tokenizer has one, and EOS are added here) and
        count the UTF-8 bytes of its text."""
        ids = np.asarray(ids)
        if len(ids) and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
            raise DataError(f"{self.split}: token ids {int(ids.min())}..{int(ids.max())} fall outside the "
                            f"vocabulary of {self.vocab_size}; the tokenizer does not match the shards")
        tokens = np.empty(len(self.start) + len(ids) + 1, dtype=self.dtype)
        tokens[:len(self.start)] = self.start
        tokens[len(self.start):-1] = ids
        tokens[-1] = self.eos_id
        if self._file is not None and self._shard_tokens + len(tokens) > self.max_tokens:
            self._finish_shard()
        if self._file is None:
            self._start_shard()
        self._doc_starts.append(self._shard_tokens)
        self._file.write(tokens.tobytes())
        self._shard_tokens += len(tokens)
        self.documents += 1
        self.tokens += len(tokens)
        self.bytes += num_bytes

    def close(self) -> dict[str, Any]:
        """Finish the last shard; returns this split's entry for the index."""
        if self._file is not None:
            self._finish_shard()
        return {"tokens": self.tokens, "documents": self.documents, "bytes": self.bytes, "shards": self.shards}

    def _name(self) -> str:
        return f"{self.name}_{len(self.shards):05d}"

    def _start_shard(self) -> None:
        self._file = open(temporary_name(self.data_dir / f"{self._name()}.bin"), "wb")
        self._doc_starts = []
        self._shard_tokens = 0

    def _finish_shard(self) -> None:
        name = self._name()
        self._file.close()
        self._file = None
        with atomic_write(self.data_dir / f"{name}.docs.npy") as docs_tmp, open(docs_tmp, "wb") as f:
            np.save(f, np.asarray(self._doc_starts, dtype=np.int64))
        final = self.data_dir / f"{name}.bin"
        replace_atomically(temporary_name(final), final)
        self.shards.append({"file": f"{name}.bin", "docs": f"{name}.docs.npy", "tokens": self._shard_tokens,
                            "documents": len(self._doc_starts)})


def write_index(data_dir: str | Path, *, vocab_size: int, eos_id: int, tokenizer_hash: str, bos_id: int | None = None,
                splits: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Write index.json (atomically, and after every shard it names): the mark of a finished data dir."""
    index = {"format_version": FORMAT_VERSION, "dtype": token_dtype(vocab_size).name, "vocab_size": vocab_size,
             "eos_id": eos_id, "tokenizer_hash": tokenizer_hash, "splits": splits, **extra}
    if bos_id is not None:
        index["bos_id"] = bos_id
    write_text_atomically(Path(data_dir) / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    return index


def read_index(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no shard index; the data dir is missing or unfinished, run `nextword prepare`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable shard index ({e}); delete the folder and run `nextword prepare`") from None
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: not a version-{FORMAT_VERSION} shard index; delete the folder and run `nextword prepare`")
    return index


class TokenShards:
    """One split of a prepared data dir: its shards memory-mapped, checked against the index."""

    def __init__(self, data_dir: str | Path, split: str) -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        index = read_index(self.data_dir)
        where = self.data_dir / INDEX_NAME
        if split not in index.get("splits", {}):
            raise DataError(f"{where}: no {split!r} split; run `nextword prepare` again")
        entry = index["splits"][split]
        self.vocab_size: int = index["vocab_size"]
        self.eos_id: int = index["eos_id"]
        self.tokenizer_hash: str = index["tokenizer_hash"]
        self.num_bytes: int = entry["bytes"]
        self.documents: int = entry["documents"]
        dtype = token_dtype(self.vocab_size)
        if index.get("dtype") != dtype.name:
            raise DataError(f"{where}: dtype {index.get('dtype')!r} does not fit vocab_size {self.vocab_size}")
        self.arrays: list[np.ndarray] = []
        self.doc_starts: list[np.ndarray] = []
        for shard in entry["shards"]:
            self.arrays.append(_map_tokens(_inside(self.data_dir, shard["file"], where), dtype, shard["tokens"]))
            self.doc_starts.append(_load_doc_starts(_inside(self.data_dir, shard["docs"], where), shard["documents"]))
        self.num_tokens: int = sum(len(a) for a in self.arrays)
        if self.num_tokens != entry["tokens"]:
            raise DataError(f"{where}: the {split} shards hold {self.num_tokens} tokens, the index says "
                            f"{entry['tokens']}; run `nextword prepare` again")

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.data_dir)!r}, {self.split!r}: {len(self.arrays)} shards, "
                f"{self.num_tokens:,} tokens, {self.documents:,} documents)")


def _inside(data_dir: Path, name: Any, where: Path) -> Path:
    """A file the index names, which must be a plain name in the data dir (an index is data, not a path)."""
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise DataError(f"{where}: names the shard {name!r}, which is not a file of this folder; the index is "
                        "damaged, run `nextword prepare` again")
    return data_dir / name


def _map_tokens(path: Path, dtype: np.dtype, tokens: int) -> np.ndarray:
    try:
        size = path.stat().st_size
    except OSError:
        raise DataError(f"{path}: shard file is missing; run `nextword prepare` again") from None
    if size != tokens * dtype.itemsize:
        raise DataError(f"{path}: {size} bytes, but the index says {tokens} tokens of {dtype.itemsize} bytes; "
                        "the shard is damaged, run `nextword prepare` again")
    return np.memmap(path, dtype=dtype, mode="r", shape=(tokens,))


def _load_doc_starts(path: Path, documents: int) -> np.ndarray:
    try:
        starts = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable document offsets ({e}); run `nextword prepare` again") from None
    if starts.shape != (documents,):
        raise DataError(f"{path}: {starts.shape[0] if starts.ndim else 0} document offsets, the index says "
                        f"{documents}; run `nextword prepare` again")
    return starts
