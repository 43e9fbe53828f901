"""Deduplication: exact copies (a hash of the normalised text) and near copies (MinHash LSH over word n-grams).

Near-duplicates follow FineWeb (Penedo et al. 2024, section 3.2): word 5-grams, 112 hash functions split into
14 bands of 8; two documents that agree on all 8 values of any one band are duplicates. With Jaccard similarity
s, the chance of sharing a band is 1 - (1 - s^8)^14: about 0.92 at s = 0.8 and 0.03 at s = 0.5.

The MinHash is vectorised with numpy: every shingle of a document is hashed by all 112 functions at once, as
(a·x + b) mod 2**64 keeping the high 32 bits (multiply-shift hashing, Dietzfelbinger et al. 1997), and the
minimum taken per function. Shingles are built from per-word CRC32 values, so signatures are the same in every
process and on every machine (Python's own `hash` of a string is salted per process).

`Deduplicator.check` sees documents one at a time in a fixed order and keeps the first of every group: a
document is dropped when it shares a band with any earlier document, kept or not, so each connected group of
near-duplicates keeps exactly its earliest member, whatever the number of workers that computed the signatures.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np

from nextword.data.filters import ngram_keys

NON_WORD = re.compile(r"[^\w\s]+")
DIGITS = re.compile(r"\d")
SHINGLE_BLOCK = 4096  # shingles hashed at once: bounds memory to 4096 x 112 x 8 bytes per document


def normalise(text: str) -> str:
    """Lowercase, punctuation removed, digits as 0, whitespace collapsed: copies that differ only in these match."""
    return " ".join(DIGITS.sub("0", NON_WORD.sub(" ", text.lower())).split())


def exact_key(text: str) -> bytes:
    """16 bytes naming the normalised text."""
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).digest()


class MinHasher:
    """MinHash signatures of documents and the LSH band keys made from them."""

    def __init__(self, ngram: int = 5, bands: int = 14, rows: int = 8, seed: int = 1) -> None:
        self.ngram, self.bands, self.rows = ngram, bands, rows
        rng = np.random.default_rng(seed)
        count = bands * rows
        self.a = rng.integers(1, 2**63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self.b = rng.integers(0, 2**63, size=count, dtype=np.uint64)

    def signature(self, text: str) -> np.ndarray | None:
        """uint32 [bands·rows], or None for a text with no words."""
        words = normalise(text).split()
        if not words:
            return None
        cache: dict[str, int] = {}
        ids = np.fromiter((cache.setdefault(w, zlib.crc32(w.encode("utf-8"))) for w in words),
                          dtype=np.uint64, count=len(words))
        shingles = np.unique(ngram_keys(ids, min(self.ngram, len(ids))))
        signature = np.full(self.bands * self.rows, np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(shingles), SHINGLE_BLOCK):
            block = shingles[start:start + SHINGLE_BLOCK, None]
            hashed = (block * self.a + self.b) >> np.uint64(32)
            np.minimum(signature, hashed.min(axis=0), out=signature)
        return signature.astype(np.uint32)

    def band_keys(self, signature: np.ndarray) -> list[int]:
        """One integer per band, naming that band's `rows` values."""
        rows = signature.reshape(self.bands, self.rows).astype(np.uint64)
        keys = np.zeros(self.bands, dtype=np.uint64)
        for column in range(self.rows):
            keys = keys * np.uint64(0x100000001B3) + rows[:, column]
        return keys.tolist()


@dataclass
class Verdict:
    keep: bool
    reason: str = ""  # "exact" or "near" when dropped
    duplicate_of: str = ""  # the id of the earlier document it matched


class Deduplicator:
    """Keeps the first of each group of exact or near copies, seeing documents in a fixed order."""

    def __init__(self, hasher: MinHasher | None, exact: bool = True) -> None:
        self.hasher = hasher
        self.exact = exact
        self._exact_seen: dict[bytes, str] = {}
        self._buckets: list[dict[int, str]] = [dict() for _ in range(hasher.bands)] if hasher else []

    def check(self, doc_id: str, exact_hash: bytes, signature: np.ndarray | None) -> Verdict:
        # A key already seen means an earlier document; ids are not compared, as records from different files
        # may share one (JSONL ids 0, 1, 2, ... in every file).
        if self.exact:
            if exact_hash in self._exact_seen:
                return Verdict(False, "exact", self._exact_seen[exact_hash])
            self._exact_seen[exact_hash] = doc_id
        if self.hasher is None or signature is None:
            return Verdict(True)
        match = None
        for bucket, key in zip(self._buckets, self.hasher.band_keys(signature)):
            if key not in bucket:
                bucket[key] = doc_id
            elif match is None:
                match = bucket[key]
        return Verdict(False, "near", match) if match is not None else Verdict(True)
