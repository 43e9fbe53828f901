"""Held-out loss and samples of the model being trained.

Bits per byte = loss in nats × tokens ÷ (UTF-8 bytes × ln 2): unlike loss per token it does not depend on the
tokenizer, so runs with different vocabularies can be compared.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from nextword.config import EvalConfig
from nextword.data.loader import TokenLoader
from nextword.data.shards import TokenShards
from nextword.data.tokenizer import Tokenizer
from nextword.model.sampling import sample

if TYPE_CHECKING:
    from nextword.training.distributed import World

EVAL_WINDOWS_SEED = 0


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, split: TokenShards, batch_size: int, context: int, batches: int,
                  device: torch.device | str, world: "World | None" = None) -> dict[str, float]:
    """Mean next-token loss over `batches` batches of windows drawn across the whole split: a fixed draw, so
    every evaluation scores the same windows. Under torchrun each rank scores its share of those windows and the
    mean is taken over ranks (the same windows as one process when the world size divides `batches`)."""
    rank, size = (world.rank, world.size) if world else (0, 1)
    was_training = model.training
    model.eval()
    loader = TokenLoader(split, batch_size, context, rank=rank, world_size=size, shuffle=True,
                         seed=EVAL_WINDOWS_SEED, device=device)
    own_batches = max(1, min(batches, loader.num_windows // batch_size) // size)
    total = torch.zeros((), device=device, dtype=torch.float64)
    for _ in range(own_batches):
        x, y = loader.next_batch()
        loss = model(x, y)
        total += loss.double()
    model.train(was_training)
    mean = total / own_batches
    loss = float(world.mean(mean) if world else mean)
    return figures(loss, tokens_per_byte=split.num_tokens / max(1, split.num_bytes),
                    tokens=own_batches * size * batch_size * context)


def figures(loss: float, tokens_per_byte: float, tokens: int) -> dict[str, float]:
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": loss * tokens_per_byte / math.log(2),
            "tokens": tokens}


def samples(model: torch.nn.Module, tokenizer: Tokenizer, cfg: EvalConfig, seed: int) -> list[dict[str, str]]:
    """A continuation of each fixed prompt, each with its own fixed seed, so samples from one evaluation to the
    next differ only because the model changed."""
    was_training = model.training
    model.eval()
    out = []
    for index, prompt in enumerate(cfg.prompts):
        ids = list(sample(model, tokenizer.encode(prompt), cfg.sample_tokens, temperature=cfg.temperature,
                          top_k=cfg.top_k, seed=seed + index, stop_id=tokenizer.eos_id))
        out.append({"prompt": prompt, "text": tokenizer.decode(ids)})
    model.train(was_training)
    return out
