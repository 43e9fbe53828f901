"""Exact and MinHash near-duplicate removal: what counts as a copy, and which copy is kept."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nextword.data.dedup import (PAIR_RECORD, Deduplicator, DuplicateFinder, ExternalSort, MinHasher,
                                 document_numbers, document_place, exact_key, normalise)


def letters(i: int) -> str:
    """A distinct word without digits (normalisation maps every digit to 0)."""
    return "".join(chr(ord("a") + int(d)) for d in str(i))


def article(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    vocabulary = ["w" + letters(i) for i in range(2000)]
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def edited(text: str, fraction: float, seed: int) -> str:
    """The text with `fraction` of its words replaced."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), int(fraction * len(words))):
        words[i] = "edit" + letters(i)
    return " ".join(words)


def test_normalise_ignores_case_punctuation_digits_and_spacing():
    assert normalise("Hello,   World! 2024") == normalise("hello world 1999") == "hello world 0000"
    assert exact_key("A  b.") == exact_key("a b") != exact_key("a c")


def test_signatures_are_stable_and_estimate_similarity():
    hasher = MinHasher()
    text = article(1)
    signature = hasher.signature(text)
    assert signature.dtype == np.uint32 and signature.shape == (112,)
    assert np.array_equal(signature, MinHasher().signature(text))  # same seed, same values: no salted hashing
    near = hasher.signature(edited(text, 0.02, seed=2))
    far = hasher.signature(article(3))
    assert (signature == near).mean() > 0.7
    assert (signature == far).mean() < 0.05
    assert hasher.signature("  ...  ") is None


def test_deduplicator_keeps_the_first_of_each_group():
    hasher = MinHasher()
    original, other = article(10), article(11)
    docs = [("a", original), ("b", original.upper()), ("c", edited(original, 0.02, seed=1)), ("d", other),
            ("e", edited(original, 0.6, seed=2))]
    dedup = Deduplicator(hasher)
    verdicts = {doc_id: dedup.check(doc_id, exact_key(text), hasher.signature(text)) for doc_id, text in docs}
    assert verdicts["a"].keep and verdicts["d"].keep and verdicts["e"].keep
    assert (verdicts["b"].keep, verdicts["b"].reason, verdicts["b"].duplicate_of) == (False, "exact", "a")
    assert (verdicts["c"].keep, verdicts["c"].reason, verdicts["c"].duplicate_of) == (False, "near", "a")


def test_near_duplicates_are_caught_through_a_chain():
    """c resembles only b, b resembles a: b is a copy of a, and c of b, an earlier document though dropped."""
    hasher = MinHasher(ngram=1, bands=20, rows=1)
    words = ["w" + letters(i) for i in range(100)]
    a, b, c = " ".join(words[:60]), " ".join(words[20:80]), " ".join(words[40:100])
    dedup = Deduplicator(hasher, exact=False)
    kept = [dedup.check(name, b"", hasher.signature(text)).keep for name, text in [("a", a), ("b", b), ("c", c)]]
    assert kept == [True, False, False]


def test_exact_only_when_minhash_is_off():
    dedup = Deduplicator(None)
    assert dedup.check("x", exact_key("same"), None).keep
    assert not dedup.check("y", exact_key("same"), None).keep
    assert dedup.check("z", exact_key("different"), None).keep


def test_copies_that_share_an_id_are_still_duplicates():
    """JSONL files often number their records 0, 1, 2, ...: the same id in two files is two documents."""
    hasher = MinHasher()
    text = article(20)
    dedup = Deduplicator(hasher)
    assert dedup.check("0", exact_key(text), hasher.signature(text)).keep
    exact = dedup.check("0", exact_key(text), hasher.signature(text))
    near_text = edited(text, 0.02, seed=3)
    near = dedup.check("0", exact_key(near_text), hasher.signature(near_text))
    assert (exact.keep, exact.reason) == (False, "exact")
    assert (near.keep, near.reason) == (False, "near")


def test_a_document_like_two_different_earlier_ones_leaves_both(tmp_path):
    """a and b share no word, c resembles each: only c is dropped. (A union-find over the collisions, as datatrove's
    cluster step, would make one group of all three and keep a alone.)"""
    hasher = MinHasher(ngram=1, bands=20, rows=1)
    words = ["w" + letters(i) for i in range(100)]
    texts = [" ".join(words[:40]), " ".join(words[60:]), " ".join(words[20:80])]
    dedup = Deduplicator(hasher, exact=False)
    assert [dedup.check(str(i), b"", hasher.signature(t)).keep for i, t in enumerate(texts)] == [True, True, False]
    assert [d.doc for d in find_duplicates(hasher, False, [texts], tmp_path, chunk_records=1000)] == [2]


def find_duplicates(hasher, exact, parts, folder, chunk_records):
    """DuplicateFinder's verdicts on `parts` (lists of texts), the parts given last first: order must not matter."""
    finder = DuplicateFinder(hasher, exact, folder, chunk_records)
    for part in reversed(range(len(parts))):
        texts = parts[part]
        signatures = [None if hasher is None else hasher.signature(t) for t in texts]
        finder.add(document_numbers(part, 0, len(texts)), [exact_key(t) for t in texts],
                   [None if s is None else s.tobytes() for s in signatures])
    return list(finder.duplicates())


@pytest.mark.parametrize("chunk_records", [3, 1000])
@pytest.mark.parametrize("exact, minhash", [(True, True), (False, True), (True, False)])
def test_sorted_files_on_disk_give_the_in_memory_verdicts(tmp_path, exact, minhash, chunk_records):
    """Short texts over 12 words and 6 one-row bands collide often, in chains and across parts: every verdict of
    the stages on disk (which copy, why, of which document) is the in-memory Deduplicator's, in chunks of 3 too."""
    rng = random.Random(5)
    vocabulary = ["w" + letters(i) for i in range(12)]
    parts: list[list[str]] = []
    for _ in range(3):
        texts: list[str] = []
        for _ in range(25):
            earlier = [t for part in parts for t in part] + texts
            if earlier and rng.random() < 0.15:
                texts.append(rng.choice(earlier).upper() + "!")  # an exact copy
            else:
                texts.append(" ".join(rng.choice(vocabulary) for _ in range(rng.randint(2, 6))))
        parts.append(texts)
    hasher = MinHasher(ngram=1, bands=6, rows=1) if minhash else None
    dedup = Deduplicator(hasher, exact=exact)
    expected = []
    for part, texts in enumerate(parts):
        for row, text in enumerate(texts):
            verdict = dedup.check(f"{part}:{row}", exact_key(text), hasher.signature(text) if hasher else None)
            if not verdict.keep:
                expected.append(((part, row), verdict.reason, verdict.duplicate_of))
    found = [(document_place(d.doc), d.reason, "%d:%d" % document_place(d.first))
             for d in find_duplicates(hasher, exact, parts, tmp_path, chunk_records)]
    assert found == expected
    planted = {"exact", "near"} if exact and minhash else {"near"} if minhash else {"exact"}
    assert {reason for _, reason, _ in expected} == planted


def test_external_sort_in_tiny_chunks_gives_every_record_in_order(tmp_path):
    rng = np.random.default_rng(0)
    records = np.empty(500, dtype=PAIR_RECORD)
    for name in PAIR_RECORD.names:  # few distinct values, so that records tie on their first fields
        records[name] = rng.integers(0, 6, size=len(records))
    sorter = ExternalSort(tmp_path, PAIR_RECORD, chunk_records=7, fan_in=3)
    for start in range(0, len(records), 40):
        sorter.add(records[start:start + 40])
    blocks = list(sorter.sorted_blocks())
    assert np.concatenate(blocks).tolist() == sorted(records.tolist())
    assert max(len(block) for block in blocks) <= 7
    runs = sorted(tmp_path.glob("run_*.bin"))
    assert len(runs) <= 3 and int(runs[-1].stem.split("_")[1]) > 500 // 7  # 72 runs, merged 3 at a time
