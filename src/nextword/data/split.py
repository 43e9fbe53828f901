"""Which text is held out for validation: whole documents, or the tail of each document.

With many documents, each goes whole to "val" or "train" by a hash of its id: stable whatever order the documents
come in, and no document is in both. With one document (a single `input.txt`, one big JSONL record) or a few large
ones, a hash puts all of the text on one side, so the validation split is empty or the training split is. Then the
last `val_fraction` of every document, cut at a paragraph break (else a line break) near that point, is held out
instead: the model never trains on the text it is scored on.

Which of the two rules a corpus gets is decided on the sample read before the tokenizer is trained: whole
documents when the ones the hash sends to "val" hold between half and twice `val_fraction` of its bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

BY_DOCUMENTS = "documents"
BY_TAILS = "tails"
PARAGRAPH_BREAKS = ("\n\n", "\n")  # preferred where the text is cut, in this order


def split_of(doc_id: str, val_fraction: float) -> str:
    """"val" for a stable `val_fraction` of document ids, "train" for the rest, whatever order they come in."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "val" if position < val_fraction else "train"


def choose_rule(sample: Iterable[tuple[str, int]], val_fraction: float) -> str:
    """BY_DOCUMENTS when whole documents of `sample` ((id, bytes) pairs) would give "val" about its share of the
    bytes (half to twice `val_fraction`), else BY_TAILS."""
    total = held_out = 0
    for doc_id, size in sample:
        total += size
        held_out += size if split_of(doc_id, val_fraction) == "val" else 0
    share = held_out / total if total else 0.0
    return BY_DOCUMENTS if val_fraction / 2 <= share <= 2 * val_fraction else BY_TAILS


def cut_tail(text: str, fraction: float) -> tuple[str, str]:
    """`text` as (head, tail), the tail about its last `fraction`: cut just after the paragraph break nearest to that
    point (else the nearest line break) within half the tail's length of it, else exactly there."""
    target = len(text) - round(fraction * len(text))
    slack = (len(text) - target) // 2
    for mark in PARAGRAPH_BREAKS:
        before = text.rfind(mark, max(0, target - slack), target)
        after = text.find(mark, target, target + slack)
        found = [i for i in (before, after) if i >= 0]
        if found:
            at = min(found, key=lambda i: abs(i - target)) + len(mark)
            return text[:at], text[at:]
    return text[:target], text[target:]


def split_pieces(documents: Iterable[tuple[str, str, str]], rule: str,
                 val_fraction: float) -> Iterator[tuple[str, str, str]]:
    """(split, text, source) for each (id, text, source) document: the whole of it by its id's hash, or, by tails,
    its head for "train" and its tail for "val"."""
    for doc_id, text, source in documents:
        if rule == BY_DOCUMENTS:
            yield split_of(doc_id, val_fraction), text, source
            continue
        head, tail = cut_tail(text, val_fraction)
        if head:
            yield "train", head, source
        if tail:
            yield "val", tail, source
