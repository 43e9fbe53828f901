"""Web-scale data: fetch Common Crawl WET files, and clean raw sources into a deduplicated corpus.

  nextword data fetch-cc --crawl CC-MAIN-2024-22 --files 2 --out cc/
  nextword data clean --source cc/ --source code:~/src/project --source books/ --out clean/ --workers 4
  nextword data clean --source cc/ --out clean/ --task-index 3 --num-tasks 16   (one task of a cluster array)
  sbatch --array=0-15 --wrap "nextword data clean --source cc/ --out clean/"     (task and count from SLURM)
  nextword data clean --merge --out clean/                                        (after every task finished)

The cleaned folder holds docs_NNNNN.parquet, stats.json and report.md (kept and dropped per source and rule).
Clean settings are set as --clean.FIELD VALUE, e.g. --clean.languages en,de --clean.min_words 30.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping

from nextword.config import CleanConfig, RunConfig, apply_overrides
from nextword.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = sub.add_parser("fetch-cc", help="download the first N WET files of a Common Crawl crawl")
    fetch.add_argument("--crawl", required=True, help="crawl name, e.g. CC-MAIN-2024-22")
    fetch.add_argument("--files", type=int, default=1, help="how many WET files (default 1; each is ~150 MB)")
    fetch.add_argument("--out", default="data/commoncrawl", help="folder for the downloads")
    fetch.add_argument("--base-url", default=None, help="mirror to download from (default data.commoncrawl.org)")
    fetch.add_argument("--retries", type=int, default=5, help="attempts after the first, per file (default 5)")
    fetch.add_argument("--parallel", type=int, default=4, metavar="N", help="files downloading at once (default 4)")

    clean = sub.add_parser("clean", help="read → extract → filter → dedup into cleaned parquet shards")
    clean.add_argument("--source", action="append", dest="sources", default=[], metavar="PATH",
                       help="a WARC/WET file or folder (local or a URL), code:REPO, or a text/JSONL/parquet source "
                            "(repeatable)")
    clean.add_argument("--out", required=True, help="output folder (parts, shards, stats.json, report.md)")
    clean.add_argument("--workers", type=int, default=0, help="worker processes (0: every core)")
    clean.add_argument("--task-index", type=int, help="this task's number, 0 to --num-tasks - 1 (default: its "
                       "place in a SLURM job array, else 0)")
    clean.add_argument("--num-tasks", type=int, help="how many tasks share the inputs (default: the size of the "
                       "SLURM job array, else 1)")
    clean.add_argument("--merge", action="store_true", help="only merge the parts the tasks wrote")


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch-cc":
        from nextword.data.fetch import DEFAULT_BASE_URL, FetchOptions, fetch_cc

        options = FetchOptions(base_url=args.base_url or DEFAULT_BASE_URL, retries=args.retries,
                               parallel=args.parallel)
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
        task_index, num_tasks = task_of_array(args.task_index, args.num_tasks, os.environ)
        stats = clean(args.sources, args.out, cfg, workers=workers, task_index=task_index, num_tasks=num_tasks)
    if stats is not None:
        print(f"clean: {stats['docs_final']} documents ({stats['bytes_final'] / 1e6:.2f} MB) in {args.out}; "
              f"see {args.out}/report.md")
    return 0


def task_of_array(task_index: int | None, num_tasks: int | None, env: Mapping[str, str]) -> tuple[int, int]:
    """This task's number and the number of tasks: as given, else from a SLURM job array's own variables, so that
    a 1-based array (--array=1-16) or one with a step (--array=0-30:2) numbers its tasks 0 … count - 1."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return (task_index or 0), (num_tasks or 1)
    array_id = int(env["SLURM_ARRAY_TASK_ID"])
    first, step = int(env.get("SLURM_ARRAY_TASK_MIN", "0")), int(env.get("SLURM_ARRAY_TASK_STEP", "1"))
    count = int(env.get("SLURM_ARRAY_TASK_COUNT", "1"))
    place, off_step = divmod(array_id - first, step)
    if task_index is None and (off_step or not 0 <= place < count):
        raise ConfigError(f"SLURM array task {array_id} is not at a regular place of an array from {first} in steps "
                          f"of {step} ({count} tasks); pass --task-index and --num-tasks yourself")
    return (place if task_index is None else task_index), (count if num_tasks is None else num_tasks)


def clean_config(overrides: dict[str, str]) -> CleanConfig:
    """CleanConfig from --clean.FIELD VALUE overrides, read as `nextword train` reads its [clean] section."""
    names = [f.name for f in dataclasses.fields(CleanConfig)]
    for key in overrides:
        section, _, name = key.partition(".")
        if section != "clean" or name not in names:
            raise ConfigError(f"--{key}: unknown setting; clean settings are --clean.FIELD ({', '.join(names)})")
    return apply_overrides(RunConfig(), overrides).clean.validate()
