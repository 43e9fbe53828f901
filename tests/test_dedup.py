"""Exact and MinHash near-duplicate removal: what counts as a copy, and which copy is kept."""

from __future__ import annotations

import random

import numpy as np

from nextword.data.dedup import Deduplicator, MinHasher, exact_key, normalise


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
    """c resembles only b, b resembles a: the group keeps a alone, as a union-find over matches would."""
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
