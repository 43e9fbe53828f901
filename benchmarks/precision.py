"""Which precision trains fastest on this CPU, and whether `--precision auto` finds it.

    .venv/bin/python benchmarks/precision.py [--repeats 5] [--no-compile]

For the default model (ModelConfig() with vocabulary 8192, TrainConfig's micro-batch), this measures:
- the matmul ceilings in fp32 and bf16 (`nextword.training.machine.matmul_flops`, the figures MFU is measured against);
- what `resolve_precision("auto", …)` picks, by the training loop's own race (a few `train_step`s of a copy of
  the model in each precision), run afresh in an empty cache folder so no earlier verdict is reused;
- training tokens/s in fp32 and bf16, eager and `torch.compile`d, the four taking turns step by step (the
  machine may be shared, so a burst of load slows them alike); compile time (the first compiled step, cold:
  empty kernel cache) is reported apart from the steady speed;
- whether auto's eager speed is within 5% of the faster fixed eager choice.

Each step is the training loop's own: `nextword.training.step.train_step` with `build_optimizer`'s AdamW,
`autocast_for` and `scaler_for`, on one fixed random batch.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from typing import Callable

import torch

from common import empty_nextword_cache, header, interleaved, markdown_table, median, spread
from nextword.config import ModelConfig, TrainConfig
from nextword.training.machine import DTYPES, Machine, detect, matmul_flops
from nextword.model import GPT
from nextword.training.optimizer import build_optimizer
from nextword.training.precision import autocast_for, resolve_precision, scaler_for
from nextword.training.step import train_step

WITHIN = 0.05  # auto should be at most this much slower than the best fixed choice


def stepper(model: torch.nn.Module, params_of: GPT, precision: str, batch: torch.Tensor,
            machine: Machine) -> Callable[[], None]:
    """One training step, as the loop runs it. `model` may be a compiled wrapper of `params_of`."""
    t = TrainConfig()
    optimizer = build_optimizer(params_of, t)
    autocast, scaler = autocast_for(machine.device, precision), scaler_for(machine.device, precision)
    x, y = batch[:, :-1], batch[:, 1:]
    return lambda: train_step(model, optimizer, lambda: (x, y), 1, 1e-4, t.grad_clip, autocast, scaler)


def race(model: GPT, batch: torch.Tensor, machine: Machine) -> tuple[str, str]:
    """`resolve_precision("auto")` with the train loop's timing (3 steps, the best of the last 2), uncached."""

    def seconds_per_step(precision: str) -> float:
        net = copy.deepcopy(model)
        step = stepper(net, net, precision, batch, machine)
        return min(interleaved({precision: step}, repeats=2)[precision].wall)

    with empty_nextword_cache():
        return resolve_precision("auto", machine, seconds_per_step, f"{model.cfg}|b{batch.shape[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant (after one warmup)")
    parser.add_argument("--threads", type=int, default=0, help="0: every usable core")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    args = parser.parse_args()

    machine = detect("cpu", args.threads)
    ceilings = {p: matmul_flops(machine.device, DTYPES[p], seconds=1.0) for p in ("fp32", "bf16")}
    # As nextword.training.machine.peak_flops: emulated bf16 is no ceiling to measure against.
    peak = max(ceilings.values()) if machine.bf16_native else ceilings["fp32"]

    torch.manual_seed(0)
    cfg, batch_size = ModelConfig(vocab_size=8192), TrainConfig().micro_batch
    model = GPT(cfg)
    batch = torch.randint(0, cfg.vocab_size, (batch_size, cfg.context + 1))
    tokens, flops_per_token = batch_size * cfg.context, model.flops_per_token()
    auto, why = race(model, batch, machine)

    runs: dict[str, Callable[[], None]] = {}
    compile_seconds: dict[str, float] = {}
    for precision in ("fp32", "bf16"):
        net = copy.deepcopy(model)
        runs[f"{precision} eager"] = stepper(net, net, precision, batch, machine)
    with tempfile.TemporaryDirectory() as kernel_cache:
        # An empty kernel cache and a reset before each compile, so each first step is a cold compile. The
        # reset makes the earlier compiled model compile again, which the untimed warmup turn absorbs.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = kernel_cache
        for precision in () if args.no_compile else ("fp32", "bf16"):
            torch._dynamo.reset()
            net = copy.deepcopy(model)
            step = stepper(torch.compile(net), net, precision, batch, machine)
            began = time.perf_counter()
            step()  # compiles forward and backward
            compile_seconds[precision] = time.perf_counter() - began
            runs[f"{precision} compiled"] = step
        timings = interleaved(runs, args.repeats)

    extra = [f"model: default (gpt2, {cfg.n_layers} layers, d {cfg.d_model}, context {cfg.context}, vocabulary "
             f"{cfg.vocab_size}), micro-batch {batch_size}: {tokens:,} tokens per step; {args.repeats} interleaved "
             "steps per variant, medians",
             f"native bf16 (oneDNN): {machine.bf16_native}"]
    for line in header("training precision", extra):
        print(line)
    print()
    ceiling_rows = [[p, f"{rate / 1e12:.3f}"] for p, rate in ceilings.items()]
    for line in markdown_table(["matmul 1024³", "TFLOP/s"], ceiling_rows):
        print(line)
    print()

    rows = []
    for name, t in timings.items():
        step = median(t.wall)
        precision, mode = name.split()
        compiled = f"{compile_seconds[precision]:.1f}" if mode == "compiled" else ""
        rows.append([f"{name}{' (auto)' if name == f'{auto} eager' else ''}", f"{tokens / step:,.0f}",
                     f"{step * 1e3:.0f}", f"{median(t.cpu) * 1e3:.0f}", f"{flops_per_token * tokens / step / peak:.1%}",
                     compiled, spread(t.wall)])
    columns = ["variant", "tokens/s", "step ms", "CPU ms", "MFU", "first step s (compile)", "spread"]
    for line in markdown_table(columns, rows):
        print(line)
    print()

    eager = {p: tokens / median(timings[f"{p} eager"].wall) for p in ("fp32", "bf16")}
    best = max(eager, key=eager.get)
    shortfall = 1 - eager[auto] / eager[best]
    print(f"- auto chose {auto}: {why}")
    print(f"- fastest fixed eager choice here: {best}; auto is {shortfall:.1%} slower than it: "
          f"{'within' if shortfall <= WITHIN else 'NOT within'} {WITHIN:.0%}")
    for precision, seconds in compile_seconds.items():
        gain = median(timings[f"{precision} eager"].wall) - median(timings[f"{precision} compiled"].wall)
        payback = f"pays back after {seconds / gain:,.0f} steps" if gain > 0 else "is no faster than eager"
        print(f"- {precision}: torch.compile's first step took {seconds:.1f} s; compiled {payback}")
    print(f"- MFU against the faster matmul ceiling, {peak / 1e12:.3f} TFLOP/s; CPU ms: CPU time of all threads per "
          "step (steadier than the wall clock when other processes share the cores); spread: fastest and slowest "
          "step against the median")


if __name__ == "__main__":
    main()
