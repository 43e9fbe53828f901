"""Pretrain a decoder-only model by next-token prediction.

With no arguments: prepare the embedded corpus (Python's standard library) if it is not cached, then train the
default model on it for a 10-minute budget (the whole command, preparation included), ending with validation
loss, bits per byte, a checkpoint and a sample. Run the same command again to resume an interrupted run.

How long a run trains is set by exactly one of --budget (wall clock), --tokens, --flops (training compute: the
tokens it buys at the model's FLOPs per token) or --steps. A token or FLOPs count trains the same on any machine.
With a budget, the trainer measures its own speed in the first steps and plans the number of steps so that
training, evaluations and checkpoints end inside it, with the learning rate annealed by the end.

A budgeted run that names no model shape (no --preset, no --model.n_layers, --model.d_model or --model.n_heads)
is sized to its budget: depth and width come from the compute the budget buys on this machine (its measured
matmul peak), by a rule fitted from measured runs, so a 2-minute run trains a smaller model than an hour's. The
choice, and how many times the run will read its training data, are printed. --model.size fixed keeps the
default shape.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from nextword import cli
from nextword.cli import options
from nextword.config import RunConfig, load_saved_run
from nextword.errors import ConfigError
from nextword.tools.downstream import check_tasks, evaluate_run, format_table
from nextword.training import distributed
from nextword.training.trainer import train


def configure(parser: argparse.ArgumentParser) -> None:
    options.add_config_arguments(parser)
    group = parser.add_argument_group("how long (exactly one governs; default --budget 10m)")
    group.add_argument("--budget", help="wall-clock time for the whole command, e.g. 90s, 10m, 2h")
    group.add_argument("--tokens", help="tokens to train on, e.g. 20M")
    group.add_argument("--flops", help="training compute, e.g. 1e14: the tokens it buys at the model's FLOPs per "
                                       "token (the same count on any machine)")
    group.add_argument("--steps", type=_positive_int, help="optimizer steps")
    parser.add_argument("--run-dir", help="where the run lives (config, log, checkpoints); default runs/default")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default auto: measured")
    parser.add_argument("--compile", choices=["auto", "on", "off"], help="torch.compile; default auto")
    parser.add_argument("--stop-after", type=_positive_int, metavar="N",
                        help="save and stop once step N is reached; run the same command again to resume")
    parser.add_argument("--dump-config", action="store_true", help="print the resolved config as TOML and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--nproc", type=_positive_int, metavar="N",
                        help="train with N processes on this machine, one per GPU (starts torchrun for you; "
                             "for several machines run torchrun yourself, see docs/scale.md)")


def _positive_int(text: str) -> int:
    """argparse type: a count of 1 or more (0 would silently mean "not given", a negative count nothing)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def run(args: argparse.Namespace) -> int:
    if args.nproc and "LOCAL_RANK" not in os.environ:
        _relaunch_under_torchrun(args.nproc)
    if "TORCHELASTIC_ERROR_FILE" in os.environ:  # under torchrun: a failing rank's error goes into its report
        return distributed.recording_errors(_run)(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.dump_config:
        print(cfg.to_toml())
        return 0
    if cfg.eval.tasks:
        check_tasks(cfg.eval.tasks)
    summary = train(cfg, start_time=cli.PROCESS_START, stop_after=args.stop_after, progress=not args.quiet)
    if summary.get("interrupted"):
        return 130
    if cfg.eval.tasks and _finished_here(summary):
        _run_downstream_tasks(cfg, progress=not args.quiet)
    return 0


def _finished_here(summary: dict) -> bool:
    """Whether this process ended the run with its closing summary: the one that writes the run's files, of a run
    that trained to its end now (not stopped, not already finished before)."""
    return "wall_seconds" in summary


def _run_downstream_tasks(cfg: RunConfig, progress: bool) -> None:
    """[eval] tasks on the final checkpoint, printed and added to the run's downstream.json."""
    from nextword.training.machine import resolve_device

    print(f"\ndownstream tasks: {', '.join(cfg.eval.tasks)}")
    rows = evaluate_run(cfg.train.run_dir, cfg.eval.tasks, device=str(resolve_device(cfg.train.device)),
                        limit=cfg.eval.task_limit or None, progress=progress)
    print(format_table(rows))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's config: a run directory's saved config when resuming, else the defaults, then what was asked."""
    cfg = options.config_from_args(args)
    run_dir = Path(args.run_dir or cfg.train.run_dir)
    saved = run_dir / "config.toml"
    if saved.is_file() and not (args.config or args.preset):
        cfg = options.config_from_args(args, base=load_saved_run(saved))
    for name in ("budget", "tokens", "flops", "steps"):
        value = getattr(args, name)
        if value:
            cfg.train.budget, cfg.train.tokens, cfg.train.flops, cfg.train.steps = "", "", "", 0
            setattr(cfg.train, name, value)
    cfg.train.run_dir = str(run_dir)
    cfg.train.precision = args.precision or cfg.train.precision
    cfg.train.compile = args.compile or cfg.train.compile
    return cfg.validate()


def _relaunch_under_torchrun(nproc: int) -> NoReturn:
    """Replace this process with torchrun running the same command in `nproc` processes on this machine."""
    argv = sys.argv[1:]
    if "train" not in argv:
        raise ConfigError("--nproc works from the command line (nextword train --nproc N ...)")
    rest = argv[argv.index("train"):]
    for i, arg in enumerate(rest):
        if arg == "--nproc":
            del rest[i:i + 2]
            break
        if arg.startswith("--nproc="):
            del rest[i]
            break
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "nextword", *rest]
    print(shlex.join(["torchrun", *command[3:]]), file=sys.stderr)  # the same job, as one would type it
    sys.stdout.flush()
    os.execv(sys.executable, command)
