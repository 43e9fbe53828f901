"""The output layer and loss alone: the plain way (logits → fp32 → cross-entropy) against nextword's fused
`linear_cross_entropy`, forward and backward, at the shapes of the default model and of gpt2-124m.

    .venv/bin/python benchmarks/output_layer.py [--repeats 8] [--precision bf16|fp32]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/output_layer.py     # one thread

Runs alternate (plain, fused, plain, …) so that load on a shared machine slows both alike; the table gives the
median CPU time of each after the first two, their ratio, and how far the fused gradients are from the plain ones
(the largest difference over the largest gradient).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from common import markdown_table
from nextword.training.machine import cpu_model
from nextword.model import linear_cross_entropy

SHAPES = {  # name: (rows = batch × context, d_model, vocabulary)
    "default, B16×T256": (16 * 256, 256, 8192),
    "gpt2-124m, B4×T256": (4 * 256, 768, 50257),
}


def loss_and_grads(loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor], x: Tensor, weight: Tensor,
                   targets: Tensor, autocast: contextlib.AbstractContextManager) -> tuple[float, list[Tensor]]:
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    with autocast:
        loss = loss_fn(x, weight, targets)
    loss.backward()
    return float(loss), [x.grad, weight.grad]


def plain(x: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(F.linear(x, weight).float(), targets)


def measure(rows: int, d: int, vocab: int, precision: str, repeats: int) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, d, generator=generator)
    weight = torch.randn(vocab, d, generator=generator) * 0.02
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
    seconds: dict[str, list[float]] = {"plain": [], "fused": []}
    for _ in range(repeats):
        for name, fn in (("plain", plain), ("fused", linear_cross_entropy)):
            start = time.process_time()
            loss_and_grads(fn, x, weight, targets, autocast)
            seconds[name].append(time.process_time() - start)
    plain_ms, fused_ms = (statistics.median(seconds[n][2:]) * 1000 for n in ("plain", "fused"))
    plain_loss, plain_grads = loss_and_grads(plain, x, weight, targets, autocast)
    fused_loss, fused_grads = loss_and_grads(linear_cross_entropy, x, weight, targets, autocast)
    error = max(float((f - p).abs().max() / p.abs().max()) for f, p in zip(fused_grads, plain_grads))
    return [f"{plain_ms:,.0f}", f"{fused_ms:,.0f}", f"{plain_ms / fused_ms:.2f}×", f"{abs(fused_loss - plain_loss):.1e}",
            f"{error:.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8, help="runs of each (the first two are not counted)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    print(f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {args.precision}")
    rows = [[name, *measure(*shape, args.precision, max(3, args.repeats))] for name, shape in SHAPES.items()]
    columns = ["shape", "plain CPU ms", "fused CPU ms", "speed-up", "|Δ loss|", "max |Δ grad| / max |grad|"]
    print("\n".join(markdown_table(columns, rows)))


if __name__ == "__main__":
    main()
