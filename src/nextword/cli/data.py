"""Web-scale data: fetch Common Crawl WET files, and clean raw sources into a deduplicated corpus.

  nextword data fetch-cc --crawl CC-MAIN-2024-22 --files 2 --out cc/
  nextword data clean --source cc/ --source code:~/src/project --source books/ --out clean/ --workers 4
  nextword data clean --source cc/ --out clean/ --task-index 3 --num-tasks 16   (one task of a cluster array)
  nextword data clean --merge --out clean/                                        (after every task finished)

The cleaned folder holds docs_NNNNN.parquet, stats.json and report.md (kept and dropped per source and rule).
Clean settings are set as --clean.FIELD VALUE, e.g. --clean.languages en,de --clean.min_words 30.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from nextword.config import CleanConfig, RunConfig, apply_overrides
from nextword.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = sub.add_parser("fetch-cc", help="download the first N WET files of a Common Crawl crawl")
    fetch.add_argument("--crawl", required=True, help="crawl name, e.g. CC-MAIN-2024-22")
    fetch.add_argument("--files", type=int, default=1, help="how many WET files (default 1; each is ~150 MB)")
    fetch.add_argument("--out", default="data/commoncrawl", help="folder for the downloads")
    fetch.add_argument("--base-url", default=None, help="mirror to download from (default data.commoncrawl.org)")
    fetch.add_argument("--retries", type=int, default=5)

    clean = sub.add_parser("clean", help="read → extract → filter → dedup into cleaned parquet shards")
    clean.add_argument("--source", action="append", dest="sources", default=[], metavar="PATH",
                       help="a WARC/WET file or folder, code:REPO, or a text/JSONL/parquet source (repeatable)")
    clean.add_argument("--out", required=True, help="output folder (parts, shards, stats.json, report.md)")
    clean.add_argument("--workers", type=int, default=0, help="worker processes (0: every core)")
    clean.add_argument("--task-index", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")))
    clean.add_argument("--num-tasks", type=int, default=1)
    clean.add_argument("--merge", action="store_true", help="only merge the parts the tasks wrote")


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch-cc":
        from nextword.data.fetch import DEFAULT_BASE_URL, FetchOptions, fetch_cc

        options = FetchOptions(base_url=args.base_url or DEFAULT_BASE_URL, retries=args.retries)
        fetch_cc(args.crawl, args.files, args.out, options)
        return 0
    from nextword.data.clean import clean, merge

    overrides = getattr(args, "overrides", {}) or {}
    cfg = clean_config(overrides)
    if args.merge:
        stats = merge(args.out, cfg if overrides else None)  # None: the settings the tasks recorded
    else:
        if not args.sources:
            raise ConfigError("nextword data clean: give at least one --source (or --merge)")
        workers = args.workers or len(os.sched_getaffinity(0))
        stats = clean(args.sources, args.out, cfg, workers=workers, task_index=args.task_index,
                      num_tasks=args.num_tasks)
    if stats is not None:
        print(f"clean: {stats['docs_final']} documents ({stats['bytes_final'] / 1e6:.2f} MB) in {args.out}; "
              f"see {args.out}/report.md")
    return 0


def clean_config(overrides: dict[str, str]) -> CleanConfig:
    """CleanConfig from --clean.FIELD VALUE overrides, read as `nextword train` reads its [clean] section."""
    names = [f.name for f in dataclasses.fields(CleanConfig)]
    for key in overrides:
        section, _, name = key.partition(".")
        if section != "clean" or name not in names:
            raise ConfigError(f"--{key}: unknown setting; clean settings are --clean.FIELD ({', '.join(names)})")
    return apply_overrides(RunConfig(), overrides).clean.validate()
