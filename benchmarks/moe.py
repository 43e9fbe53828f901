"""A dense model against a mixture of experts with the same active parameters, for the same wall clock.

    .venv/bin/python benchmarks/moe.py [--budget 150s] [--rounds 1]

Each variant is a whole `nextword train` run (the library call) on the default corpus, with a time budget: the
budget planner turns the same seconds into however many steps each model's measured speed allows. Variants:

  dense          moe-tiny's shape with a dense SwiGLU block of d_ff 384 in every layer
  sparse         moe-tiny: 8 routed experts (top-1) + 1 shared, each of width 192, so a token passes through as
                 many MLP weights as in the dense block (plus the router's 128 × 8)
  sparse, no balance loss   the same with model.balance_coef = 0: what the balance loss buys

Printed per run: parameters (total, active), steps, median tokens/s, validation loss and bits per byte at the end,
and for the sparse runs the busiest and idlest expert's share of routed tokens at the last log step (over every
sparse block; 12.5% each when balanced) and the balance loss. The machine may be shared: variants take
turns (one round: dense, sparse, no balance; a second round runs them in reverse), so a slow spell hits all.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import header, markdown_table
from nextword.config import RunConfig, model_preset

VARIANTS = {
    "dense": dict(n_experts=0),
    "sparse": dict(),
    "sparse, no balance loss": dict(balance_coef=0.0),
}


def config(variant: str, budget: str, run_dir: Path) -> RunConfig:
    cfg = RunConfig(model=model_preset("moe-tiny"))
    for key, value in VARIANTS[variant].items():
        setattr(cfg.model, key, value)
    cfg.train.budget, cfg.train.run_dir, cfg.train.micro_batch = budget, str(run_dir), 16
    cfg.train.warmup_steps = 50
    return cfg.validate()


def result(variant: str, run_dir: Path) -> list[str]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    run = next(r for r in records if r["kind"] == "run")
    steps = [r for r in records if r["kind"] == "train"]
    summary = next(r for r in records if r["kind"] == "summary")
    speed = statistics.median(r["tokens_per_s"] for r in steps[1:] or steps)
    balance = "—"
    if "expert_load" in steps[-1]:
        rows = steps[-1]["expert_load"]
        shares = [share for row in rows for share in row]
        balance = (f"{max(shares):.1%} / {min(shares):.1%}, balance loss {steps[-1]['balance_loss']:.3f}")
    active = run.get("params_active", run["params"])
    return [variant, f"{run['params'] / 1e6:.2f}M", f"{active / 1e6:.2f}M", f"{summary['steps']:,}",
            f"{speed:,.0f}", f"{summary['val_loss']:.3f}", f"{summary['val_bpb']:.3f}", balance]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="150s", help="wall clock per run (default 150s)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of all variants; even ones run in reverse")
    args = parser.parse_args()
    from nextword.training.trainer import train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
            for variant in order:
                run_dir = Path(tmp) / f"{round_}-{variant.replace(' ', '_').replace(',', '')}"
                train(config(variant, args.budget, run_dir), progress=False)
                rows.append(result(variant, run_dir))
    print("\n".join(header("mixture of experts against dense at equal active parameters and wall clock",
                           [f"budget {args.budget} per run, micro-batch 16 × 128 tokens, default corpus"])))
    print("\n".join(markdown_table(["variant", "params", "active", "steps", "tokens/s", "val loss", "bits/byte",
                                     "busiest / idlest expert (last log)"], rows)))


if __name__ == "__main__":
    main()
