"""Decontamination: a training document that shares a 13-gram of words with an evaluation text is dropped.

GPT-3 (Brown et al. 2020, appendix C) measured overlap with its benchmarks by 13-grams of normalised words and
removed what overlapped from its training data. Here words are normalised as that paper did (lowercased, with
punctuation and whitespace ignored): a word is a run of letters, digits or underscores. Each 13-gram is hashed to
64 bits (a word hashed once by BLAKE2b, the n-gram from its 13 words' hashes), so the set of an evaluation's
n-grams is a sorted array, the same in every process, and its hash is part of the prepare cache key.

An evaluation entry is a file or a folder; a folder counts as one text, made of every file under it (hidden ones
left out), read as UTF-8.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from nextword.data.documents import Document
from nextword.errors import DataError

NGRAM = 13  # GPT-3's n (Brown et al. 2020, appendix C)
WORD = re.compile(r"\w+")
# Multiplier of the polynomial hash that combines 13 word hashes (odd, so multiplying by it loses no bits mod 2^64).
MIX = np.uint64(0x9E3779B97F4A7C15)


def eval_files(entry: str | Path) -> list[Path]:
    """The files an evaluation entry names: the file itself, or every file under a folder, sorted."""
    path = Path(entry)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if files:
            return files
        raise DataError(f"{path}: an evaluation folder with no files in it; put the held-out texts there")
    raise DataError(f"{path}: no such evaluation file or folder; fix the path (relative to the current folder)")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as UTF-8 text ({e}); evaluation texts must be UTF-8 files") from None


def normalised_words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@lru_cache(maxsize=1 << 20)
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def ngram_hashes(text: str, n: int = NGRAM) -> np.ndarray:
    """The 64-bit hashes of the text's n-grams of normalised words, in order (none for fewer than n words)."""
    words = normalised_words(text)
    word_hashes = np.fromiter(map(_word_hash, words), dtype=np.uint64, count=len(words))
    count = len(words) - n + 1
    if count < 1:
        return np.empty(0, dtype=np.uint64)
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):  # the hash wraps around 2^64 by design
        for k in range(n):
            hashes = hashes * MIX + word_hashes[k: k + count]
    return hashes


@dataclass(frozen=True)
class EvalNgrams:
    """The 13-grams of the evaluation texts, as a sorted array of unique hashes."""

    entries: tuple[str, ...]
    hashes: np.ndarray = field(repr=False)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> EvalNgrams:
        entries = tuple(entries)
        parts = [ngram_hashes(read_text(path)) for entry in entries for path in eval_files(entry)]
        hashes = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)
        return cls(entries, hashes)

    def fingerprint(self) -> str:
        """A short hash of the n-gram set itself: another evaluation text, or an edited one, changes it."""
        return hashlib.sha256(self.hashes.tobytes()).hexdigest()[:16]

    def hits(self, text: str) -> bool:
        """Whether the text shares any n-gram with an evaluation text."""
        if not len(self.hashes):
            return False
        ngrams = ngram_hashes(text)
        places = np.minimum(np.searchsorted(self.hashes, ngrams), len(self.hashes) - 1)
        return bool(np.any(self.hashes[places] == ngrams))


@dataclass
class Decontamination:
    """The decontamination step: documents that hit an evaluation n-gram are dropped, and counted."""

    ngrams: EvalNgrams
    checked: int = 0
    dropped: int = 0
    bytes_dropped: int = 0

    def keeps(self, text: str) -> bool:
        self.checked += 1
        if self.ngrams.hits(text):
            self.dropped += 1
            self.bytes_dropped += len(text.encode("utf-8"))
            return False
        return True

    def filter(self, documents: Iterable[Document]) -> Iterator[Document]:
        return (document for document in documents if self.keeps(document.text))

    def counts(self) -> dict[str, int]:
        return {"documents_checked": self.checked, "documents_dropped": self.dropped,
                "bytes_dropped": self.bytes_dropped}

    def add(self, counts: dict[str, int]) -> None:
        """Take in the counts of tasks that ran the step elsewhere."""
        self.checked += counts.get("documents_checked", 0)
        self.dropped += counts.get("documents_dropped", 0)
        self.bytes_dropped += counts.get("bytes_dropped", 0)

    def summary(self) -> dict[str, object]:
        """What the data dir's index records."""
        return {"eval": list(self.ngrams.entries), "ngram": NGRAM, "eval_ngrams": int(len(self.ngrams.hashes)),
                "fingerprint": self.ngrams.fingerprint(), **self.counts()}
