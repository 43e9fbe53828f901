"""Web-scale data: fetch Common Crawl WET files, and clean raw sources into a deduplicated corpus.

  nextword data fetch-cc --crawl CC-MAIN-2024-22 --files 2 --out cc/
  nextword data clean --source cc/ --source code:~/src/project --source books/ --out clean/ --workers 4
  nextword data clean --source cc/ --out /shared/clean --executor slurm --tasks 64 --engine.slurm_partition cpu
  nextword data clean --source cc/ --out /shared/clean --executor ray --tasks 64 --engine.ray_address auto
  nextword data clean --source s3://bucket/cc/ --out s3://bucket/clean --executor ray --tasks 64

The stages run as datatrove jobs (see nextword.data.engine); the output is the same under every executor and
task count. Run the same command again to finish a job that died: finished work is kept.
The cleaned folder holds docs_*.parquet, stats.json and report.md (kept and dropped per source and rule).
Clean settings are set as --clean.FIELD VALUE, e.g. --clean.languages en,de --clean.min_words 30; engine
settings as --engine.FIELD VALUE (slurm_partition, slurm_time, slurm_cpus_per_task, slurm_mem_per_cpu_gb,
slurm_env_command, ray_address, ray_cpus_per_task, logs).
"""

from __future__ import annotations

import argparse
import dataclasses

from nextword.cli import options
from nextword.config import CleanConfig, EngineConfig, RunConfig, apply_overrides
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
    clean.add_argument("--out", required=True, help="output folder (parts, shards, stats.json, report.md): a path "
                       "or a URL (s3://BUCKET/PATH, hf://datasets/..., file://...)")
    options.add_engine_arguments(clean)


def run(args: argparse.Namespace) -> int:
    if args.action == "fetch-cc":
        from nextword.data.fetch import DEFAULT_BASE_URL, FetchOptions, fetch_cc

        options = FetchOptions(base_url=args.base_url or DEFAULT_BASE_URL, retries=args.retries,
                               parallel=args.parallel)
        fetch_cc(args.crawl, args.files, args.out, options)
        return 0
    from nextword.data.clean import clean

    overrides = getattr(args, "overrides", {}) or {}
    cfg = run_config(overrides)
    if not args.sources:
        raise ConfigError("nextword data clean: give at least one --source")
    stats = clean(args.sources, args.out, cfg.clean, engine=engine_config(cfg.engine, args))
    if stats is not None:
        print(f"clean: {stats['docs_final']} documents ({stats['bytes_final'] / 1e6:.2f} MB) in {args.out}; "
              f"see {args.out}/report.md")
    return 0


def engine_config(engine: EngineConfig, args: argparse.Namespace) -> EngineConfig:
    """The [engine] settings with --executor, --tasks and --workers applied where given."""
    named = {name: getattr(args, name) for name in ("executor", "tasks", "workers")
             if getattr(args, name, None) is not None}
    return dataclasses.replace(engine, **named).validate()


def run_config(overrides: dict[str, str]) -> RunConfig:
    """The [clean] and [engine] settings from --clean.FIELD and --engine.FIELD overrides, read as `nextword train`
    reads those sections."""
    allowed = {"clean": CleanConfig, "engine": EngineConfig}
    for key in overrides:
        section, _, name = key.partition(".")
        if section not in allowed or name not in [f.name for f in dataclasses.fields(allowed[section])]:
            names = [f"--{s}.{f.name}" for s in allowed for f in dataclasses.fields(allowed[s])][:6]
            raise ConfigError(f"--{key}: unknown setting; data clean takes --clean.FIELD and --engine.FIELD "
                              f"({', '.join(names)}, ...)")
    cfg = apply_overrides(RunConfig(), overrides)
    cfg.clean.validate()
    return cfg
