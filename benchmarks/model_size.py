"""Which model size a compute budget should train: an IsoFLOP sweep (Hoffmann et al. 2022, approach 2).

    .venv/bin/python benchmarks/model_size.py --flops 6e12,2.4e13 --layers 2,3,4,5,6
    .venv/bin/python benchmarks/model_size.py --flops 7e13 --layers 3,4,5,6 --source ~/corpora/shakespeare

For each compute budget C (training FLOPs) and each shape of the ladder nextword sizes models from (L layers of
width 64·L, heads of 64: `training/sizing.py`), the default run trains for the steps that spend C on that shape,
with its learning-rate schedule planned over them. A run's length is a step count, not a wall clock, so runs on a
busy machine give the same losses as on a quiet one and several train side by side without changing them. The
table gives each run's validation loss and bits per byte; for each C a parabola in log N through the losses gives
the loss-minimising N (N: the weights in a matrix multiply per token, `plan.count_params(...).matmul`), and a line
through the log N_opt against log C gives the rule that `training/sizing.py` holds.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import header, markdown_table
from nextword.config import RunConfig, apply_overrides
from nextword.data.prepare import prepare
from nextword.config import ModelConfig
from nextword.tools.plan import count_params
from nextword.training.machine import usable_cores
from nextword.training.sizing import ladder_shape, rung


def shape_fields(layers: int) -> dict[str, str]:
    cfg = ladder_shape(layers)
    return {"model.n_layers": str(cfg.n_layers), "model.d_model": str(cfg.d_model), "model.n_heads": str(cfg.n_heads)}


def planned_runs(budgets: list[float], layers: list[int], vocab: int, tokens_per_step: int) -> list[dict]:
    runs = []
    for flops in budgets:
        for n_layers in layers:
            r = rung(n_layers, ModelConfig(vocab_size=vocab))
            steps = max(1, round(flops / (r.flops_per_token * tokens_per_step)))
            runs.append({"flops": flops, "layers": n_layers, "d_model": r.model.d_model, "matmul_params": r.weights,
                         "params": count_params(r.model).total, "flops_per_token": r.flops_per_token, "steps": steps,
                         "tokens": steps * tokens_per_step, "name": f"C{flops:.1e}_L{n_layers}"})
    return runs


def start(run: dict, args: argparse.Namespace, threads: int, folder: Path) -> subprocess.Popen:
    settings = {"train.steps": run["steps"], "train.seed": args.seed, "train.threads": threads,
                "train.precision": args.precision, **shape_fields(run["layers"])}
    command = [sys.executable, "-m", "nextword", "train", "--run-dir", str(folder / run["name"]), "--quiet"]
    command += [option for source in args.source for option in ("--source", source)]
    command += [part for key, value in settings.items() for part in (f"--{key}", str(value))]
    return subprocess.Popen(command, stdout=open(folder / f"{run['name']}.out", "w"), stderr=subprocess.STDOUT)


def results(run_dir: Path) -> dict:
    """The last evaluation's loss and bits per byte, and the median MFU of the logged steps."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "eval"][-1]
    return {"val_loss": last["val_loss"], "val_bpb": last["val_bpb"],
            "mfu": float(np.median([r["mfu"] for r in records if r["kind"] == "train"]))}


def score_text(run_dir: Path, text: str) -> float:
    """Bits per byte of the run's final model on a text file, whatever tokenizer the run has."""
    out = subprocess.run([sys.executable, "-m", "nextword", "eval", str(run_dir), "--text", text, "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["bpb"]


def optimum(runs: list[dict]) -> float | None:
    """The N at the lowest point of a parabola in log N through the losses; None when it does not open upward
    inside the sizes measured (the minimum is not bracketed)."""
    x = np.log([r["matmul_params"] for r in runs])
    y = np.array([r["val_loss"] for r in runs])
    if len(runs) < 3:
        return None
    a, b, _ = np.polyfit(x, y, 2)
    best = -b / (2 * a)
    return math.exp(best) if a > 0 and x.min() <= best <= x.max() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flops", default="6e12,2.4e13", help="training FLOP budgets, comma-separated")
    parser.add_argument("--layers", default="2,3,4,5,6", help="ladder depths to train at each budget")
    parser.add_argument("--source", action="append", default=[], metavar="PATH",
                        help="train on this text instead of the embedded corpus (repeatable)")
    parser.add_argument("--eval-text", metavar="FILE",
                        help="also score each final model on this held-back text (bits per byte, `nextword eval`)")
    parser.add_argument("--side-by-side", type=int, default=2, help="runs training at once (default 2)")
    parser.add_argument("--precision", default="auto", help="train.precision of every run (default auto)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--json", help="also write the runs and their results here")
    args = parser.parse_args()

    cfg = apply_overrides(RunConfig(), {"data.sources": ",".join(args.source)} if args.source else {})
    prepared = prepare(cfg.data)  # once, before any run
    train_tokens = prepared.index["splits"]["train"]["tokens"]
    tokens_per_step = cfg.train.micro_batch * cfg.model.context
    runs = planned_runs([float(f) for f in args.flops.split(",")], [int(n) for n in args.layers.split(",")],
                        prepared.tokenizer.vocab_size, tokens_per_step)
    threads = max(1, usable_cores() // args.side_by_side)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pending, running = list(runs), []
        while pending or running:
            while pending and len(running) < args.side_by_side:
                run = pending.pop(0)
                running.append((run, start(run, args, threads, folder)))
            run, process = running.pop(0)
            if process.wait() != 0:
                output = (folder / f"{run['name']}.out").read_text()
                sys.exit(f"{run['name']} failed:\n{output[-3000:]}")
            run.update(results(folder / run["name"]), epochs=run["tokens"] / train_tokens)
            if args.eval_text:
                run["text_bpb"] = score_text(folder / run["name"], args.eval_text)
            print(f"{run['name']}: {run['steps']} steps, val loss {run['val_loss']:.3f}", flush=True)

    corpus = ", ".join(args.source) or "the embedded corpus"
    lines = header(f"IsoFLOP sweep on {corpus}, {args.side_by_side} side by side, {threads} thread(s) each, "
                   f"seed {args.seed}, {tokens_per_step} tokens a step")
    rows = [[f"{r['flops']:.1e}", f"L{r['layers']} d{r['d_model']}", f"{r['matmul_params'] / 1e6:.2f}M",
             f"{r['params'] / 1e6:.2f}M", r["steps"], f"{r['tokens'] / 1e6:.2f}M", f"{r['epochs']:.2f}",
             f"{r['mfu']:.0%}", f"{r['val_loss']:.3f}", f"{r['val_bpb']:.3f}"]
            + ([f"{r['text_bpb']:.3f}"] if args.eval_text else []) for r in runs]
    lines += markdown_table(["FLOPs", "shape", "N (matmul)", "params", "steps", "tokens", "epochs", "MFU",
                             "val loss", "bits per byte"] + ([f"bpb on {Path(args.eval_text).name}"]
                                                             if args.eval_text else []), rows)
    points = []
    for flops in sorted({r["flops"] for r in runs}):
        best = optimum([r for r in runs if r["flops"] == flops])
        lines.append(f"# C = {flops:.1e}: N_opt = " + (f"{best / 1e6:.2f}M" if best else "not bracketed"))
        if best:
            points.append((flops, best))
    if len(points) >= 2:
        slope, intercept = np.polyfit(np.log([c for c, _ in points]), np.log([n for _, n in points]), 1)
        lines.append(f"# fit: N_opt = {math.exp(intercept):.4g} · C^{slope:.3f}")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
