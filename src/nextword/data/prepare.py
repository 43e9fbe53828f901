"""Turn sources into token shards: read documents, train (or load) a tokenizer, encode on every core, write shards.

By default this prepares the embedded corpus, Python's standard library. With data.clean the sources are
first cleaned (extracted, filtered, deduplicated, by the [clean] settings) into DATA_DIR/clean/ (or data.clean_dir,
a folder or a URL such as s3://BUCKET/clean), and with data.weights each source's documents are mixed to its
share. The result is cached: a data dir records a key made from the inputs and the settings that change its
output, and a later run with the same key reuses it instead of doing the work again. Every message goes to
stderr, so a command whose stdout is data stays clean.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from nextword.config import CleanConfig, DataConfig, EngineConfig
from nextword.data.clean import CLEAN_FORMAT, MixReport, clean, mix_documents, plan_inputs, read_cleaned
from nextword.data.code import LANGUAGES
from nextword.data.decontaminate import Decontamination, EvalNgrams
from nextword.data.documents import Document, SkipLog
from nextword.data.encode import UNITS_DIR, EncodeUnits, gather_units, plan_units, unit_file
from nextword.data.remote import is_url
from nextword.data.shards import (FORMAT_VERSION, INDEX_NAME, SPLITS, ShardWriter, TokenShards, read_index,
                                  token_dtype, write_index)
from nextword.data.sources import read_sources, sources_fingerprint
from nextword.data.split import BY_TAILS, choose_rule, split_pieces
from nextword.data.tokenizer import EOS, Tokenizer
from nextword.errors import ConfigError, DataError, make_folder
from nextword.files import folder_lock, remove_temporary_files, write_text_atomically

TOKENIZER_NAME = "tokenizer.json"
CHUNK_BYTES = 1 << 20  # text sent to a worker at a time: large enough to keep the pickling cost small
CHUNK_DOCUMENTS = 1024
CHUNKS_IN_FLIGHT_PER_WORKER = 2  # bounds memory: reading never runs far ahead of encoding
# The files a ShardWriter makes; only these are removed before a data dir is rewritten, never other files.
# Their temporary names end in .tmpPID (files.temporary_name); versions before it wrote .tmp.
SHARD_FILE = re.compile(rf"({'|'.join(SPLITS)})(_\d{{5}})?_\d{{5}}\.(bin|docs\.npy)(\.tmp\d*)?")
CLEAN_DIR = "clean"
CLEAN_KEY_NAME = "prepare_key.txt"  # in CLEAN_DIR: the clean settings and inputs its contents were made from
MIXED_FROM = "mixed_from"  # the meta field naming the source a mixed document came from
UNITS_STARTED = "started.json"  # in UNITS_DIR: the key and tokenizer the finished units were encoded for


@dataclass
class Prepared:
    data_dir: Path
    tokenizer: Tokenizer
    index: dict
    reused: bool


def prepare(cfg: DataConfig, *, clean: CleanConfig | None = None, engine: EngineConfig | None = None,
            progress: bool = True) -> Prepared:
    """sources → (clean) → (mix) → tokenizer → shards in a data dir, or the data dir as it is if it was made from
    the same inputs. `clean` holds the settings used when cfg.clean is on (default: CleanConfig()), `engine` where
    the clean step's tasks run (default: this machine, data.workers at once)."""
    if cfg.clean_dir and not cfg.clean:
        raise ConfigError("data.clean_dir names where data.clean writes the cleaned corpus; set data.clean = true, "
                          "or leave data.clean_dir empty")
    clean_cfg = (clean or CleanConfig()).validate() if cfg.clean else None
    cleaned_from = clean_fingerprint(cfg, clean_cfg) if clean_cfg else ""
    eval_ngrams = EvalNgrams.from_entries(cfg.decontaminate) if cfg.decontaminate else None
    key = cache_key(cfg, cleaned_from, eval_ngrams.fingerprint() if eval_ngrams else "")
    data_dir = resolve_data_dir(cfg, key)
    index = _finished_index(data_dir, key)
    if index is not None:
        report(f"prepare: reusing {data_dir} (made from the same sources and settings)")
        return Prepared(data_dir, Tokenizer.load(data_dir / TOKENIZER_NAME), index, reused=True)

    make_folder(data_dir, "data", "--data-dir")
    with folder_lock(data_dir, "the data folder", "--data-dir"):  # one writer; a finished one is read without it
        engine = engine or EngineConfig()
        engine = dataclasses.replace(engine, workers=engine.workers or cfg.workers)
        return _make(data_dir, key, cfg, clean_cfg, cleaned_from, eval_ngrams, engine, progress)


def _make(data_dir: Path, key: str, cfg: DataConfig, clean_cfg: CleanConfig | None, cleaned_from: str,
          eval_ngrams: EvalNgrams | None, engine: EngineConfig, progress: bool) -> Prepared:
    """Write the data dir: clean, decontaminate, mix, sample, tokenizer, shards, then the index that marks it
    finished."""
    started = time.perf_counter()
    resumed = _remove_previous_output(data_dir, key)
    skips = SkipLog()
    clean_dir = resolve_clean_dir(cfg, data_dir, cleaned_from)
    cleaned = _clean_sources(cfg, clean_cfg, engine, clean_dir, cleaned_from) if clean_cfg else None
    mix = MixReport(dict(zip(cfg.sources, cfg.weights))) if cfg.weights else None
    # Without the clean step every document reaches the shards through this one filter; with it, the encode tasks
    # filter the cleaned corpus themselves and this one only keeps the tokenizer's sample clean.
    decontamination = Decontamination(eval_ngrams) if eval_ngrams is not None else None
    sample, documents = _read_sample(_documents(cfg, cleaned, clean_dir, mix, skips, decontamination), cfg, progress)
    if not sample:
        raise DataError(_no_documents_message(cfg, skips))
    held_out = choose_rule(((d.id, len(d.text.encode("utf-8"))) for d in sample), cfg.val_fraction)
    if resumed is not None:  # units of an interrupted run with this key: keep its tokenizer, so they still fit
        tokenizer, tokenizer_note = Tokenizer.load(data_dir / TOKENIZER_NAME), resumed
    else:
        tokenizer, tokenizer_note = _get_tokenizer(cfg, sample, held_out, progress)
        tokenizer.save(data_dir / TOKENIZER_NAME)
    if cleaned is not None:
        splits, tokens_by_source, mix, decontaminated = _encode_as_tasks(
            data_dir, key, cfg, cleaned, clean_dir, tokenizer, tokenizer_note, held_out, engine, eval_ngrams)
        if decontamination is not None:  # the tasks' counts, which cover every document; the sample's would repeat some
            decontamination = Decontamination(eval_ngrams)
            decontamination.add(decontaminated)
    else:
        splits, tokens_by_source = _write_shards(data_dir, cfg, tokenizer, documents, held_out, progress)
    if splits["train"]["documents"] + splits["val"]["documents"] == 0:
        raise DataError(_no_documents_message(cfg, skips))
    extra = {}
    if cleaned is not None:
        extra["clean"] = _clean_summary(cleaned, clean_dir)
    if mix is not None:
        extra["mix"] = _mix_summary(mix, tokens_by_source)
    if decontamination is not None:
        extra["decontamination"] = decontamination.summary()
    index = write_index(data_dir, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, bos_id=tokenizer.bos_id,
                        tokenizer_hash=tokenizer.hash, splits=splits, key=key, val_held_out=held_out,
                        val_fraction=cfg.val_fraction, tokenizer_lossless=tokenizer.lossless,
                        sources=cfg.sources or ["stdlib"], tokenizer=tokenizer_note, skipped=skips.to_dict(),
                        **extra)
    for line in summary_lines(data_dir, index, skips, time.perf_counter() - started):
        report(line)
    return Prepared(data_dir, tokenizer, index, reused=False)


def report(line: str) -> None:
    """Every message goes to stderr (as tqdm's bars do), so a command whose stdout is data stays clean."""
    print(line, file=sys.stderr)


# --- where the output goes, and whether it is already there --------------------------------------------------


def cache_key(cfg: DataConfig, cleaned_from: str = "", decontaminated_from: str = "") -> str:
    """A short hash of the inputs and of every setting that changes the shards; `cleaned_from` is the
    clean_fingerprint when cfg.clean is on, `decontaminated_from` the EvalNgrams fingerprint with
    data.decontaminate."""
    if cfg.tokenizer:
        tokenizer = {"file": hashlib.sha256(_read_bytes(Path(cfg.tokenizer))).hexdigest()}
        loaded = Tokenizer.load(cfg.tokenizer, eos_token=cfg.eos_token, bos_token=cfg.bos_token)
        if (loaded.eos_token, loaded.bos_token) != (EOS, None):  # the shards hold their ids
            tokenizer["specials"] = [loaded.eos_token, loaded.bos_token]
    else:
        tokenizer = {"vocab_size": cfg.vocab_size, "train_bytes": cfg.tokenizer_train_bytes}
    settings: dict[str, Any] = {"format": FORMAT_VERSION, "tokenizer": tokenizer, "val_fraction": cfg.val_fraction,
                                "doc_separator": cfg.doc_separator}
    if cleaned_from:
        settings["clean"] = cleaned_from
    else:
        settings["sources"] = sources_fingerprint(cfg.sources, cfg.extensions)
    if cfg.weights:
        settings["weights"] = cfg.weights
    if decontaminated_from:
        settings["decontaminated_from"] = decontaminated_from
    return _short_hash(settings)


def clean_fingerprint(cfg: DataConfig, clean: CleanConfig) -> str:
    """A short hash of the clean step's inputs (names and file stats, as the clean step splits them) and settings.

    Each input is fingerprinted with the files its reader takes: a web archive itself, a code repository's source
    files, a text source's files with data.extensions.
    """
    if not cfg.sources:
        raise ConfigError("data.clean needs data.sources (web archives, code:REPO, text); the default corpus, "
                          "Python's standard library, is read as it is: set data.clean = false")
    extensions = {"web": [], "code": sorted(LANGUAGES), "text": cfg.extensions}
    inputs = [(inp.kind, inp.spec, sources_fingerprint([inp.path], extensions[inp.kind]))
              for inp in plan_inputs(cfg.sources)]
    return _short_hash({"inputs": inputs, "clean": dataclasses.asdict(clean), "extensions": cfg.extensions,
                        "doc_separator": cfg.doc_separator, "format": CLEAN_FORMAT})


def _short_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def resolve_data_dir(cfg: DataConfig, key: str) -> Path:
    if is_url(cfg.data_dir):
        raise ConfigError(f"data.data_dir = {cfg.data_dir}: training maps its token shards from a local or shared "
                          "filesystem; give a local folder (the cleaned corpus may be a URL: data.clean_dir)")
    if cfg.data_dir:
        return Path(cfg.data_dir).expanduser()
    return _cache_root() / "data" / key


def resolve_clean_dir(cfg: DataConfig, data_dir: Path, cleaned_from: str) -> str | Path:
    """data.clean_dir as given (a folder or a URL); else DATA_DIR/clean in a data dir the user named; in the cache, a
    folder named by the clean inputs and settings alone, so that another tokenizer or other weights reuse the
    cleaned corpus instead of cleaning again."""
    if cfg.clean_dir:
        return cfg.clean_dir
    if cfg.data_dir:
        return data_dir / CLEAN_DIR
    return _cache_root() / "clean" / cleaned_from


def _cache_root() -> Path:
    return Path(os.environ.get("NEXTWORD_CACHE") or Path.home() / ".cache" / "nextword").expanduser()


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the tokenizer ({e.strerror or e}); fix data.tokenizer") from None


def _finished_index(data_dir: Path, key: str) -> dict[str, Any] | None:
    """The index of a complete data dir made with this key, else None."""
    if not (data_dir / INDEX_NAME).exists():
        return None
    try:
        index = read_index(data_dir)
        if index.get("key") != key:
            return None
        for split in SPLITS:
            TokenShards(data_dir, split)
        if Tokenizer.load(data_dir / TOKENIZER_NAME).hash != index["tokenizer_hash"]:
            return None
    except DataError:
        return None
    return index


def _remove_previous_output(data_dir: Path, key: str) -> dict[str, Any] | None:
    """Remove the index first, so an interrupted run never leaves a data dir that looks finished; then the shards,
    except the units an interrupted run with this same key finished (their tokenizer's note is returned)."""
    (data_dir / INDEX_NAME).unlink(missing_ok=True)
    remove_temporary_files(data_dir)  # left by a process killed while writing them
    started = data_dir / UNITS_DIR / UNITS_STARTED
    if started.exists() and (data_dir / TOKENIZER_NAME).exists():
        record = json.loads(started.read_text(encoding="utf-8"))
        if record.get("key") == key:
            return record["tokenizer"]
    shutil.rmtree(data_dir / UNITS_DIR, ignore_errors=True)
    for path in data_dir.iterdir():
        if SHARD_FILE.fullmatch(path.name):
            path.unlink()
    return None


# --- the documents: read, or cleaned; then mixed -------------------------------------------------------------


def _clean_sources(cfg: DataConfig, clean_cfg: CleanConfig, engine: EngineConfig, clean_dir: str | Path,
                   fingerprint: str) -> dict[str, Any]:
    """Clean all sources together into clean_dir, so the merge also removes duplicates across sources.

    Resumable: with the same fingerprint, an input already cleaned is not redone (the clean step keeps finished
    parts), and a finished clean (stats.json written) is reused as it is. A clean made from other inputs or
    settings is removed first; a folder in its place that prepare did not make is left alone, with an error.
    A folder the user named (data.clean_dir, perhaps a URL) is never removed: the clean step reuses or resumes it
    when its manifest names the same inputs and settings, and stops with an error when it does not.
    """
    if cfg.clean_dir:
        return _clean_into(cfg, clean_cfg, engine, clean_dir)
    key_file = clean_dir / CLEAN_KEY_NAME
    if clean_dir.exists():
        if not key_file.exists():
            raise DataError(f"{clean_dir}: a folder prepare did not make is in the way of the cleaned corpus; "
                            "move it, or set data.data_dir to another folder")
        if key_file.read_text(encoding="utf-8") != fingerprint:
            shutil.rmtree(clean_dir)
        elif (clean_dir / "stats.json").exists():
            report(f"prepare: reusing the cleaned corpus in {clean_dir} (made from the same sources and settings)")
            return json.loads((clean_dir / "stats.json").read_text(encoding="utf-8"))
    clean_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(fingerprint, encoding="utf-8")
    return _clean_into(cfg, clean_cfg, engine, clean_dir)


def _clean_into(cfg: DataConfig, clean_cfg: CleanConfig, engine: EngineConfig, clean_dir: str | Path
                ) -> dict[str, Any]:
    stats = clean(cfg.sources, clean_dir, clean_cfg, engine=engine, extensions=cfg.extensions,
                  doc_separator=cfg.doc_separator, log=report)
    if stats is None:
        raise DataError(f"prepare: the clean step was submitted to Slurm; once its jobs finish, run this command "
                        f"again (it reuses {clean_dir}), or run prepare with --engine.executor local or ray")
    report(f"prepare: cleaned {stats['docs_final']:,} documents into {clean_dir}; see {clean_dir}/report.md")
    return stats


def _documents(cfg: DataConfig, cleaned: dict[str, Any] | None, clean_dir: str | Path, mix: MixReport | None,
               skips: SkipLog, decontamination: Decontamination | None) -> Iterator[Document]:
    """The documents to tokenize, from the sources or their cleaned corpus, less those that overlap an evaluation
    text; mixed to data.weights if given (after decontamination, so each source gives its share of what is kept)."""
    if cleaned is not None and not cleaned["docs_final"]:
        raise DataError(f"{', '.join(cfg.sources)}: the clean step kept no documents; {clean_dir}/report.md "
                        "shows what each rule dropped: add sources or loosen the [clean] settings")
    checked = decontamination.filter if decontamination is not None else iter
    if mix is None:
        if cleaned is not None:
            return checked(read_cleaned(clean_dir))
        return checked(read_sources(cfg.sources, cfg.extensions, skips, cfg.doc_separator))
    if len(set(cfg.sources)) != len(cfg.sources):
        raise ConfigError("data.sources names a source twice; with data.weights each source needs its own entry")
    if cleaned is not None:
        streams = _cleaned_by_source(cfg.sources, cleaned, clean_dir, mix.weights)
    else:
        streams = {source: read_sources([source], cfg.extensions, skips, cfg.doc_separator)
                   for source in cfg.sources}
    tagged = {source: _tag_with_source(checked(stream), source) for source, stream in streams.items()}
    # Mixed by UTF-8 bytes: the mix comes before the tokenizer (which may be trained on it), and counting tokens
    # here would encode every document twice. The token shares it gives are counted as the shards are written.
    return mix_documents(tagged, mix.weights, report=mix)


def _cleaned_by_source(sources: list[str], cleaned: dict[str, Any], clean_dir: str | Path,
                       weights: dict[str, float]) -> dict[str, Iterator[Document]]:
    """One stream per source over the cleaned corpus: the merge writes inputs in order, so a source's documents
    are the rows of its inputs (plan_inputs splits each source the same way alone as among the others)."""
    streams = {}
    first_input = first_row = 0
    for source in sources:
        inputs = cleaned["inputs"][first_input:first_input + len(plan_inputs([source]))]
        rows = sum(part["docs_final"] for part in inputs)
        if not rows and weights[source] > 0:
            raise DataError(f"{source}: the clean step kept none of its documents, so the mix can take nothing; "
                            f"see {clean_dir}/report.md, or give this source weight 0 in data.weights")
        streams[source] = read_cleaned(clean_dir, first_row, first_row + rows)
        first_input += len(inputs)
        first_row += rows
    return streams


def _tag_with_source(documents: Iterable[Document], source: str) -> Iterator[Document]:
    for document in documents:
        yield dataclasses.replace(document, meta={**document.meta, MIXED_FROM: source})


# --- the tokenizer ---------------------------------------------------------------------------------------------


def _read_sample(documents: Iterator[Document], cfg: DataConfig,
                 progress: bool) -> tuple[list[Document], Iterator[Document]]:
    """The first cfg.tokenizer_train_bytes of documents, in memory, and all the documents: the sample is put back in
    front of the rest, so the sources are read once. The tokenizer is trained on the sample, and the way the
    validation split is held out is chosen from it."""
    sample: list[Document] = []
    sample_bytes = 0
    with tqdm(desc="read a sample", unit="B", unit_scale=True, disable=_bar_off(progress), leave=False) as bar:
        for document in documents:
            sample.append(document)
            size = len(document.text.encode("utf-8"))
            sample_bytes += size
            bar.update(size)
            if sample_bytes >= cfg.tokenizer_train_bytes:
                break
    return sample, itertools.chain(sample, documents)


def _get_tokenizer(cfg: DataConfig, sample: list[Document], held_out: str,
                   progress: bool) -> tuple[Tokenizer, dict[str, Any]]:
    """Load cfg.tokenizer, or train one on the sample's training text; and a note for the index on where the
    tokenizer came from."""
    if cfg.tokenizer:
        tokenizer = Tokenizer.load(cfg.tokenizer, eos_token=cfg.eos_token, bos_token=cfg.bos_token)
        note = {"loaded_from": str(Path(cfg.tokenizer).resolve()), "eos_token": tokenizer.eos_token,
                "bos_token": tokenizer.bos_token}
        return tokenizer, note
    # Only training text teaches the tokenizer, so nothing about the validation text leaks into it.
    pieces = split_pieces(((d.id, d.text, "") for d in sample), held_out, cfg.val_fraction)
    train_texts = [text for split, text, _ in pieces if split == "train"] or [d.text for d in sample]
    started = time.perf_counter()
    tokenizer = Tokenizer.train(train_texts, cfg.vocab_size, progress=progress and sys.stderr.isatty())
    note = {"trained_on_bytes": sum(len(t.encode("utf-8")) for t in train_texts)}
    report(f"prepare: trained a {tokenizer.vocab_size:,}-token tokenizer on {note['trained_on_bytes'] / 1e6:.1f} MB "
          f"in {time.perf_counter() - started:.1f} s")
    return tokenizer, note


def _bar_off(progress: bool) -> bool | None:
    """tqdm's `disable`: None hides the bar when stderr is not a terminal, so logs hold no bar residue."""
    return None if progress else True


def _no_documents_message(cfg: DataConfig, skips: SkipLog) -> str:
    sources = ", ".join(cfg.sources) or "stdlib"
    skipped = f" ({'; '.join(skips.summary_lines())})" if skips.total else ""
    return (f"{sources}: no usable documents{skipped}; point --source at folders or files with text "
            f"(folders are read for data.extensions = {', '.join(cfg.extensions)})")


# --- encoding on every core, in order ------------------------------------------------------------------------


def _write_shards(data_dir: Path, cfg: DataConfig, tokenizer: Tokenizer, documents: Iterable[Document],
                  held_out: str, progress: bool) -> tuple[dict[str, dict[str, Any]], Counter]:
    """Each split's shard figures, and the tokens (EOS included) written from each mixed source."""
    writers = {split: ShardWriter(data_dir, split, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id,
                                  bos_id=tokenizer.bos_id) for split in SPLITS}
    labelled = split_pieces(((d.id, d.text, d.meta.get(MIXED_FROM, "")) for d in documents), held_out,
                            cfg.val_fraction)
    workers = cfg.workers or len(os.sched_getaffinity(0))
    tokens_by_source: Counter = Counter()
    with tqdm(desc=f"encode ({workers} workers)", unit="B", unit_scale=True, disable=_bar_off(progress)) as bar:
        for encoded in encode_in_order(text_chunks(labelled), tokenizer, workers):
            for split, num_bytes, ids, source in encoded:
                writers[split].add(ids, num_bytes)
                tokens_by_source[source] += len(tokenizer.document_start) + len(ids) + 1  # as written
                bar.update(num_bytes)
    return {split: writer.close() for split, writer in writers.items()}, tokens_by_source


def _encode_as_tasks(data_dir: Path, key: str, cfg: DataConfig, cleaned: dict[str, Any], clean_dir: str | Path,
                     tokenizer: Tokenizer, tokenizer_note: dict[str, Any], held_out: str, engine: EngineConfig,
                     eval_ngrams: EvalNgrams | None) -> tuple[dict[str, dict[str, Any]], Counter, MixReport | None,
                                                              Counter]:
    """Tokenize the cleaned corpus as tasks of the engine (see encode.py); each split's shard figures, the tokens
    from each mixed source, what the mix took, and what decontamination dropped."""
    from nextword.data.engine import Stage, run_stages  # here: datatrove is needed only to run the tasks

    units, ended_by = plan_units(cleaned, clean_dir, cfg.sources, cfg.weights)
    (data_dir / UNITS_DIR).mkdir(exist_ok=True)
    write_text_atomically(data_dir / UNITS_DIR / UNITS_STARTED, json.dumps({"key": key, "tokenizer": tokenizer_note}))
    if not all(unit_file(data_dir, n).exists() for n in range(len(units))):
        step = EncodeUnits(units, str(data_dir), tokenizer.to_json(), tokenizer.eos_token, tokenizer.bos_token,
                           held_out, cfg.val_fraction, eval_ngrams)
        tasks = engine.tasks or (engine.workers or len(os.sched_getaffinity(0)) if engine.executor == "local"
                                 else len(units))
        if not run_stages([Stage(step, max(1, min(tasks, len(units))))], engine, data_dir / "logs", report):
            raise DataError(f"prepare: the encode tasks were submitted to Slurm; once they finish, run this command "
                            f"again to write the index of {data_dir}")
    return gather_units(data_dir, len(units), dict(zip(cfg.sources, cfg.weights)), ended_by)


def text_chunks(labelled: Iterable[tuple[str, str, str]]) -> Iterator[list[tuple[str, str, str]]]:
    """(split, text, source) items in chunks of about CHUNK_BYTES characters or CHUNK_DOCUMENTS documents."""
    chunk: list[tuple[str, str, str]] = []
    chunk_chars = 0
    for item in labelled:
        chunk.append(item)
        chunk_chars += len(item[1])
        if chunk_chars >= CHUNK_BYTES or len(chunk) >= CHUNK_DOCUMENTS:
            yield chunk
            chunk, chunk_chars = [], 0
    if chunk:
        yield chunk


def encode_in_order(chunks: Iterable[list[tuple[str, str, str]]], tokenizer: Tokenizer,
                    workers: int) -> Iterator[list[tuple[str, int, np.ndarray, str]]]:
    """Encode chunks of (split, text, source) on `workers` processes, yielding results in input order.

    Each result is a list of (split, UTF-8 bytes of the text, token ids as the shard dtype, source). Order is
    kept, so the shards come out byte-identical whatever the number of workers.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    if workers <= 1:
        with _tokenizers_parallelism_off():
            _start_worker(tokenizer.to_json(), tokenizer.eos_token, tokenizer.bos_token, dtype.str)
            yield from map(_encode_chunk, chunks)
        return
    with _tokenizers_parallelism_off(), _worker_context().Pool(
            workers, initializer=_start_worker,
            initargs=(tokenizer.to_json(), tokenizer.eos_token, tokenizer.bos_token, dtype.str)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= CHUNKS_IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _worker_context() -> BaseContext:
    """Encoding workers start from a server process that has imported this module, not by forking this one: a
    fork of a process with threads (fsspec's I/O loop for a URL source, a progress bar's monitor) can copy a lock
    some thread held, and the worker then hangs forever."""
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


@contextmanager
def _tokenizers_parallelism_off() -> Iterator[None]:
    """Each worker encodes on one thread, so `workers` is the number of cores used; and with the variable set,
    `tokenizers` forks quietly instead of warning that it turns its thread pool off. The library reads the
    variable at every batch call, so setting it here takes effect at once."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


_worker_tokenizer: Tokenizer | None = None
_worker_dtype: np.dtype | None = None


def _start_worker(tokenizer_json: str, eos_token: str, bos_token: str | None, dtype: str) -> None:
    global _worker_tokenizer, _worker_dtype
    _worker_tokenizer = Tokenizer.from_json(tokenizer_json, eos_token=eos_token, bos_token=bos_token)
    _worker_dtype = np.dtype(dtype)


def _encode_chunk(chunk: list[tuple[str, str, str]]) -> list[tuple[str, int, np.ndarray, str]]:
    # One batch call per chunk: the batch encoder skips character offsets, about 30% faster than encode().
    all_ids = _worker_tokenizer.encode_batch([text for _, text, _ in chunk])
    return [(split, len(text.encode("utf-8")), np.asarray(ids, dtype=_worker_dtype), source)
            for (split, text, source), ids in zip(chunk, all_ids)]


# --- the report ------------------------------------------------------------------------------------------------


def summary_lines(data_dir: Path, index: dict[str, Any], skips: SkipLog, seconds: float) -> list[str]:
    train, val = index["splits"]["train"], index["splits"]["val"]
    by_tails = index.get("val_held_out") == BY_TAILS
    # Held out by tails, a document's head and tail are one document in each split.
    documents = train["documents"] if by_tails else train["documents"] + val["documents"]
    text_bytes = train["bytes"] + val["bytes"]
    tokens = train["tokens"] + val["tokens"]
    note = index["tokenizer"]
    made = (f"trained on {note['trained_on_bytes'] / 1e6:.1f} MB"
            if "trained_on_bytes" in note else f"loaded from {note['loaded_from']}")
    if note.get("bos_token"):
        made += f"; each document is {note['bos_token']} text {note['eos_token']}"
    elif note.get("eos_token", EOS) != EOS:
        made += f"; {note['eos_token']} ends each document"
    lines = [
        f"prepared {data_dir} in {seconds:.1f} s ({text_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)",
        f"  documents   {documents:,} (train {train['documents']:,}, val {val['documents']:,})",
        f"  text        {text_bytes / 1e6:.1f} MB",
        f"  tokens      {tokens:,} (train {train['tokens']:,}, val {val['tokens']:,}), "
        f"{text_bytes / max(tokens, 1):.2f} bytes per token (EOS included)",
        f"  vocabulary  {index['vocab_size']:,} tokens, {index['dtype']} shards, tokenizer {made}",
    ]
    if not index.get("tokenizer_lossless", True):
        lines.append("  note        this tokenizer does not give back every text it encodes (decode(encode(text)) can "
                     "differ, e.g. in spaces); bits per byte still count the original text's bytes")
    if by_tails:
        lines.append(f"  val         the last {index['val_fraction']:.0%} of each document, cut at a paragraph or line "
                     "break (too few documents to hold out whole ones)")
    lines += [f"  {line}" for line in skips.summary_lines()]
    if "clean" in index:
        c = index["clean"]
        skipped = f"; {c['skipped']:,} files or records skipped while reading" if c.get("skipped") else ""
        lines.append(f"  clean       {c['docs_final']:,} of {c['docs_read']:,} documents kept "
                     f"({c['bytes_final'] / 1e6:.1f} of {c['bytes_read'] / 1e6:.1f} MB){skipped}; see {c['report']}")
    if "decontamination" in index:
        d = index["decontamination"]
        lines.append(f"  decontam.   {d['documents_dropped']:,} of {d['documents_checked']:,} documents dropped "
                     f"({d['bytes_dropped'] / 1e6:.2f} MB): each shared a {d['ngram']}-gram of words with "
                     f"{', '.join(d['eval'])}")
    if "mix" in index:
        lines.append(f"  mix         shares by bytes (mixed until {index['mix']['ended_by']} ran out; "
                     "the rest is left out):")
        for source, share in index["mix"]["sources"].items():
            lines.append(f"    {share['weight']:6.1%} wanted, {share['bytes_share']:6.1%} of bytes, "
                         f"{share['token_share']:6.1%} of tokens, {share['documents']:,} documents: {source}")
    if not val["documents"]:
        lines.append("  warning: no document landed in the val split; add documents or raise data.val_fraction")
    return lines


def _clean_summary(stats: dict[str, Any], clean_dir: str | Path) -> dict[str, Any]:
    return {"dir": str(clean_dir), "report": f"{clean_dir}/report.md", "docs_final": stats["docs_final"],
            "bytes_final": stats["bytes_final"], "docs_read": sum(p["docs_read"] for p in stats["inputs"]),
            "bytes_read": sum(p["bytes_read"] for p in stats["inputs"]),
            "skipped": sum(stats["reader_skips"].values())}


def _mix_summary(mix: MixReport, tokens_by_source: Counter) -> dict[str, Any]:
    """What each source was meant to give and gave: its weight, its share of the bytes and of the tokens."""
    total_weight = sum(mix.weights.values())
    total_tokens = sum(tokens_by_source[source] for source in mix.weights) or 1
    byte_shares = mix.shares()
    sources = {source: {"weight": weight / total_weight, "bytes_share": byte_shares[source],
                        "token_share": tokens_by_source[source] / total_tokens, "documents": mix.docs[source],
                        "bytes": mix.taken[source], "tokens": tokens_by_source[source]}
               for source, weight in mix.weights.items()}
    return {"unit": "bytes", "ended_by": mix.exhausted, "sources": sources}
