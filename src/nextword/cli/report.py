"""Plots and one page for a run, from its log.jsonl and config.toml.

Writes RUN/report/index.html (or DIR/index.html with --out DIR) and PNG plots beside it: training and validation
loss against tokens seen, with the ln V of an untrained model; bits per byte; the learning rate; tokens/s and
MFU. Then the downstream tasks' scores where `nextword eval --tasks` has measured some, the samples from each
evaluation in order, so the move from noise to words is visible, and the run's hardware, precision, config and
final summary. Works on a run still training: what is not there yet is a note.
"""

from __future__ import annotations

import argparse

from nextword.tools.report import write_report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run directory (what `nextword train --run-dir` wrote)")
    parser.add_argument("--out", metavar="DIR", help="where to write index.html and the plots (default RUN/report)")


def run(args: argparse.Namespace) -> int:
    page = write_report(args.run_dir, args.out)
    print(f"wrote {page}")
    return 0
