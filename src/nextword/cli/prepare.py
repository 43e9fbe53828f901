"""Turn sources into token shards: read documents, train (or load) a tokenizer, encode on every core, write shards.

With no options this prepares the embedded default corpus, Python's standard library. With data.clean the sources
are first cleaned (extracted, filtered, deduplicated, by the [clean] settings) into DATA_DIR/clean/, and with
data.weights each source's documents are mixed to its share. The result is cached: a data dir records a key made
from the inputs and the settings that change its output, and a later run with the same key reuses it instead of
doing the work again. Every message goes to stderr, so a command whose stdout is data stays clean.
"""

from __future__ import annotations

import argparse

from nextword.cli.options import add_config_arguments, add_engine_arguments, config_from_args
from nextword.data.prepare import prepare


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--data-dir", metavar="DIR", help="write the shards here (default: a cache folder "
                        "named by the inputs, under $NEXTWORD_CACHE or ~/.cache/nextword)")
    parser.add_argument("--vocab-size", type=int, metavar="N", help="tokens in the trained tokenizer (default 8192)")
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    named = {"data.data_dir": args.data_dir, "data.vocab_size": args.vocab_size, "data.workers": args.workers,
             "engine.executor": args.executor, "engine.tasks": args.tasks}
    # Named options first, so an explicit --data.FIELD override still wins.
    args.overrides = {**{k: str(v) for k, v in named.items() if v is not None}, **(args.overrides or {})}
    cfg = config_from_args(args)
    prepare(cfg.data, clean=cfg.clean, engine=cfg.engine, progress=True)
    return 0
