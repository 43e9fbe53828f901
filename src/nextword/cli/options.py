"""The options several commands share: the config options, --SECTION.FIELD VALUE overrides of any config field, the
device a trained model runs on, and where the data path's tasks run.

A config-driven command builds its RunConfig in one order: the config file (or a base), then the preset, then the
named options, then the overrides, which config.apply_overrides converts to each field's type.
"""

from __future__ import annotations

import argparse

from nextword.config import EXECUTORS, RunConfig, apply_overrides, load, model_preset


def parse_overrides(parser: argparse.ArgumentParser, unknown: list[str]) -> dict[str, str]:
    """Turn `--train.lr 3e-4` and `--train.lr=3e-4` into {"train.lr": "3e-4"}; anything else is an error."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(unknown):
        token = unknown[i]
        if not token.startswith("--") or "." not in token.split("=")[0]:
            parser.error(f"unrecognized argument {token!r} (config fields are set as --SECTION.FIELD VALUE)")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(unknown):
                parser.error(f"{token} needs a value")
            key, value = token[2:], unknown[i + 1]
            i += 2
        overrides[key] = value
    return overrides


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every config-driven command shares."""
    group = parser.add_argument_group("config")
    group.add_argument("--config", metavar="FILE", help="a TOML run config ([model], [data], [train], [eval])")
    group.add_argument("--preset", metavar="NAME", help="a model shape by name: tiny, small, gpt2-124m, "
                       "gpt2-350m, llama-150m, llama-1b, moe-tiny (a mixture of experts), llama4-scout")
    group.add_argument("--source", action="append", metavar="PATH", dest="sources",
                       help="a folder, or a .txt, .jsonl[.gz|.zst], .parquet or WARC/WET file to read, local or a "
                            "URL (https://, s3://, hf://datasets/...) (repeatable); default: the embedded corpus, "
                            "Python's standard library; a text file over 4 MiB is read as documents cut at blank "
                            "lines (at spaces where it has none)")
    group.add_argument("--doc-separator", metavar="TEXT", help="the text that ends each document in the text files, "
                       "e.g. '<|endoftext|>' (TinyStories): they are cut there, and it never reaches the tokenizer "
                       "(data.doc_separator)")
    parser.epilog = ((parser.epilog or "") + "\nAny config field can be set as --SECTION.FIELD VALUE, "
                     "e.g. --train.lr 3e-4 --model.n_layers 6.").strip()


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device for a command that runs a trained model, with train.device's default."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: a GPU if there "
                        "is one)")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """--executor, --tasks, --workers: the [engine] settings a data command runs its stages under."""
    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="where the tasks run: this machine (default), a Slurm cluster (sbatch array jobs, "
                        "one per stage) or a Ray cluster; see docs/scale.md")
    parser.add_argument("--tasks", type=int, default=None, metavar="N",
                        help="tasks each stage is split into (default: one per worker on this machine, one per "
                        "input on a cluster)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="tasks running at once (and in prepare, processes encoding) (default: every core here; no "
                        "limit on a cluster)")


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """Config file (or `base`), then the preset, then named options, then --SECTION.FIELD overrides."""
    cfg = load(args.config) if getattr(args, "config", None) else (base or RunConfig())
    if getattr(args, "preset", None):
        cfg.model = model_preset(args.preset)
    if getattr(args, "sources", None):
        cfg.data.sources = list(args.sources)
    if getattr(args, "doc_separator", None):
        cfg.data.doc_separator = args.doc_separator
    apply_overrides(cfg, getattr(args, "overrides", {}) or {})
    return cfg.validate()
