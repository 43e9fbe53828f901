"""A training step with Muon orthogonalising in bf16 (torch.optim.Muon's fixed choice) against fp32, in fp32
training, at the shapes the default run sizes itself to on a small CPU.

    .venv/bin/python benchmarks/muon_precision.py [--repeats 5]

On a CPU with native bf16 (AVX-512 BF16, AMX) the two are close; on one with AVX2 only, a bf16 matmul is emulated
and Newton–Schulz dominates the step. The trainer orthogonalises in the precision the run trains in
(`build_optimizer(..., precision)`). Each step is the training loop's own (`train_step` with `build_optimizer`),
on one fixed random batch of the default micro-batch, the two optimizers taking turns.
"""

from __future__ import annotations

import argparse
import copy

import torch

from common import header, interleaved, markdown_table, median
from nextword.config import ModelConfig, TrainConfig
from nextword.model import GPT
from nextword.training.optimizer import build_optimizer
from nextword.training.precision import autocast_for, scaler_for
from nextword.training.step import train_step

SHAPES = ((1, 64), (2, 128), (3, 192), (4, 256))  # (layers, width): the rungs a budget picks among here


def step_seconds(layers: int, width: int, repeats: int) -> dict[str, float]:
    model_cfg = ModelConfig(n_layers=layers, d_model=width, n_heads=max(1, width // 64), vocab_size=8192)
    train_cfg = TrainConfig()
    torch.manual_seed(0)
    base = GPT(model_cfg)
    batch = torch.randint(0, model_cfg.vocab_size, (train_cfg.micro_batch, model_cfg.context + 1))
    runs = {}
    for ns_precision in ("bf16", "fp32"):
        model = copy.deepcopy(base)
        optimizer = build_optimizer(model, train_cfg, ns_precision)
        runs[ns_precision] = (lambda m=model, o=optimizer: train_step(
            m, o, lambda: (batch[:, :-1], batch[:, 1:]), 1, train_cfg.lr, train_cfg.grad_clip,
            autocast_for(torch.device("cpu"), "fp32"), scaler_for(torch.device("cpu"), "fp32")))
    timings = interleaved(runs, repeats)
    return {name: median(t.wall) for name, t in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("\n".join(header("Muon's Newton–Schulz in bf16 against fp32, fp32 training")))
    rows = []
    for layers, width in SHAPES:
        seconds = step_seconds(layers, width, args.repeats)
        rows.append((f"{layers} × {width}", f"{seconds['bf16'] * 1000:.0f}", f"{seconds['fp32'] * 1000:.0f}",
                     f"{seconds['bf16'] / seconds['fp32']:.2f}×"))
    print("\n".join(markdown_table(("layers × width", "step, NS in bf16 (ms)", "step, NS in fp32 (ms)",
                                    "fp32's speed-up"), rows)))


if __name__ == "__main__":
    main()
