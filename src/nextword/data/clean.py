"""The clean step: raw sources → extracted text → quality rules → dedup → cleaned parquet shards, with a report.

It runs as four stages of tasks on datatrove's executors (`engine.py`: this machine, Slurm or Ray):

    clean    inputs → parts      read, extract, filter each input; its kept documents, and its dedup keys sorted
    dedup    keys → pairs        task b of B takes every input's keys in range b of B: which documents copy an
                                 earlier one (`dedup.py`'s stages, in bounded memory)
    write    parts → shards      each input's documents with its duplicates dropped, as docs_IIIII_SSSS.parquet
    summary  → stats, report     the counts of every task summed: stats.json, report.md

An input is one web archive file, one code repository or one text source. Documents are numbered in input order
and the earliest copy survives, so the output is the same whatever the number of tasks, workers or executor.
Every file is written under a temporary name and renamed when whole, and a task skips what is already there, so
a job that died is run again with the same command.

Output folder: `docs_*.parquet` (id, text, source, meta as JSON; in input order), `stats.json` (written last),
`report.md`, `manifest.json` (the inputs and settings), `parts/` (each input's documents and counts), `logs/`. It
may be a local path or an fsspec URL (s3://, hf://, file://, memory://): see store.py. A task's scratch (its
sorted runs) is never shared: beside a local output, or in the system's temporary folder.

Source specs: a WARC/WET file, a folder holding WARC/WET files (each file an input), `code:PATH` for a code
repository, and anything `read_sources` reads (text folders, .txt/.md, JSONL, parquet) for books and articles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nextword.config import CleanConfig, EngineConfig
from nextword.data.dedup import (BUCKET_RECORD, PAIR_RECORD, SORT_CHUNK_RECORDS, ROW_BITS, ExternalSort, MinHasher,
                                 bucket_pairs, document_number, document_numbers, document_place, exact_key,
                                 key_records, lowest_ranked_pairs)
from nextword.data.documents import Document, SkipLog
from nextword.data.filters import EXAMPLE_CHARS, FilterChain, RuleStats
from nextword.data.listing import Listing, count_links_outside, walk_files
from nextword.data.remote import is_url, remote_files
from nextword.data.sources import code_repository, read_sources
from nextword.data.store import Folder, open_folder, open_parquet, sorted_range, write_sorted
from nextword.errors import DataError

PART_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                         ("meta", pa.string()), ("exact", pa.binary(16)), ("minhash", pa.binary())])
DOC_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("meta", pa.string())])
DEFAULT_TEXT_EXTENSIONS = [".txt", ".md", ".rst"]
READ_BATCH_DOCS = 2048  # rows of a part read at once
ROW_GROUP_DOCS = 1024  # documents written at once: parts and shards are written a row group at a time
KEY_SPACE = 1 << 64  # the dedup keys' `high` values, split into one range per dedup task
# A shard's rows are counted in blocks of this many (their UTF-8 bytes, in stats.json): the units that prepare
# tokenizes as tasks, and the bytes that let a weighted mix be cut without reading the text first.
BLOCK_ROWS = 8192
# The layout of the output folder: 2 is per-input shards with their block bytes (1: one run of docs_NNNNN files).
CLEAN_FORMAT = 2


@dataclass(frozen=True)
class Input:
    """One unit of parallel work: a web archive file, a code repository, or one text source."""

    spec: str  # as the user named it
    kind: str  # "web" | "code" | "text", or "outside link": a link in a folder that leads out of it, not read
    path: str


def plan_inputs(sources: list[str]) -> list[Input]:
    """The inputs the sources name, in a fixed order; a folder of web archives becomes one input per file, a
    remote folder (a URL) too, each input's path then the file's URL."""
    from nextword.data.web import is_web_file  # here, so mixing and reading cleaned output need no web extra

    inputs: list[Input] = []
    for spec in sources:
        repository = code_repository(spec)
        if repository is not None:
            inputs.append(Input(spec, "code", str(repository)))
            continue
        if is_url(spec):
            web_urls = [file.url for file in remote_files(spec) if is_web_file(file.url)]
            if is_web_file(spec) or not web_urls:
                inputs.append(Input(spec, "web" if is_web_file(spec) else "text", spec))
            else:
                inputs.extend(Input(url, "web", url) for url in web_urls)
            continue
        path = Path(spec)
        if not path.exists():
            raise DataError(f"{spec}: no such file or folder; check the path given to --source")
        web_files = walk_files(path, keep_file=is_web_file) if path.is_dir() else Listing()
        if is_web_file(path):
            inputs.append(Input(spec, "web", str(path)))
        elif web_files.files:
            inputs.extend(Input(str(p), "web", str(p)) for p in web_files.files)
            inputs.extend(Input(str(p), "outside link", str(p)) for p in web_files.links_outside)
        else:  # read_sources lists the folder, and counts the links that lead out of it
            inputs.append(Input(spec, "text", str(path)))
    return inputs


def clean(sources: list[str], out_dir: str | Path, cfg: CleanConfig, *, engine: EngineConfig | None = None,
          extensions: list[str] | None = None, doc_separator: str = "", log: Callable[[str], None] = print,
          sort_chunk_records: int = SORT_CHUNK_RECORDS) -> dict | None:
    """Clean the sources into out_dir under engine's executor; the stats, or None when the stages were submitted to
    Slurm. A finished folder (stats.json written) made from the same sources and settings is returned as it is.
    `doc_separator` cuts text files into documents (data.doc_separator); `sort_chunk_records` bounds the dedup's
    memory: records sorted at once."""
    from nextword.data.engine import Stage, run_stages  # here: datatrove is needed only to run the stages

    cfg.validate()
    engine = (engine or EngineConfig()).validate()
    out = open_folder(out_dir)
    inputs = plan_inputs(sources)
    _write_manifest(out, inputs, cfg, extensions or DEFAULT_TEXT_EXTENSIONS, doc_separator)
    if out.exists("stats.json"):
        return json.loads(out.read_text("stats.json"))
    job = CleanJob(out, inputs, cfg, extensions or DEFAULT_TEXT_EXTENSIONS, doc_separator, sort_chunk_records)
    done = sum(map(job.input_done, range(len(inputs))))
    if done:
        log(f"clean: {done} input(s) already done, skipped")
    tasks = engine.tasks or _default_tasks(engine, len(inputs))
    stages = [Stage(CleanInputs(job), min(tasks, len(inputs))), Stage(FindDuplicates(job), tasks),
              Stage(WriteKept(job, tasks), min(tasks, len(inputs))), Stage(Summarise(job), 1)]
    if not run_stages(stages, engine, engine.logs or out.location("logs"), log):
        return None
    return json.loads(out.read_text("stats.json"))


def _default_tasks(engine: EngineConfig, inputs: int) -> int:
    if engine.executor == "local":
        return engine.workers or len(os.sched_getaffinity(0))
    return max(inputs, 1)


def _write_manifest(out: Folder, inputs: list[Input], cfg: CleanConfig, extensions: list[str],
                    doc_separator: str) -> None:
    manifest = {"format": CLEAN_FORMAT, "inputs": [dataclasses.asdict(i) for i in inputs],
                "clean": dataclasses.asdict(cfg), "extensions": extensions}
    if doc_separator:  # named only when set, so a folder cleaned before the setting existed still matches
        manifest["doc_separator"] = doc_separator
    if out.exists("manifest.json"):
        if json.loads(out.read_text("manifest.json")) != manifest:
            raise DataError(f"{out.location('manifest.json')}: this folder was made from other sources or settings; "
                            "use a new --out folder or delete this one")
        return
    out.make("--out")
    out.write_text("manifest.json", json.dumps(manifest, indent=1))


def say(line: str) -> None:
    """A task's progress line, on stderr (tasks run in other processes, so no callback reaches back)."""
    print(line, file=sys.stderr, flush=True)


@dataclass
class CleanJob:
    """What every stage knows: where the output goes, the inputs and the settings; and the names of its files."""

    out: Folder
    inputs: list[Input]
    cfg: CleanConfig
    extensions: list[str]
    doc_separator: str = ""
    sort_chunk_records: int = SORT_CHUNK_RECORDS

    def part(self, index: int, suffix: str) -> str:
        return f"parts/{index:05d}{suffix}"

    def input_done(self, index: int) -> bool:
        """Stage one has finished this input: its counts are written last, after its part and its keys."""
        return self.out.exists(self.part(index, ".json")) and self.out.exists(self.keys(index))

    def keys(self, index: int) -> str:
        return f"dedup/keys/{index:05d}.bin"

    def pairs(self, bucket: int, buckets: int) -> str:
        return f"dedup/pairs/{bucket:05d}-of-{buckets:05d}.bin"

    @contextlib.contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A scratch folder of one task (its sorted runs), removed when the task is done with it. Scratch is not
        shared: beside a local output, and in the system's temporary folder when the output is a URL."""
        beside = self.out.local_path("dedup")
        if beside is None:
            with tempfile.TemporaryDirectory(prefix=f"nextword-{name}-") as folder:
                yield Path(folder)
            return
        folder = beside / "work" / name
        shutil.rmtree(folder, ignore_errors=True)  # a task that died leaves its sorted runs
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def hasher(self) -> MinHasher:
        c = self.cfg
        return MinHasher(c.minhash_ngram, c.minhash_bands, c.minhash_rows, c.minhash_seed)

    def my_inputs(self, rank: int, world_size: int) -> list[int]:
        return list(range(rank, len(self.inputs), world_size))


# ---- stage 1: one input → its part and its sorted dedup keys ---------------------------------------------


@dataclass
class CleanInputs:
    job: CleanJob
    name: str = "clean"

    def run_task(self, rank: int, world_size: int) -> dict[str, int]:
        counts: Counter = Counter()
        for index in self.job.my_inputs(rank, world_size):
            if self.job.input_done(index):
                continue
            stats = _clean_input(self.job, index)
            counts.update(inputs=1, docs_read=stats["docs_read"], docs_kept=stats["docs_kept"])
            say(f"clean: {stats['input']}: {stats['docs_read']} documents read, {stats['docs_kept']} kept by the "
                "rules")
        return dict(counts)


def _documents(inp: Input, job: CleanJob, skips: SkipLog) -> Iterator[Document]:
    cfg = job.cfg
    if inp.kind == "web":
        from nextword.data.web import read_web

        return read_web(inp.path, skips, extractor=cfg.extractor)  # a local path or a URL
    if inp.kind == "code":
        from nextword.data.code import read_code_repo

        return read_code_repo(Path(inp.path), skips, max_file_bytes=cfg.code_max_file_bytes)
    if inp.kind == "outside link":
        count_links_outside([Path(inp.path)], skips)
        return iter(())
    return read_sources([inp.path], job.extensions, skips, job.doc_separator)


def _rules_for(inp: Input, cfg: CleanConfig) -> list[str]:
    return {"web": cfg.web_rules, "code": cfg.code_rules, "text": cfg.text_rules, "outside link": []}[inp.kind]


def _clean_input(job: CleanJob, index: int) -> dict[str, Any]:
    """Read, extract and filter one input; write its kept documents (parts/IIIII.parquet), their dedup keys
    sorted (dedup/keys/IIIII.bin) and its counts (parts/IIIII.json, last)."""
    with job.scratch(f"keys_{index:05d}") as scratch:
        keys = ExternalSort(scratch, BUCKET_RECORD, job.sort_chunk_records)
        stats, chain, skips = _write_part(job, index, keys)
        write_sorted(job.out, job.keys(index), keys.sorted_blocks(), "high")
    stats.update(rules={name: s.to_dict() for name, s in chain.stats.items()}, skips=skips.to_dict())
    job.out.write_text(job.part(index, ".json"), json.dumps(stats))
    return stats


def _write_part(job: CleanJob, index: int, keys: ExternalSort) -> tuple[dict[str, Any], FilterChain, SkipLog]:
    """The input's kept documents into its part, their keys into `keys`; its counts, rules and skips."""
    inp, cfg = job.inputs[index], job.cfg
    skips = SkipLog()
    chain = FilterChain(_rules_for(inp, cfg), cfg)
    hasher = job.hasher() if cfg.minhash_dedup else None
    stats = {"input": inp.spec, "kind": inp.kind, "docs_read": 0, "bytes_read": 0, "docs_kept": 0, "bytes_kept": 0}
    with job.out.writing(job.part(index, ".parquet")) as file, pq.ParquetWriter(file, PART_SCHEMA) as writer:
        rows = _empty_rows()
        for doc in _documents(inp, job, skips):
            stats["docs_read"] += 1
            stats["bytes_read"] += len(doc.text.encode("utf-8"))
            text = chain.apply(doc.text)
            if text is None:
                continue
            signature = hasher.signature(text) if hasher else None
            _append(rows, doc, text, signature)
            stats["docs_kept"] += 1
            stats["bytes_kept"] += len(text.encode("utf-8"))
            if len(rows["id"]) == ROW_GROUP_DOCS:
                _write_part_rows(writer, rows, keys, index, stats["docs_kept"], job, hasher)
                rows = _empty_rows()
        _write_part_rows(writer, rows, keys, index, stats["docs_kept"], job, hasher)
    return stats, chain, skips


def _empty_rows() -> dict[str, list]:
    return {name: [] for name in PART_SCHEMA.names}


def _append(rows: dict[str, list], doc: Document, text: str, signature: np.ndarray | None) -> None:
    rows["id"].append(doc.id)
    rows["text"].append(text)
    rows["source"].append(doc.source)
    rows["meta"].append(json.dumps(doc.meta, default=str))
    rows["exact"].append(exact_key(text))
    rows["minhash"].append(None if signature is None else signature.tobytes())


def _write_part_rows(writer: pq.ParquetWriter, rows: dict[str, list], keys: ExternalSort, index: int,
                     kept_so_far: int, job: CleanJob, hasher: MinHasher | None) -> None:
    count = len(rows["id"])
    writer.write_table(pa.table(rows, schema=PART_SCHEMA))
    docs = document_numbers(index, kept_so_far - count, count)
    keys.add(key_records(docs, rows["exact"] if job.cfg.exact_dedup else None, rows["minhash"], hasher))


# ---- stage 2: one range of keys → the pairs (document, rank, earliest document) ----------------------------


@dataclass
class FindDuplicates:
    job: CleanJob
    name: str = "dedup"

    def run_task(self, rank: int, world_size: int) -> dict[str, int]:
        """Task `rank` takes the keys whose `high` lies in range `rank` of `world_size` from every input's sorted
        keys; each of its keys' later documents becomes a pair, written sorted by document."""
        job = self.job
        name = job.pairs(rank, world_size)
        if job.out.exists(name):
            return {}
        low, high = rank * KEY_SPACE // world_size, (rank + 1) * KEY_SPACE // world_size
        with job.scratch(f"bucket_{rank:05d}") as bucket_scratch, job.scratch(f"pairs_{rank:05d}") as pair_scratch:
            buckets = ExternalSort(bucket_scratch, BUCKET_RECORD, job.sort_chunk_records)
            records = 0
            for index in range(len(job.inputs)):
                for block in sorted_range(job.out, job.keys(index), BUCKET_RECORD, "high", low,
                                          high if high < KEY_SPACE else None):
                    buckets.add(block)
                    records += len(block)
            pairs = ExternalSort(pair_scratch, PAIR_RECORD, job.sort_chunk_records)
            for block in bucket_pairs(buckets.sorted_blocks()):
                pairs.add(block)
            count = write_sorted(job.out, name, pairs.sorted_blocks(), "doc")
        return {"keys": records, "pairs": count}


# ---- stage 3: each input's documents, the duplicates dropped, into shards ---------------------------------


@dataclass
class Duplicate:
    row: int  # its row in its input's part
    reason: str  # "exact" or "near"
    first: int  # the number of the earliest document it copies (see dedup.document_number)


@dataclass
class WriteKept:
    job: CleanJob
    buckets: int  # the dedup stage's tasks, whose pair files this stage reads
    name: str = "write"

    def run_task(self, rank: int, world_size: int) -> dict[str, int]:
        counts: Counter = Counter()
        for index in self.job.my_inputs(rank, world_size):
            if self.job.out.exists(self.job.part(index, ".kept.json")):
                continue
            kept = _write_input(self.job, index, self.duplicates_of(index))
            counts.update(docs_in=kept["dedup"]["docs_in"], docs_final=kept["docs_final"])
        return dict(counts)

    def duplicates_of(self, index: int) -> list[Duplicate]:
        """The input's duplicates in row order: each document's lowest-ranked pair over every bucket (exact before
        band 0 before band 1, as `dedup.Deduplicator` checks them)."""
        low, high = document_number(index, 0), document_number(index + 1, 0)
        slices = [np.empty(0, dtype=PAIR_RECORD)]
        for bucket in range(self.buckets):
            slices.extend(sorted_range(self.job.out, self.job.pairs(bucket, self.buckets), PAIR_RECORD, "doc", low,
                                       high))
        pairs = np.concatenate(slices)
        if not len(pairs):
            return []
        pairs = pairs[np.lexsort([pairs["first"], pairs["rank"], pairs["doc"]])]
        mask = (1 << ROW_BITS) - 1
        return [Duplicate(doc & mask, "exact" if rank == 0 else "near", first)
                for doc, rank, first in lowest_ranked_pairs([pairs])]


def _write_input(job: CleanJob, index: int, duplicates: list[Duplicate]) -> dict[str, Any]:
    """The input's rows without its duplicates into docs_IIIII_SSSS.parquet; its counts into parts/IIIII.kept.json."""
    dedup = DedupStats()
    dropped = {d.row: d for d in duplicates}
    kept_docs = kept_bytes = 0
    with _ShardWriter(job.out, f"docs_{index:05d}", job.cfg.shard_docs) as writer:
        for row_number, row in enumerate(_rows(job.out.location(job.part(index, ".parquet")))):
            size = len(row["text"].encode("utf-8"))
            dedup.docs_in += 1
            dedup.bytes_in += size
            duplicate = dropped.get(row_number)
            if duplicate is None:
                writer.add(row, size)
                kept_docs += 1
                kept_bytes += size
                continue
            dedup.dropped[duplicate.reason] += 1
            dedup.bytes_dropped += size
            shown = dedup.examples.setdefault(duplicate.reason, [])
            if len(shown) < job.cfg.examples_per_rule:
                shown.append({"id": row["id"], "duplicate_of": _document_id(job, duplicate.first),
                              "text": row["text"][:EXAMPLE_CHARS]})
    kept = {"docs_final": kept_docs, "bytes_final": kept_bytes, "shards": writer.names,
            "block_bytes": writer.block_bytes, "dedup": dedup.to_dict()}
    job.out.write_text(job.part(index, ".kept.json"), json.dumps(kept))
    return kept


def _rows(location: str) -> Iterator[dict]:
    for batch in open_parquet(location).iter_batches(READ_BATCH_DOCS, columns=DOC_SCHEMA.names):
        yield from batch.to_pylist()


def _document_id(job: CleanJob, number: int) -> str:
    part, row = document_place(number)
    return open_parquet(job.out.location(job.part(part, ".parquet"))).read(columns=["id"]).column("id")[row].as_py()


@dataclass
class DedupStats:
    docs_in: int = 0
    bytes_in: int = 0
    dropped: Counter = field(default_factory=Counter)
    bytes_dropped: int = 0
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        kept = self.docs_in - sum(self.dropped.values())
        return {"docs_in": self.docs_in, "docs_kept": kept, "docs_dropped": sum(self.dropped.values()),
                "bytes_in": self.bytes_in, "bytes_kept": self.bytes_in - self.bytes_dropped,
                "bytes_dropped": self.bytes_dropped, "dropped_by_reason": dict(self.dropped),
                "examples": self.examples}

    def add(self, other: dict[str, Any], max_examples: int) -> None:
        """Sum another input's dedup counts (its to_dict) into these, keeping the first examples of each reason."""
        self.docs_in += other["docs_in"]
        self.bytes_in += other["bytes_in"]
        self.dropped.update(other["dropped_by_reason"])
        self.bytes_dropped += other["bytes_dropped"]
        for reason, shown in other["examples"].items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(shown[:max_examples - len(mine)])


class _ShardWriter:
    """Kept documents into PREFIX_SSSS.parquet files of `shard_docs` rows, written a row group at a time (so memory
    holds one row group, not a shard), each under a temporary name until it is whole."""

    def __init__(self, out: Folder, prefix: str, shard_docs: int) -> None:
        self.out, self.prefix, self.shard_docs = out, prefix, shard_docs
        self.rows: list[dict] = []
        self.names: list[str] = []
        self.block_bytes: list[list[int]] = []  # per shard, the UTF-8 bytes of each BLOCK_ROWS rows
        self.shard = contextlib.ExitStack()  # the open shard's file, moved into place when closed whole
        self.file: pq.ParquetWriter | None = None
        self.in_shard = 0  # rows written to the open shard

    def __enter__(self) -> "_ShardWriter":
        return self

    def add(self, row: dict, size: int) -> None:
        """Add a row whose text has `size` UTF-8 bytes."""
        if self.in_shard + len(self.rows) == 0:
            self.block_bytes.append([])
        blocks = self.block_bytes[-1]
        if (self.in_shard + len(self.rows)) % BLOCK_ROWS == 0:
            blocks.append(0)
        blocks[-1] += size
        self.rows.append(row)
        if len(self.rows) >= min(ROW_GROUP_DOCS, self.shard_docs - self.in_shard):
            self._write_rows()

    def _write_rows(self) -> None:
        if self.file is None:
            self.file = pq.ParquetWriter(self.shard.enter_context(self.out.writing(self._name())), DOC_SCHEMA)
        self.file.write_table(pa.Table.from_pylist(self.rows, schema=DOC_SCHEMA))
        self.in_shard += len(self.rows)
        self.rows = []
        if self.in_shard >= self.shard_docs:
            self._finish_shard()

    def _name(self) -> str:
        return f"{self.prefix}_{len(self.names):04d}.parquet"

    def _finish_shard(self) -> None:
        self.file.close()
        self.shard.close()
        self.names.append(self._name())
        self.file, self.in_shard = None, 0

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:  # leave no half-written shard behind
            if self.file is not None:
                self.file.close()
                self.shard.__exit__(error_type, error, traceback)
            return
        if self.rows:
            self._write_rows()
        if self.file is not None:
            self._finish_shard()


# ---- stage 4: the counts of every input summed, stats.json and report.md ------------------------------------


@dataclass
class Summarise:
    job: CleanJob
    name: str = "summary"

    def run_task(self, rank: int, world_size: int) -> dict[str, int]:
        out, cfg = self.job.out, self.job.cfg
        per_input, dedup = [], DedupStats()
        for index in range(len(self.job.inputs)):
            stats = json.loads(out.read_text(self.job.part(index, ".json")))
            kept = json.loads(out.read_text(self.job.part(index, ".kept.json")))
            dedup.add(kept["dedup"], cfg.examples_per_rule)
            stats.update(docs_final=kept["docs_final"], bytes_final=kept["bytes_final"], shards=kept["shards"],
                         block_bytes=kept["block_bytes"])
            per_input.append(stats)
        stats = _summarise(per_input, dedup, cfg)
        out.write_text("report.md", render_report(stats))
        out.write_text("stats.json", json.dumps(stats, indent=1))  # last: the folder is finished
        out.remove("dedup")
        say(f"clean: {stats['docs_final']:,} documents ({stats['bytes_final'] / 1e6:.2f} MB) kept in {out}")
        return {"docs_final": stats["docs_final"]}


def _summarise(per_input: list[dict], dedup: DedupStats, cfg: CleanConfig) -> dict:
    by_kind: dict[str, dict[str, int]] = {}
    rules: dict[str, RuleStats] = {}
    skips: Counter = Counter()
    for part in per_input:
        totals = by_kind.setdefault(part["kind"], Counter())
        for key in ("docs_read", "bytes_read", "docs_kept", "bytes_kept", "docs_final", "bytes_final"):
            totals[key] += part[key]
        for name, data in part["rules"].items():
            rules.setdefault(name, RuleStats()).merge(RuleStats.from_dict(data), cfg.examples_per_rule)
        skips.update(part["skips"]["by_reason"])
    return {"shards": [name for part in per_input for name in part["shards"]],
            "docs_final": sum(p["docs_final"] for p in per_input),
            "bytes_final": sum(p["bytes_final"] for p in per_input),
            "by_kind": {kind: dict(v) for kind, v in sorted(by_kind.items())},
            "rules": {name: s.to_dict() for name, s in rules.items()}, "dedup": dedup.to_dict(),
            "reader_skips": dict(sorted(skips.items())), "inputs": per_input}


def render_report(stats: dict) -> str:
    """A readable page: per source kind, per rule and for dedup, what was kept and dropped, with examples."""
    lines = ["# Clean report", "", f"{stats['docs_final']} documents ({_mb(stats['bytes_final'])} MB) in "
             f"{len(stats['shards'])} shard(s).", "", "## By source", "",
             "| source | docs read | MB read | after rules | after dedup | MB kept |", "|---|---:|---:|---:|---:|---:|"]
    for kind, t in stats["by_kind"].items():
        lines.append(f"| {kind} | {t['docs_read']} | {_mb(t['bytes_read'])} | {t['docs_kept']} | {t['docs_final']} "
                     f"| {_mb(t['bytes_final'])} |")
    lines += ["", "## By rule", "", "| rule | docs in | kept | dropped | MB dropped |", "|---|---:|---:|---:|---:|"]
    steps = dict(stats["rules"], dedup=stats["dedup"])
    for name, s in steps.items():
        lines.append(f"| {name} | {s['docs_in']} | {s['docs_kept']} | {s['docs_dropped']} | "
                     f"{_mb(s['bytes_dropped'])} |")
    for name, s in steps.items():
        if not s["dropped_by_reason"]:
            continue
        lines += ["", f"### {name}", ""]
        for reason, count in sorted(s["dropped_by_reason"].items(), key=lambda kv: -kv[1]):
            lines.append(f"- **{reason}**: {count} dropped")
            for example in s["examples"].get(reason, []):
                text = example["text"] if isinstance(example, dict) else example
                lines.append(f"  - `{' '.join(text.split())[:160]}`")
    if stats["reader_skips"]:
        lines += ["", "## Left out while reading", ""]
        lines += [f"- {reason}: {count}" for reason, count in stats["reader_skips"].items()]
    return "\n".join(lines) + "\n"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def read_cleaned(out_dir: str | Path, start: int = 0, stop: int | None = None) -> Iterator[Document]:
    """The cleaned documents of a clean output folder (a local path or a URL), in order; with `start`/`stop`, only
    that range of rows.

    The write stage names shards by input, so the documents of one input (its `docs_final` in stats.json) are one
    such range; shards wholly outside the range are not read.
    """
    folder = open_folder(out_dir, write=False)
    offset = 0
    for shard in map(folder.location, folder.names("docs_*.parquet")):
        rows = open_parquet(shard).metadata.num_rows
        first = max(start - offset, 0)
        last = rows if stop is None else min(stop - offset, rows)
        offset += rows
        if first < last:
            for row in shard_rows(shard, first, last).to_pylist():
                yield Document(id=row["id"], text=row["text"], source=row["source"], meta=json.loads(row["meta"]))
        if stop is not None and offset >= stop:
            return


def shard_rows(location: str | Path, first: int, stop: int, columns: list[str] | None = None) -> pa.Table:
    """Rows first … stop - 1 of a parquet file (a local path or a URL), reading only the row groups that hold
    them."""
    file = open_parquet(location)
    groups, group_start, skip = [], 0, 0
    for group in range(file.num_row_groups):
        group_stop = group_start + file.metadata.row_group(group).num_rows
        if group_start < stop and group_stop > first:
            if not groups:
                skip = first - group_start
            groups.append(group)
        group_start = group_stop
    if not groups:
        return file.schema_arrow.empty_table().select(columns or file.schema_arrow.names)
    return file.read_row_groups(groups, columns=columns).slice(skip, stop - first)


# ---- mixing ------------------------------------------------------------------------------------------------


def utf8_bytes(doc: Document) -> int:
    return len(doc.text.encode("utf-8"))


@dataclass
class MixReport:
    """What a mix took from each source, in the mix's unit (bytes or tokens) and documents."""

    weights: dict[str, float]
    taken: Counter = field(default_factory=Counter)
    docs: Counter = field(default_factory=Counter)
    exhausted: str = ""  # the source that ran out first and ended the mix

    def shares(self) -> dict[str, float]:
        total = sum(self.taken.values()) or 1
        return {name: self.taken[name] / total for name in self.weights}

    def to_dict(self) -> dict[str, Any]:
        target = sum(self.weights.values())
        return {name: {"weight": w / target, "achieved": self.shares()[name], "units": self.taken[name],
                       "docs": self.docs[name]} for name, w in self.weights.items()} | {"ended_by": self.exhausted}


def mix_documents(streams: dict[str, Iterable[Document]], weights: dict[str, float], *,
                  measure: Callable[[Document], int] = utf8_bytes, report: MixReport | None = None
                  ) -> Iterator[Document]:
    """Interleave sources so each one's share of the total (in `measure` units) follows its weight.

    Each step takes the next document from the source furthest below its share (taken / weight smallest, ties by
    name), so the order is the same on every run. The mix ends when a weighted source runs out: going on with the
    others would push their shares above their weights. `report` collects the achieved shares.
    """
    unknown = set(weights) ^ set(streams)
    if unknown:
        raise DataError(f"mix: weights and sources must name the same sources (differ on {sorted(unknown)})")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise DataError("mix: weights must be >= 0 with at least one above 0")
    report = report if report is not None else MixReport(dict(weights))
    iterators = {name: iter(streams[name]) for name in sorted(streams) if weights[name] > 0}
    while True:
        name = min(iterators, key=lambda n: (report.taken[n] / weights[n], n))
        doc = next(iterators[name], None)
        if doc is None:
            report.exhausted = name
            return
        report.taken[name] += measure(doc)
        report.docs[name] += 1
        yield doc
