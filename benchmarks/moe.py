"""A dense model against a mixture of experts with the same active parameters, for the same wall clock.

    .venv/bin/python benchmarks/moe.py [--seconds 180] [--repeats 10] [--precision bf16|fp32]
    .venv/bin/python benchmarks/moe.py --paths [--repeats 10]

Variants (moe-tiny's shape: 4 layers, d_model 128, context 128; the default corpus and its 8192-token vocabulary):

  dense                     a dense SwiGLU block of d_ff 384 in every layer
  sparse                    moe-tiny: 8 routed experts (top-1) + 1 shared, each of width 192, so a token passes
                            through as many MLP weights as in the dense block (plus the router's 128 × 8)
  sparse, no balance loss   the same with model.balance_coef = 0: what the balance loss buys

This machine is shared, so a whole run's speed says more about its neighbours than about the model (two runs of
one model differed fourfold). So speed is measured first, side by side: the training loop's own step
(`train_step`, in bf16 autocast unless `--precision fp32`: bf16 as the precision race picks where the CPU has bf16
matmuls, AVX-512 BF16; fp32 where it has AVX2 only and bf16 is emulated) on one fixed batch, the variants taking
turns, medians. Each variant then trains `--seconds` × its measured steps per second steps: the same wall clock on
this machine when it is quiet, whatever the load during the runs. Printed per variant: parameters (total,
active), step time, tokens/s, steps, validation loss and bits per byte at the end, and for the sparse ones the
busiest and idlest expert's share of routed tokens at the last log step (over every sparse block; 12.5% each when
balanced) with the balance loss. The sparse model's step is also timed with its experts forced through the
per-expert loop (`MoE.expert_path = "loop"`), beside the path "auto" takes, so the two show as ratios to dense.

`--paths` times instead the two ways a sparse block runs its experts (model/moe.py): one grouped matmul against
a loop of one matmul per expert, forward and backward of one block on a fixed batch, taking turns, in fp32 and
under bf16 autocast, at moe-tiny's shape (2,048 tokens, d_model 128, 8 experts of width 192, top-1, one shared)
and a larger one (2,048 tokens, d_model 256, 16 experts of width 256, top-2, one shared). It decides which path
"auto" takes on CPU (GROUPED_BY_DEFAULT in model/moe.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from common import header, interleaved, markdown_table, median, spread
from nextword.config import ModelConfig, RunConfig, model_preset
from nextword.data.prepare import prepare
from nextword.model import GPT
from nextword.model.moe import MoE, moe_layers
from nextword.training.optimizer import build_optimizer
from nextword.training.precision import autocast_for, scaler_for
from nextword.training.step import train_step
from nextword.training.trainer import train

VARIANTS = {
    "dense": dict(n_experts=0),
    "sparse": dict(),
    "sparse, no balance loss": dict(balance_coef=0.0),
}
MICRO_BATCH = 16
LOOPED = "sparse, experts looped"  # timed only: the sparse model with its experts forced through the loop
BLOCK_SHAPES = {  # name: (tokens, ModelConfig fields) for --paths
    "moe-tiny": (MICRO_BATCH * 128, dict(d_model=128, n_heads=4, n_experts=8, experts_per_token=1,
                                         shared_experts=1, d_expert=192)),
    "larger": (MICRO_BATCH * 128, dict(d_model=256, n_heads=4, n_experts=16, experts_per_token=2,
                                       shared_experts=1, d_expert=256)),
}


def config(variant: str, vocab_size: int, precision: str) -> RunConfig:
    cfg = RunConfig(model=model_preset("moe-tiny"))
    for key, value in VARIANTS[variant].items():
        setattr(cfg.model, key, value)
    cfg.model.vocab_size = vocab_size
    cfg.train.micro_batch, cfg.train.precision, cfg.train.warmup_steps = MICRO_BATCH, precision, 50
    return cfg.validate()


def step_seconds(variants: dict[str, RunConfig], repeats: int) -> dict[str, list[float]]:
    """Seconds per training step of each variant, and of the sparse one with its experts looped, taking turns."""
    device = torch.device("cpu")
    runs = {}
    for name, cfg in {**variants, LOOPED: variants["sparse"]}.items():
        torch.manual_seed(0)
        model = GPT(cfg.model)
        for block in moe_layers(model):
            block.expert_path = "loop" if name == LOOPED else "auto"
        optimizer = build_optimizer(model, cfg.train)
        batch = torch.randint(0, cfg.model.vocab_size, (MICRO_BATCH, cfg.model.context + 1))
        runs[name] = (lambda m=model, o=optimizer, b=batch, c=cfg: train_step(
            m, o, lambda: (b[:, :-1], b[:, 1:]), 1, 1e-4, 1.0, autocast_for(device, c.train.precision),
            scaler_for(device, c.train.precision), balance_coef=c.model.balance_coef))
    return {name: t.wall for name, t in interleaved(runs, repeats, warmup=2).items()}


def result(variant: str, run_dir: Path, seconds: list[float], tokens_per_step: int) -> list[str]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    run = next(r for r in records if r["kind"] == "run")
    last = [r for r in records if r["kind"] == "train"][-1]
    summary = next(r for r in records if r["kind"] == "summary")
    balance = "—"
    if "expert_load" in last:
        shares = [share for row in last["expert_load"] for share in row]
        balance = f"{max(shares):.1%} / {min(shares):.1%}, balance loss {last['balance_loss']:.3f}"
    active = run.get("params_active", run["params"])
    return [variant, f"{run['params'] / 1e6:.2f}M", f"{active / 1e6:.2f}M",
            f"{median(seconds) * 1000:.0f} ms ({spread(seconds)})", f"{tokens_per_step / median(seconds):,.0f}",
            f"{summary['steps']:,}", f"{summary['val_loss']:.3f}", f"{summary['val_bpb']:.3f}", balance]


def block_seconds(tokens: int, shape: dict, dtype: torch.dtype, repeats: int) -> dict[str, list[float]]:
    """Seconds per forward and backward of one sparse block, its experts grouped against looped, taking turns."""
    torch.manual_seed(0)
    block = MoE(ModelConfig(arch="llama", **shape))
    x = torch.randn(1, tokens, shape["d_model"], requires_grad=True)
    grad = torch.randn_like(x)

    def run(path: str) -> None:
        block.expert_path = path
        block.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = block(x)
        out.backward(grad)

    return {name: t.wall for name, t in
            interleaved({"loop": lambda: run("loop"), "grouped": lambda: run("grouped")}, repeats).items()}


def compare_paths(repeats: int) -> None:
    rows = []
    for shape_name, (tokens, shape) in BLOCK_SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            seconds = block_seconds(tokens, shape, dtype, repeats)
            loop, grouped = median(seconds["loop"]), median(seconds["grouped"])
            rows.append([shape_name, "fp32" if dtype == torch.float32 else "bf16 autocast",
                         f"{loop * 1000:.1f} ms ({spread(seconds['loop'])})",
                         f"{grouped * 1000:.1f} ms ({spread(seconds['grouped'])})", f"{grouped / loop:.2f}"])
    print("\n".join(header("a sparse block's experts: one grouped matmul against a loop over experts", [
        f"forward + backward of one block, {repeats} interleaved calls each, medians (spread min/max)"])))
    print("\n".join(markdown_table(["shape", "precision", "loop", "grouped", "grouped / loop"], rows)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180, help="quiet-machine seconds of training per variant")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant (default 10)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="of the training steps (default bf16; fp32 where the CPU has no bf16 matmul)")
    parser.add_argument("--paths", action="store_true", help="time the grouped matmul against the expert loop")
    args = parser.parse_args()
    if args.paths:
        compare_paths(args.repeats)
        return

    data = prepare(RunConfig().data, progress=False)
    vocab = data.tokenizer.vocab_size
    variants = {name: config(name, vocab, args.precision) for name in VARIANTS}
    seconds = step_seconds(variants, args.repeats)
    tokens_per_step = MICRO_BATCH * variants["dense"].model.context
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in variants.items():
            cfg.train.run_dir = str(Path(tmp) / name.replace(" ", "_").replace(",", ""))
            cfg.train.steps = max(1, round(args.seconds / median(seconds[name])))
            train(cfg, progress=False)
            rows.append(result(name, Path(cfg.train.run_dir), seconds[name], tokens_per_step))
    print("\n".join(header("mixture of experts against dense at equal active parameters and wall clock", [
        f"{args.seconds:g} s of training per variant at its measured step time ({args.repeats} interleaved steps, "
        f"medians, spread min/max), micro-batch {MICRO_BATCH} × 128 tokens, {args.precision}, default corpus"])))
    print("\n".join(markdown_table(["variant", "params", "active", "step", "tokens/s", "steps", "val loss",
                                    "bits/byte", "busiest / idlest expert (last log)"], rows)))
    dense = median(seconds["dense"])
    print("\n".join(markdown_table(["step time against dense, same run", "step", "ratio"], [
        [name, f"{median(seconds[key]) * 1000:.0f} ms ({spread(seconds[key])})", f"{median(seconds[key]) / dense:.2f}"]
        for name, key in ((f"sparse, experts by the path auto takes on {torch.backends.cpu.get_cpu_capability()}",
                           "sparse"), (LOOPED, LOOPED))])))


if __name__ == "__main__":
    main()
