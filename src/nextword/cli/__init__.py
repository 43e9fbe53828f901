"""`nextword <command>`: one thin layer over the library.

Each command lives in its own module, cli/<command>.py, which provides `configure(parser)` to declare its
arguments and `run(args) -> int` to do the work; its docstring is the command's --help description. The options
several commands share are in cli/options.py. Only the chosen command's module is imported, so `nextword --help`
is quick.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from typing import Sequence

# Threads that reach the end of a parallel region first sleep instead of spinning (OpenMP's default spins). On an
# idle machine that costs nothing measurable, but when another process shares the cores a spinning thread holds a
# core the slower thread needs: with one busy process beside it on 2 cores, a training step of the default model
# took 4.3 s spinning and 1.2 s sleeping (0.74 and 0.76 s on the idle machine). It must be set before torch loads
# its OpenMP runtime, which no import above does; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from nextword import __version__
from nextword.cli.options import parse_overrides
from nextword.errors import NextwordError

PROCESS_START = time.monotonic()  # a time budget counts the whole command, imports included

# name: (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("nextword.cli.prepare", "sources → tokenizer → token shards, with a stats report"),
    "data": ("nextword.cli.data", "web-scale data: fetch Common Crawl, clean and deduplicate a corpus"),
    "train": ("nextword.cli.train", "pretrain a model; resumes from the run directory if a checkpoint is there"),
    "sample": ("nextword.cli.sample", "generate text from a trained run"),
    "eval": ("nextword.cli.eval", "loss, perplexity and bits per byte on held-out text"),
    "trace": ("nextword.cli.trace", "walk one training step with its real numbers"),
    "plan": ("nextword.cli.plan", "FLOPs, memory, GPU-hours and cost of a run, from first principles"),
    "export": ("nextword.cli.export", "write a Hugging Face transformers model directory"),
    "report": ("nextword.cli.report", "plots and a page for a run"),
    "compare": ("nextword.cli.compare", "train variants of data or recipe with several seeds; means, intervals, p-values"),
}

EPILOG = """\
Start here:
  nextword train                  prepare the embedded corpus (Python's standard library) and train on it
  nextword sample runs/default    generate text from what it learned
  nextword trace runs/default     walk one training step with its real numbers

Run `nextword COMMAND --help` for a command's options."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        return 0
    if argv[0] == "--version":
        print(f"nextword {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"nextword: unknown command {name!r}; commands are: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"nextword {name}", description=(module.__doc__ or summary).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.configure(parser)
    args, unknown = parser.parse_known_args(rest)
    args.overrides = parse_overrides(parser, unknown)
    try:
        return int(module.run(args) or 0)
    except NextwordError as e:
        print(f"nextword {name}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nnextword {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly as Unix tools do, and keep Python's exit-time flush of
        # stdout from raising the same error again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + int(signal.SIGPIPE)


def _overview() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"nextword {__version__}: pretrain decoder-only language models by next-token prediction.", "",
             "usage: nextword COMMAND [options]", "", "commands:"]
    lines += [f"  {n.ljust(width)}  {summary}" for n, (_, summary) in COMMANDS.items()]
    return "\n".join(lines + ["", EPILOG])
