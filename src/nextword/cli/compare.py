"""Train and score variants of the data or the recipe at one budget, with several seeds each, and say which
differences to the baseline are real: the ablation models FineWeb and DCLM chose their filters with.

SPEC.toml names the variants and how to compare them:

  [compare]
  baseline = "clean"
  budget = "tokens:2M"        # or "flops:1e14", or "time:120s"; tokens or FLOPs give the same result anywhere
  seeds = 3                   # seed s starts every variant from the same weights
  eval = ["held_out/news.txt", "held_out/code/"]   # texts no variant trains on; a folder counts as one text
  tasks = []                  # lm-eval tasks too (needs nextword[downstream]); task_limit = N examples each
  [model]                     # settings all variants share: any run config section, as in a config file
  n_layers = 2
  [variant.clean]             # each variant: overrides of the run config, as dotted keys
  data.sources = ["crawl/"]
  data.clean = true
  [variant.raw]
  data.sources = ["crawl/"]
  data.clean = false

Every run trains the same model shape (the spec's, or the default one) to the same budget. Each distinct data
setting is prepared once, and every evaluation text is kept out of every variant's training data: a training
document that shares a 13-gram of words with one is dropped (the counts are in the table). Runs under a token or
FLOPs budget train in parallel processes, one a core ([engine] workers caps them), as tasks of datatrove's local
executor ([engine] executor = "slurm" or "ray" makes each run a task on a cluster); under a time budget, or on a
GPU, one at a time. A line shows the runs done, running and left, and about how long the rest will take. Paths in
the spec are relative to the current folder, as in a config file.

The table gives, per variant and evaluation text, the mean bits per byte over seeds ± half its 95% interval, the
difference to the baseline (variant minus baseline: above 0 is worse) with the p-value of Student's t paired by
seed, the tokens one run trained, how many times it read its data, and the documents decontamination dropped.
OUT/compare.json holds the same figures and each seed's value; OUT/index.html the table with each run's
validation curve and the final scores.

Killed, it resumes: each run lives in OUT/runs/KEY, keyed by its resolved config, its seed and its data, so the
same command keeps the finished runs, and after an edit to the spec only what changed trains again.
"""

from __future__ import annotations

import argparse

from nextword.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC.toml", help="the variants and how to compare them (see above)")
    parser.add_argument("--out", metavar="DIR",
                        help="where the runs, compare.json and index.html go (default runs/compare-SPEC)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars while preparing the data")


def run(args: argparse.Namespace) -> int:
    from nextword.tools.compare import RESULT_FILE, compare, format_table

    if args.overrides:
        raise ConfigError("nextword compare takes its settings from the spec; put --SECTION.FIELD values in its "
                          "shared sections or its variants")
    result = compare(args.spec, args.out, progress=not args.quiet)
    if result is None:
        return 0
    print()
    print(format_table(result))
    print(f"\nwrote {result['out']}/{RESULT_FILE} and {result['out']}/index.html")
    return 0
