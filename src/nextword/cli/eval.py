"""Validation loss, perplexity and bits per byte of a trained run, on its held-out split or on any text file;
or, with --tasks, the benchmarks base models are compared on.

Bits per byte = loss in nats × tokens ÷ (UTF-8 bytes × ln 2): unlike loss per token it does not depend on the
tokenizer, so runs with different vocabularies can be compared.

--tasks hellaswag,arc_easy,lambada_openai runs the tasks with EleutherAI's lm-evaluation-harness (pip install
'nextword[downstream]') on the run's newest checkpoint, prints task, metric, value, standard error and few-shot
count, and adds them to RUN/downstream.json, which `nextword report` shows. Task names are lm-eval's
(`lm-eval ls tasks`); a path to a YAML file is a local task in lm-eval's format. A task file is code: its
`!function` lines import and run Python files beside it, so pass only task files you would run as programs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nextword.cli import options
from nextword.errors import ConfigError, DataError
from nextword.tools.downstream import RESULTS_FILE, evaluate_run, format_table
from nextword.tools.evaluate import evaluate_split, evaluate_text


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory made by `nextword train`")
    parser.add_argument("--text", metavar="FILE", help="a UTF-8 text file to score; default: the run's validation split")
    parser.add_argument("--shard-dir", metavar="DIR", help="a prepared data dir to score (its val split)")
    parser.add_argument("--batches", type=int, default=50, help="batches of the split to score (default 50)")
    options.add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    tasks = parser.add_argument_group("downstream tasks (lm-evaluation-harness)")
    tasks.add_argument("--tasks", metavar="TASK,...",
                       help="lm-eval task names or task YAML files, comma-separated, e.g. hellaswag,arc_easy; a "
                       "task file is code (its !function lines run Python), so pass only files you trust")
    tasks.add_argument("--limit", type=int, metavar="N", help="score the first N examples of each task only")
    tasks.add_argument("--num-fewshot", type=int, metavar="K", help="few-shot examples (default: each task's own)")
    tasks.add_argument("--batch-size", type=int, default=32, help="continuations scored per forward (default 32)")
    tasks.add_argument("--verbose", action="store_true", help="show lm-eval's own log")


def run(args: argparse.Namespace) -> int:
    from nextword.training.checkpoint import load_for_inference
    from nextword.training.machine import resolve_device

    if args.batches < 1:
        raise ConfigError(f"--batches {args.batches} must be at least 1")
    device = str(resolve_device(args.device, "--device"))
    if args.tasks is not None:
        return _run_tasks(args, device)
    model, tokenizer, cfg = load_for_inference(args.run, device)
    if args.text:
        path = Path(args.text)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read as UTF-8 text ({e}); pass a UTF-8 text file") from None
        result, what = evaluate_text(model, tokenizer, text, cfg.model.context, device, str(path)), str(path)
    else:
        data_dir = Path(args.shard_dir or cfg.data.data_dir)
        result = evaluate_split(model, tokenizer, data_dir, cfg.train.micro_batch, cfg.model.context, args.batches,
                                device)
        what = f"{data_dir} (validation split)"
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{what}: loss {result['loss']:.4f} nats/token, perplexity {result['ppl']:.2f}, "
              f"{result['bpb']:.4f} bits per byte over {int(result['tokens']):,} tokens")
    return 0


def _run_tasks(args: argparse.Namespace, device: str) -> int:
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    if not tasks:
        raise ConfigError("--tasks is empty; name lm-eval tasks (hellaswag,arc_easy) or task YAML files")
    if args.text or args.shard_dir:
        raise ConfigError("--tasks brings its own data; drop --text and --shard-dir, or run them separately")
    for flag, value, least in (("--limit", args.limit, 1), ("--num-fewshot", args.num_fewshot, 0),
                               ("--batch-size", args.batch_size, 1)):
        if value is not None and value < least:
            raise ConfigError(f"{flag} {value} must be at least {least}")
    rows = evaluate_run(args.run, tasks, device=device, limit=args.limit, num_fewshot=args.num_fewshot,
                        batch_size=args.batch_size, progress=not args.json, verbose=args.verbose)
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_table(rows))
        if rows:
            limit = f", the first {args.limit:,} examples of each task" if args.limit else ""
            print(f"(the checkpoint of step {rows[0]['step']:,}{limit}; saved in {Path(args.run) / RESULTS_FILE})")
    return 0
