"""A small corpus with exact and near copies planted across inputs, for the dedup's tests."""

from __future__ import annotations

import json
import random
from pathlib import Path


def planted_article(seed: int, words: int = 300) -> str:
    rng = random.Random(seed)
    return " ".join("w" + "".join(chr(97 + rng.randrange(20)) for _ in range(3)) for _ in range(words)) + "."


def near_copy(text: str, seed: int) -> str:
    """The text with 1% of its words replaced: Jaccard similarity of its 5-grams about 0.9."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), len(words) // 100):
        words[i] = "edited"
    return " ".join(words)


def planted_corpus(folder: Path) -> tuple[list[str], list[str]]:
    """Five JSONL inputs of distinct articles with copies planted across inputs (and one within an input): the
    sources, and the ids that must survive (the earliest of each group in input order)."""
    inputs = [[(f"in{i}/a{j}", planted_article(10 * i + j)) for j in range(4)] for i in range(5)]
    text = dict(doc for docs in inputs for doc in docs)
    inputs[1].append(("in1/exact_of_in0/a0", text["in0/a0"].upper().replace(".", "!")))
    inputs[3].insert(0, ("in3/exact_of_in0/a0", "  " + text["in0/a0"]))
    inputs[2].append(("in2/near_of_in0/a1", near_copy(text["in0/a1"], 1)))
    inputs[4].append(("in4/near_of_near", near_copy(near_copy(text["in0/a1"], 1), 2)))  # of a dropped copy
    inputs[2].append(("in2/near_of_in2/a0", near_copy(text["in2/a0"], 3)))  # within one input
    inputs[1].insert(0, ("in1/near_of_in4/a3", near_copy(text["in4/a3"], 4)))  # earlier than what it copies
    sources = []
    for i, docs in enumerate(inputs):
        path = folder / f"in{i}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"id": doc_id, "text": t}) + "\n" for doc_id, t in docs))
        sources.append(str(path))
    dropped = {"in1/exact_of_in0/a0", "in3/exact_of_in0/a0", "in2/near_of_in0/a1", "in4/near_of_near",
               "in2/near_of_in2/a0", "in4/a3"}
    return sources, [doc_id for docs in inputs for doc_id, _ in docs if doc_id not in dropped]
