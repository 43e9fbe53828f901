"""The clean step: raw sources → extracted text → quality rules → dedup → cleaned parquet shards, with a report.

    read ─► extract ─► filter (per input, in parallel) ─► parts/ ─► dedup (sorted files on disk) ─► write (merge)

Stage one runs per input (one WARC/WET file, one code repository, one text source) in worker processes, and
writes `parts/NNNNN.parquet` (kept documents with their exact hash and MinHash signature) and `parts/NNNNN.json`
(its counts), the JSON last: an input with its JSON present is finished and is not redone after a crash. On a
cluster, task i of n (`--task-index i --num-tasks n`) runs stage one on inputs i, i+n, i+2n, ...; then one merge
deduplicates across all parts, with `DuplicateFinder`'s sorted files (in `dedup/` while it runs), so its memory
does not grow with the corpus. Documents are numbered in input order and the earliest copy survives, so the
output is the same whatever the number of workers or tasks.

Output folder: `docs_00000.parquet ...` (id, text, source, meta as JSON), `stats.json`, `report.md`,
`manifest.json` (the inputs and settings the parts belong to), `parts/`.

Source specs: a WARC/WET file, a folder holding WARC/WET files (each file an input), `code:PATH` for a code
repository, and anything `read_sources` reads (text folders, .txt/.md, JSONL, parquet) for books and articles.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from nextword.config import CleanConfig
from nextword.data.dedup import (SORT_CHUNK_RECORDS, Duplicate, DuplicateFinder, MinHasher, document_number,
                                 document_numbers, document_place, exact_key)
from nextword.data.filters import EXAMPLE_CHARS, FilterChain, RuleStats
from nextword.data.remote import is_url, remote_files
from nextword.data.sources import Document, SkipLog, code_repository, read_sources
from nextword.errors import DataError, make_folder
from nextword.files import atomic_write, replace_atomically, temporary_name, write_text_atomically

PART_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                         ("meta", pa.string()), ("exact", pa.binary(16)), ("minhash", pa.binary())])
DOC_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("meta", pa.string())])
DEFAULT_TEXT_EXTENSIONS = [".txt", ".md", ".rst"]
READ_BATCH_DOCS = 2048  # rows of a part read at once by the merge
ROW_GROUP_DOCS = 1024  # kept documents written at once: a shard is written a row group at a time


@dataclass(frozen=True)
class Input:
    """One unit of parallel work: a web archive file, a code repository, or one text source."""

    spec: str  # as the user named it
    kind: str  # "web" | "code" | "text"
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
        web_files = sorted(p for p in path.rglob("*") if p.is_file() and is_web_file(p)) if path.is_dir() else []
        if is_web_file(path):
            inputs.append(Input(spec, "web", str(path)))
        elif web_files:
            inputs.extend(Input(str(p), "web", str(p)) for p in web_files)
        else:
            inputs.append(Input(spec, "text", str(path)))
    return inputs


def clean(sources: list[str], out_dir: str | Path, cfg: CleanConfig, *, workers: int = 1, task_index: int = 0,
          num_tasks: int = 1, extensions: list[str] | None = None, log: Callable[[str], None] = print) -> dict | None:
    """Run stage one on this task's share of the inputs, then (with a single task) the merge; its stats."""
    cfg.validate()
    if not 0 <= task_index < num_tasks:
        raise DataError(f"--task-index {task_index} is outside 0..{num_tasks - 1} (--num-tasks {num_tasks})")
    out = Path(out_dir)
    inputs = plan_inputs(sources)
    _write_manifest(out, inputs, cfg, extensions or DEFAULT_TEXT_EXTENSIONS)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    todo = [(i, inp) for i, inp in enumerate(inputs)
            if i % num_tasks == task_index and not (parts / f"{i:05d}.json").exists()]
    done_before = sum(1 for i in range(task_index, len(inputs), num_tasks)) - len(todo)
    if done_before:
        log(f"clean: {done_before} input(s) already done, skipped")
    jobs = [(i, inp, cfg, str(parts), extensions or DEFAULT_TEXT_EXTENSIONS) for i, inp in todo]
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            log(_process_input(*job))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            for line in pool.map(_process_input, *zip(*jobs)):
                log(line)
    if num_tasks > 1:
        log(f"clean: task {task_index}/{num_tasks} done; run `nextword data clean --merge --out {out}` "
            "once every task has finished")
        return None
    return merge(out, cfg)


def _write_manifest(out: Path, inputs: list[Input], cfg: CleanConfig, extensions: list[str]) -> None:
    manifest = {"inputs": [dataclasses.asdict(i) for i in inputs], "clean": dataclasses.asdict(cfg),
                "extensions": extensions}
    path = out / "manifest.json"
    if path.exists():
        if json.loads(path.read_text(encoding="utf-8")) != manifest:
            raise DataError(f"{path}: this folder was made from other sources or settings; "
                            "use a new --out folder or delete this one")
        return
    make_folder(out, "output", "--out")
    write_text_atomically(path, json.dumps(manifest, indent=1))


# ---- stage one: one input → one part ---------------------------------------------------------------------


def _documents(inp: Input, cfg: CleanConfig, extensions: list[str], skips: SkipLog) -> Iterator[Document]:
    if inp.kind == "web":
        from nextword.data.web import read_web

        return read_web(inp.path, skips, extractor=cfg.extractor)  # a local path or a URL
    if inp.kind == "code":
        from nextword.data.code import read_code_repo

        return read_code_repo(Path(inp.path), skips, max_file_bytes=cfg.code_max_file_bytes)
    return read_sources([inp.path], extensions, skips)


def _rules_for(inp: Input, cfg: CleanConfig) -> list[str]:
    return {"web": cfg.web_rules, "code": cfg.code_rules, "text": cfg.text_rules}[inp.kind]


def _process_input(index: int, inp: Input, cfg: CleanConfig, parts_dir: str, extensions: list[str]) -> str:
    skips = SkipLog()
    chain = FilterChain(_rules_for(inp, cfg), cfg)
    hasher = MinHasher(cfg.minhash_ngram, cfg.minhash_bands, cfg.minhash_rows, cfg.minhash_seed)
    rows: dict[str, list] = {name: [] for name in PART_SCHEMA.names}
    read_docs = read_bytes = 0
    for doc in _documents(inp, cfg, extensions, skips):
        read_docs += 1
        read_bytes += len(doc.text.encode("utf-8"))
        text = chain.apply(doc.text)
        if text is None:
            continue
        signature = hasher.signature(text) if cfg.minhash_dedup else None
        rows["id"].append(doc.id)
        rows["text"].append(text)
        rows["source"].append(doc.source)
        rows["meta"].append(json.dumps(doc.meta, default=str))
        rows["exact"].append(exact_key(text))
        rows["minhash"].append(None if signature is None else signature.tobytes())
    part = Path(parts_dir) / f"{index:05d}"
    with atomic_write(part.with_suffix(".parquet")) as tmp:
        pq.write_table(pa.table(rows, schema=PART_SCHEMA), tmp)
    stats = {"input": inp.spec, "kind": inp.kind, "docs_read": read_docs, "bytes_read": read_bytes,
             "docs_kept": len(rows["id"]), "bytes_kept": sum(len(t.encode("utf-8")) for t in rows["text"]),
             "rules": {name: s.to_dict() for name, s in chain.stats.items()}, "skips": skips.to_dict()}
    write_text_atomically(part.with_suffix(".json"), json.dumps(stats))
    return f"clean: {inp.spec}: {read_docs} documents read, {len(rows['id'])} kept by the rules"


# ---- merge: dedup across parts, write shards, stats and report -------------------------------------------


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


def merge(out_dir: str | Path, cfg: CleanConfig | None = None, *,
          sort_chunk_records: int = SORT_CHUNK_RECORDS) -> dict:
    """Deduplicate every part (the earliest copy in input order survives) and write the cleaned shards,
    `stats.json` and `report.md`. `sort_chunk_records` bounds the dedup's memory: records sorted at once."""
    out = Path(out_dir)
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():
        raise DataError(f"{out}: no manifest.json; run `nextword data clean --out {out}` on the sources first")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if cfg is not None and json.loads(json.dumps(dataclasses.asdict(cfg))) != manifest["clean"]:
        # Signatures made with other MinHash settings cannot be compared, and other rules would not match the parts.
        raise DataError(f"{manifest_path}: the parts were cleaned with other settings; merge with the ones the "
                        "tasks used (give the same --clean.FIELD options, or none)")
    cfg = CleanConfig(**manifest["clean"])
    inputs = manifest["inputs"]
    missing = [inp["spec"] for i, inp in enumerate(inputs) if not (out / "parts" / f"{i:05d}.json").exists()]
    if missing:
        raise DataError(f"{out}: {len(missing)} input(s) not cleaned yet (first: {missing[0]}); "
                        "run the remaining tasks before merging")
    parts = [out / "parts" / f"{i:05d}.parquet" for i in range(len(inputs))]
    work = out / "dedup"
    shutil.rmtree(work, ignore_errors=True)  # a merge that died leaves its sorted files
    hasher = MinHasher(cfg.minhash_ngram, cfg.minhash_bands, cfg.minhash_rows, cfg.minhash_seed)
    finder = DuplicateFinder(hasher if cfg.minhash_dedup else None, cfg.exact_dedup, work, sort_chunk_records)
    for part, path in enumerate(parts):  # the hashes and signatures only; the texts are read once, below
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(READ_BATCH_DOCS, columns=["exact", "minhash"]):
            finder.add(document_numbers(part, row, batch.num_rows), batch.column("exact").to_pylist(),
                       batch.column("minhash").to_pylist())
            row += batch.num_rows
    for old in out.glob("docs_*.parquet"):
        old.unlink()
    with _ShardWriter(out, cfg.shard_docs) as writer:
        per_input, dedup_stats = _filter_parts(parts, finder.duplicates(), writer, cfg)
    shutil.rmtree(work)
    stats = _summarise(per_input, dedup_stats, writer.names, cfg)
    write_text_atomically(out / "stats.json", json.dumps(stats, indent=1))
    write_text_atomically(out / "report.md", render_report(stats))
    return stats


def _filter_parts(parts: list[Path], duplicates: Iterator[Duplicate], writer: _ShardWriter, cfg: CleanConfig
                  ) -> tuple[list[dict], DedupStats]:
    """The dedup's last stage: every part's documents in order, the duplicates dropped and counted, the rest
    written; with each part's counts."""
    dedup_stats = DedupStats()
    duplicate = next(duplicates, None)
    per_input, examples = [], []
    for part, path in enumerate(parts):
        part_stats = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        kept_docs = kept_bytes = 0
        for number, row in enumerate(_rows(path), start=document_number(part, 0)):
            size = len(row["text"].encode("utf-8"))
            dedup_stats.docs_in += 1
            dedup_stats.bytes_in += size
            if duplicate is None or duplicate.doc != number:
                writer.add(row)
                kept_docs += 1
                kept_bytes += size
                continue
            dedup_stats.dropped[duplicate.reason] += 1
            dedup_stats.bytes_dropped += size
            shown = dedup_stats.examples.setdefault(duplicate.reason, [])
            if len(shown) < cfg.examples_per_rule:
                shown.append({"id": row["id"], "duplicate_of": "", "text": row["text"][:EXAMPLE_CHARS]})
                examples.append((shown[-1], duplicate.first))
            duplicate = next(duplicates, None)
        part_stats.update(docs_final=kept_docs, bytes_final=kept_bytes)
        per_input.append(part_stats)
    for example, first in examples:  # a few ids, read once every part has been walked
        example["duplicate_of"] = _document_id(parts, first)
    return per_input, dedup_stats


def _rows(path: Path) -> Iterator[dict]:
    for batch in pq.ParquetFile(path).iter_batches(READ_BATCH_DOCS, columns=DOC_SCHEMA.names):
        yield from batch.to_pylist()


def _document_id(parts: list[Path], number: int) -> str:
    part, row = document_place(number)
    return pq.read_table(parts[part], columns=["id"]).column("id")[row].as_py()


class _ShardWriter:
    """Kept documents into docs_NNNNN.parquet files of `shard_docs` rows, written a row group at a time (so memory
    holds one row group, not a shard), each under a temporary name until it is whole."""

    def __init__(self, out: Path, shard_docs: int) -> None:
        self.out, self.shard_docs = out, shard_docs
        self.rows: list[dict] = []
        self.names: list[str] = []
        self.file: pq.ParquetWriter | None = None
        self.in_shard = 0  # rows written to the open shard

    def __enter__(self) -> "_ShardWriter":
        return self

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= min(ROW_GROUP_DOCS, self.shard_docs - self.in_shard):
            self._write_rows()

    def _write_rows(self) -> None:
        if self.file is None:
            self.file = pq.ParquetWriter(temporary_name(self._path()), DOC_SCHEMA)
        self.file.write_table(pa.Table.from_pylist(self.rows, schema=DOC_SCHEMA))
        self.in_shard += len(self.rows)
        self.rows = []
        if self.in_shard >= self.shard_docs:
            self._finish_shard()

    def _path(self) -> Path:
        return self.out / f"docs_{len(self.names):05d}.parquet"

    def _finish_shard(self) -> None:
        self.file.close()
        replace_atomically(temporary_name(self._path()), self._path())
        self.names.append(self._path().name)
        self.file, self.in_shard = None, 0

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None:  # leave no half-written shard behind
            if self.file is not None:
                self.file.close()
                temporary_name(self._path()).unlink(missing_ok=True)
            return
        if self.rows or (self.file is None and not self.names):  # no documents kept still makes one (empty) shard
            self._write_rows()
        if self.file is not None:
            self._finish_shard()


def _summarise(per_input: list[dict], dedup: DedupStats, shards: list[str], cfg: CleanConfig) -> dict:
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
    return {"shards": shards, "docs_final": sum(p["docs_final"] for p in per_input),
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
    """The cleaned documents of a clean output folder, in order; with `start`/`stop`, only that range of rows.

    The merge writes inputs in order, so the documents of one input (its `docs_final` in stats.json) are one such
    range; shards wholly outside the range are not read.
    """
    offset = 0
    for shard in sorted(Path(out_dir).glob("docs_*.parquet")):
        rows = pq.ParquetFile(shard).metadata.num_rows
        first = max(start - offset, 0)
        last = rows if stop is None else min(stop - offset, rows)
        offset += rows
        if first < last:
            for row in pq.read_table(shard).slice(first, last - first).to_pylist():
                yield Document(id=row["id"], text=row["text"], source=row["source"], meta=json.loads(row["meta"]))
        if stop is not None and offset >= stop:
            return


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
