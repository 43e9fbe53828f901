"""Documents per second per core for read → extract → filter → dedup on a local WARC, beside datatrove.

The WARC is made here: `pydoc -w` writes HTML pages for standard-library modules, a loopback `http.server` serves
them, and `wget --recursive --warc-file` crawls them. Both pipelines then run in one process on that file:
- nextword: read_web (FastWARC + resiliparse or trafilatura) → FilterChain (Gopher repetition and quality, C4,
  FineWeb) → MinHash dedup (Deduplicator);
- datatrove: WarcReader → Trafilatura → GopherRepetitionFilter → GopherQualityFilter → C4QualityFilter (terminal
  punctuation off, as FineWeb) → FineWebQualityFilter. Its MinHash dedup is a four-stage disk pipeline, so it is
  left out of its timing (which flatters datatrove). Language id is off in both: datatrove's downloads its model.
Agreement is the share of pages (by URL) on which both pipelines make the same keep/drop decision.

    .venv/bin/python benchmarks/web_pipeline.py --modules 150
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RULES = ["gopher_repetition", "gopher_quality", "c4", "fineweb"]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def make_warc(work: Path, modules: int) -> Path:
    site = work / "site"
    site.mkdir()
    names = sorted(m for m in sys.stdlib_module_names if not m.startswith("_"))[:modules]
    subprocess.run([sys.executable, "-m", "pydoc", "-w", *names], cwd=site, capture_output=True)
    handler = partial(QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        subprocess.run(["wget", "-q", "--recursive", "--level=2", "--no-parent", "--directory-prefix",
                        str(work / "mirror"), f"--warc-file={work / 'crawl'}",
                        f"http://127.0.0.1:{server.server_port}/"], check=False)
    finally:
        server.shutdown()
    return work / "crawl.warc.gz"


def run_nextword(warc: Path, extractor: str) -> tuple[float, int, set[str]]:
    from nextword.data.dedup import Deduplicator, MinHasher, exact_key
    from nextword.data.filters import CleanConfig, FilterChain
    from nextword.data.sources import SkipLog
    from nextword.data.web import read_web

    cfg = CleanConfig(extractor=extractor)
    chain, hasher = FilterChain(RULES, cfg), MinHasher()
    dedup = Deduplicator(hasher)
    start, docs, kept = time.perf_counter(), 0, set()
    for doc in read_web(warc, SkipLog(), extractor=extractor):
        docs += 1
        text = chain.apply(doc.text)
        if text is not None and dedup.check(doc.id, exact_key(text), hasher.signature(text)).keep:
            kept.add(doc.meta["url"])
    return time.perf_counter() - start, docs, kept


def run_datatrove(warc: Path) -> tuple[float, int, set[str]]:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)
    from datatrove.pipeline.readers import WarcReader

    steps = [WarcReader(str(warc.parent), glob_pattern=warc.name), Trafilatura(favour_precision=True),
             GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
             FineWebQualityFilter()]
    start, read, kept = time.perf_counter(), [], set()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
        stream = _counted(steps[0].run(None, 0, 1), read)
        for step in steps[1:]:
            stream = step.run(stream, 0, 1)
        for doc in stream:
            kept.add(doc.metadata.get("url", doc.id))
    return time.perf_counter() - start, len(read), kept


def _counted(stream, seen: list):
    for doc in stream:
        seen.append(doc.id)
        yield doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        warc = make_warc(Path(tmp), args.modules)
        rows = []
        urls_total = None
        for name, runner in [("nextword (resiliparse)", partial(run_nextword, warc, "resiliparse")),
                             ("nextword (trafilatura)", partial(run_nextword, warc, "trafilatura")),
                             ("datatrove (trafilatura)", partial(run_datatrove, warc))]:
            try:
                seconds, docs, kept = runner()
            except Exception as e:  # report a pipeline that could not run instead of hiding the others
                import traceback

                traceback.print_exc()
                rows.append((name, f"not run: {type(e).__name__}: {e}"[:100], None))
                continue
            urls_total = urls_total or docs
            rows.append((name, f"{docs} docs, {seconds:.2f} s, {docs / seconds:.1f} docs/s/core, kept {len(kept)}",
                         kept))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    capability = "avx512_bf16" if "avx512_bf16" in flags else "avx512f" if "avx512f" in flags else "avx2"
    print(f"# web pipeline benchmark — {datetime.date.today()} — {cpu} ({capability}), 1 process")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print("| pipeline | result | agreement with datatrove |")
    print("|---|---|---|")
    reference = rows[-1][2]
    for name, result, kept in rows:
        agreement = ""
        if kept is not None and reference is not None and urls_total:
            agreement = f"{1 - len(kept ^ reference) / urls_total:.3f}"
        print(f"| {name} | {result} | {agreement} |")


if __name__ == "__main__":
    main()
