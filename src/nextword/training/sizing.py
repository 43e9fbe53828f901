"""A model sized to the compute a run has: the shape of a `--budget` run that names none (`model.size = "budget"`).

Shapes come from one ladder, L layers of width 64·L with heads of 64 (the default model is its L = 4 rung), so one
number, the depth, sizes the model. The compute a budget buys is the device's matmul rate measured as the run
starts (on a machine that other processes share, lower: the run will get less) times the share of it a training
step reaches, over the seconds left for training. The rung is the one nearest the
loss-minimising size for that compute, N_opt = COEF · C^EXPONENT, where N counts the weights in a matrix multiply
per token (blocks and head; `GPT.flops_per_token` is about 6·N plus attention). The rule is fitted from IsoFLOP
sweeps on this project's own runs (`benchmarks/model_size.py`; the runs and the fit are in benchmarks/RESULTS.md),
in the spirit of Hoffmann et al. (2022), approach 2.

Data that the chosen model would read more than MAX_EPOCHS times moves the choice up the ladder, up to MAX_GROWTH
times N_opt: repeated tokens are worth less than fresh ones beyond a few epochs (Muennighoff et al. 2023, "Scaling
Data-Constrained Language Models": up to about 4 epochs cost almost nothing, and excess compute is better spent
on parameters than on more epochs), so the compute goes into a larger model that reads the data fewer times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from nextword.config import ModelConfig
from nextword.model.network import GPT

HEAD_DIM = 64
WIDTH_PER_LAYER = 64
MAX_LAYERS = 32  # d_model 2048: far past what a budget on one machine trains
COEF, EXPONENT = 0.21, 0.5  # N_opt = COEF · C^EXPONENT (fitted; see the module's docstring)
MAX_EPOCHS = 4.0
# Growing for scarce data stops at this many times N_opt: a model far larger than its compute can train takes
# too few steps to learn, however rarely it repeats its data.
MAX_GROWTH = 4.0
# The share of the measured matmul rate that a training step reaches: the 4 × 256 model's bf16 steps on a CPU
# measured 57-65% (benchmarks/RESULTS.md), the 3 × 192 rung 42%. The time budget plans the steps themselves from
# measured speed; these two only size the model.
EXPECTED_MFU = 0.5
# The share of the seconds left that goes into training steps: the rest is evaluations, the final checkpoint and
# the planner's safety margin (training/budget.py). With EXPECTED_MFU, the default 10-minute run in a fresh clone
# expected 1.1e14 FLOPs and trained 1.0e14.
TRAINING_SHARE = 0.85


def ladder_shape(n_layers: int, base: ModelConfig | None = None) -> ModelConfig:
    """Rung `n_layers` of the ladder: `base` (default: the default model) at that depth and width."""
    d_model = WIDTH_PER_LAYER * n_layers
    return replace(base or ModelConfig(), n_layers=n_layers, d_model=d_model, n_heads=d_model // HEAD_DIM)


@dataclass(frozen=True)
class Rung:
    model: ModelConfig
    weights: int  # N of the rule: the weights a token meets in matrix multiplies (GPT.matmul_weights)
    flops_per_token: int  # GPT.flops_per_token: about 6·N, plus attention


def rung(n_layers: int, base: ModelConfig | None = None) -> Rung:
    """Rung `n_layers` with its counts, from the network itself built on the meta device (no memory, no time)."""
    cfg = ladder_shape(n_layers, base=base)
    with torch.device("meta"):
        model = GPT(cfg)
    return Rung(cfg, model.matmul_weights(), model.flops_per_token())


def optimal_weights(flops: float) -> float:
    return COEF * flops ** EXPONENT


@dataclass(frozen=True)
class SizeChoice:
    rung: Rung
    flops: float  # the training compute the budget is expected to buy
    optimal_weights: float  # N_opt for that compute
    tokens: float  # what the chosen model reads with it
    epochs: float  # tokens over the training split's tokens
    grown_for_data: bool  # moved up the ladder because the data would have been read more than MAX_EPOCHS times

    def describe(self) -> str:
        m = self.rung.model
        why = (f"N_opt {self.optimal_weights / 1e6:.2f}M for {self.flops:.2g} FLOPs"
               + (", then larger so the data is read fewer times" if self.grown_for_data else ""))
        layers = f"{m.n_layers} layer{'s' if m.n_layers > 1 else ''}"
        return (f"sized to the budget: {layers} of width {m.d_model} ({self.rung.weights / 1e6:.2f}M weights in "
                f"matmuls; {why}), about {self.tokens / 1e6:.1f}M tokens, {self.epochs:.1f} reads of the training "
                "split")


def training_flops(seconds_left: float, peak_flops: float, world_size: int = 1) -> float:
    """The compute the seconds left are expected to buy, over every process of the run."""
    return max(0.0, seconds_left) * TRAINING_SHARE * EXPECTED_MFU * peak_flops * world_size


def size_for_compute(flops: float, base: ModelConfig, train_tokens: int) -> SizeChoice:
    """The ladder rung for `flops` of training, its vocabulary, context and block options taken from `base`."""
    target = optimal_weights(flops)
    below = rung(1, base)  # climb to the first rung at or above the target, then take the nearer of the two
    while below.weights < target and below.model.n_layers < MAX_LAYERS:
        above = rung(below.model.n_layers + 1, base)
        if above.weights >= target:
            below = min(below, above, key=lambda r: abs(math.log(r.weights / target)))
            break
        below = above
    chosen, grown = below, False
    while chosen.model.n_layers < MAX_LAYERS and flops / chosen.flops_per_token > MAX_EPOCHS * train_tokens:
        larger = rung(chosen.model.n_layers + 1, base)
        if larger.weights > MAX_GROWTH * target:
            break
        chosen, grown = larger, True
    tokens = flops / chosen.flops_per_token
    return SizeChoice(chosen, flops, target, tokens, tokens / max(1, train_tokens), grown)
