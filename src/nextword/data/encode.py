"""Tokenize a cleaned corpus as tasks: each task encodes its units into its own token shards, then one small step
writes the index. No task reads another's tokens.

A unit is one block of a cleaned shard (clean.BLOCK_ROWS rows, whose bytes stats.json records), so the units, and
the token shards named after them ({split}_UUUUU_00000.bin), are the same whatever the number of tasks: 1, 3 or
a Ray or Slurm cluster's many give the same files. The tokenizer is trained once, before the tasks, on the sample
that prepare reads first.

Mixing by weight works across tasks because the cut is decided before they start, from the recorded bytes: each
source gives its weight's share, until the source with the least text for its weight runs out (as
`clean.mix_documents` does one document at a time), so each unit knows how many of its bytes to take.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nextword.data.clean import BLOCK_ROWS, MixReport, plan_inputs, say, shard_rows
from nextword.data.decontaminate import Decontamination, EvalNgrams
from nextword.data.remote import file_name
from nextword.data.shards import SPLITS, ShardWriter, token_dtype
from nextword.data.split import split_pieces
from nextword.data.store import open_folder, open_parquet
from nextword.data.tokenizer import Tokenizer
from nextword.errors import DataError
from nextword.files import write_text_atomically

UNITS_DIR = "units"  # in the data dir: each finished unit's counts, UUUUU.json
ENCODE_BATCH_DOCS = 1024  # documents encoded in one batch call


@dataclass(frozen=True)
class Unit:
    shard: str  # a cleaned shard's path or URL
    first_row: int
    stop_row: int
    source: str  # the data.sources entry it comes from ("" when the corpus is not mixed)
    take_bytes: int | None  # of its text, the bytes the mix takes (documents are taken while fewer were); None: all


def plan_units(cleaned: dict[str, Any], clean_dir: str | Path, sources: list[str],
               weights: list[float]) -> tuple[list[Unit], str]:
    """The units of a cleaned corpus in order, with each one's share of a weighted mix; and the source whose end
    ends the mix ("" when not mixed)."""
    blocks_by_source = _blocks_by_source(cleaned, clean_dir, sources if weights else [])
    available = {s: sum(b for *_, b in blocks) for s, blocks in blocks_by_source.items()}
    mix = dict(zip(sources, weights))
    take = _mix_takes(available, mix) if weights else {}
    units = []
    for source, blocks in blocks_by_source.items():
        left = take.get(source)
        for shard, first, stop, size in blocks:
            if left is not None and left <= 0:
                break
            units.append(Unit(shard, first, stop, source if weights else "",
                              None if left is None or left >= size else left))
            left = None if left is None else left - size
    ends = min((s for s, w in mix.items() if w > 0), key=lambda s: (available[s] / mix[s], s)) if weights else ""
    return units, ends


def _blocks_by_source(cleaned: dict[str, Any], clean_dir: str | Path,
                      sources: list[str]) -> dict[str, list[tuple[str, int, int, int]]]:
    """Each source's blocks (shard, first row, stop row, bytes) in order; one source "" for an unmixed corpus. The
    clean step writes inputs in order, and plan_inputs splits a source the same way alone as among the others."""
    inputs, folder = cleaned["inputs"], open_folder(clean_dir, write=False)
    counts = [len(plan_inputs([s])) for s in sources] if sources else [len(inputs)]
    by_source, first = {}, 0
    for source, count in zip(sources or [""], counts):
        blocks = by_source.setdefault(source, [])
        for part in inputs[first:first + count]:
            shards = [folder.location(shard) for shard in part["shards"]]
            for shard, sizes in zip(shards, part.get("block_bytes") or _measure(shards)):
                rows = open_parquet(shard).metadata.num_rows
                blocks += [(shard, b * BLOCK_ROWS, min((b + 1) * BLOCK_ROWS, rows), size)
                           for b, size in enumerate(sizes)]
        first += count
    return by_source


def _measure(shards: list[str]) -> list[list[int]]:
    """Block bytes of shards cleaned before stats.json recorded them: read from the text."""
    sizes = []
    for shard in shards:
        texts = open_parquet(shard).read(columns=["text"]).column("text").to_pylist()
        sizes.append([sum(len(t.encode("utf-8")) for t in texts[i:i + BLOCK_ROWS])
                      for i in range(0, len(texts), BLOCK_ROWS)])
    return sizes


def _mix_takes(available: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """The bytes each source gives: its weight's share of a total that the first source to run out bounds."""
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise DataError("mix: weights must be >= 0 with at least one above 0")
    total = min(available[s] / w for s, w in weights.items() if w > 0) * sum(weights.values())
    return {s: min(available[s], round(total * w / sum(weights.values()))) for s, w in weights.items()}


@dataclass
class EncodeUnits:
    """The encode stage: task `rank` of `world_size` encodes units rank, rank + world_size, ..."""

    units: list[Unit]
    data_dir: str
    tokenizer_json: str
    eos_token: str
    bos_token: str | None
    held_out: str
    val_fraction: float
    eval_ngrams: EvalNgrams | None = None  # with data.decontaminate: documents that overlap these are dropped
    name: str = "encode"

    def run_task(self, rank: int, world_size: int) -> dict[str, int]:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per task: tasks are the parallelism
        tokenizer = Tokenizer.from_json(self.tokenizer_json, eos_token=self.eos_token, bos_token=self.bos_token)
        counts: Counter = Counter()
        for number in range(rank, len(self.units), world_size):
            if not unit_file(self.data_dir, number).exists():
                done = self.encode(number, tokenizer)
                counts.update(units=1, documents=done["documents"], bytes=done["bytes"])
        return dict(counts)

    def encode(self, number: int, tokenizer: Tokenizer) -> dict[str, Any]:
        unit = self.units[number]
        writers = {split: ShardWriter(self.data_dir, split, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id,
                                      bos_id=tokenizer.bos_id, name=f"{split}_{number:05d}") for split in SPLITS}
        decontamination = Decontamination(self.eval_ngrams) if self.eval_ngrams is not None else None
        documents = _taken_rows(unit, decontamination)
        dtype = token_dtype(tokenizer.vocab_size)
        tokens = 0
        for start in range(0, len(documents), ENCODE_BATCH_DOCS):
            pieces = list(split_pieces(documents[start:start + ENCODE_BATCH_DOCS], self.held_out, self.val_fraction))
            for (split, text, _), ids in zip(pieces, tokenizer.encode_batch([text for _, text, _ in pieces])):
                writers[split].add(np.asarray(ids, dtype=dtype), len(text.encode("utf-8")))
                tokens += len(tokenizer.document_start) + len(ids) + 1
        done = {"source": unit.source, "documents": len(documents),
                "bytes": sum(len(text.encode("utf-8")) for _, text, _ in documents), "tokens": tokens,
                "splits": {split: writer.close() for split, writer in writers.items()}}
        if decontamination is not None:
            done["decontamination"] = decontamination.counts()
        write_text_atomically(unit_file(self.data_dir, number), json.dumps(done))  # last: the unit is done
        say(f"encode: unit {number} ({file_name(unit.shard)} rows {unit.first_row}-{unit.stop_row - 1}): "
            f"{len(documents)} documents, {tokens:,} tokens")
        return done


def _taken_rows(unit: Unit, decontamination: Decontamination | None = None) -> list[tuple[str, str, str]]:
    """(id, text, source) of the unit's rows, while the mix's share of its bytes is not yet taken; rows that overlap
    an evaluation text are dropped first, so the mix takes its share from the rows that are kept."""
    table = shard_rows(unit.shard, unit.first_row, unit.stop_row, columns=["id", "text"])
    rows, taken = [], 0
    for doc_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist()):
        if unit.take_bytes is not None and taken >= unit.take_bytes:
            break
        if decontamination is not None and not decontamination.keeps(text):
            continue
        rows.append((doc_id, text, unit.source))
        taken += len(text.encode("utf-8"))
    return rows


def unit_file(data_dir: str | Path, number: int) -> Path:
    return Path(data_dir) / UNITS_DIR / f"{number:05d}.json"


def gather_units(data_dir: Path, count: int, weights: dict[str, float],
                 ended_by: str) -> tuple[dict, Counter, MixReport | None, Counter]:
    """Every unit's counts in order: the index's splits, the tokens from each source, what the mix took, and what
    decontamination checked and dropped."""
    splits = {split: {"tokens": 0, "documents": 0, "bytes": 0, "shards": []} for split in SPLITS}
    tokens_by_source: Counter = Counter()
    mix = MixReport(dict(weights)) if weights else None
    decontaminated: Counter = Counter()
    for number in range(count):
        done = json.loads(unit_file(data_dir, number).read_text(encoding="utf-8"))
        decontaminated.update(done.get("decontamination", {}))
        for split, entry in done["splits"].items():
            for key in ("tokens", "documents", "bytes"):
                splits[split][key] += entry[key]
            splits[split]["shards"] += entry["shards"]
        tokens_by_source[done["source"]] += done["tokens"]
        if mix is not None:
            mix.taken[done["source"]] += done["bytes"]
            mix.docs[done["source"]] += done["documents"]
    if mix is not None:
        mix.exhausted = ended_by
    return splits, tokens_by_source, mix, decontaminated
