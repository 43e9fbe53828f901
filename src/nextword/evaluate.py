"""Validation loss, perplexity and bits per byte of a trained run, on its held-out split or on any text file.

Bits per byte = loss in nats × tokens ÷ (UTF-8 bytes × ln 2): unlike loss per token it does not depend on the
tokenizer, so runs with different vocabularies can be compared.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nextword.config import EvalConfig
from nextword.data.loader import TokenLoader
from nextword.data.shards import TokenShards
from nextword.data.tokenizer import Tokenizer
from nextword.errors import ConfigError, DataError

if TYPE_CHECKING:
    from nextword.distributed import World

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
        _, loss = model(x, y)
        total += loss.double()
    model.train(was_training)
    mean = total / own_batches
    loss = float(world.mean(mean) if world else mean)
    return _figures(loss, tokens_per_byte=split.num_tokens / max(1, split.num_bytes),
                    tokens=own_batches * size * batch_size * context)


@torch.no_grad()
def evaluate_text(model: torch.nn.Module, tokenizer: Tokenizer, text: str, context: int,
                  device: torch.device | str, where: str = "the text") -> dict[str, float]:
    """Loss over every token of `text`, in windows of `context` tokens, and its bits per byte."""
    ids = tokenizer.encode(text)
    if not ids:
        raise DataError(f"{where}: empty, so there is nothing to score; give a file with some text in it")
    model.eval()
    # The first token is predicted from the end-of-text token, as every document follows one in training: so
    # the loss covers every byte of the text, the bytes that bits per byte divides by.
    ids = [tokenizer.eos_id] + ids
    tokens = torch.tensor(ids, dtype=torch.long, device=device)
    nats, predicted = 0.0, 0
    for begin in range(0, len(ids) - 1, context):
        x = tokens[begin: begin + context]
        y = tokens[begin + 1: begin + context + 1]
        x = x[: len(y)]
        logits, _ = model(x[None])
        nats += float(F.cross_entropy(logits[0].float(), y, reduction="sum"))
        predicted += len(y)
    loss = nats / predicted
    return _figures(loss, tokens_per_byte=predicted / len(text.encode("utf-8")), tokens=predicted)


def _figures(loss: float, tokens_per_byte: float, tokens: int) -> dict[str, float]:
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": loss * tokens_per_byte / math.log(2),
            "tokens": tokens}


def samples(model: torch.nn.Module, tokenizer: Tokenizer, cfg: EvalConfig, seed: int) -> list[dict[str, str]]:
    """A continuation of each fixed prompt, each with its own fixed seed, so samples from one evaluation to the
    next differ only because the model changed."""
    from nextword.generate import sample

    was_training = model.training
    model.eval()
    out = []
    for index, prompt in enumerate(cfg.prompts):
        ids = list(sample(model, tokenizer.encode(prompt), cfg.sample_tokens, temperature=cfg.temperature,
                          top_k=cfg.top_k, seed=seed + index, stop_id=tokenizer.eos_id))
        out.append({"prompt": prompt, "text": tokenizer.decode(ids)})
    model.train(was_training)
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory made by `nextword train`")
    parser.add_argument("--text", metavar="FILE", help="a UTF-8 text file to score; default: the run's validation split")
    parser.add_argument("--shard-dir", metavar="DIR", help="a prepared data dir to score (its val split)")
    parser.add_argument("--batches", type=int, default=50, help="batches of the split to score (default 50)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    from nextword.checkpoint import load_for_inference
    from nextword.machine import resolve_device

    if args.batches < 1:
        raise ConfigError(f"--batches {args.batches} must be at least 1")
    device = str(resolve_device(args.device, "--device"))
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
        split = TokenShards(data_dir, "val")
        if split.tokenizer_hash != tokenizer.hash:
            raise DataError(f"{data_dir}: tokenized with another tokenizer than the run's; score it with --text")
        result = evaluate_loss(model, split, cfg.train.micro_batch, cfg.model.context, args.batches, device)
        what = f"{data_dir} (validation split)"
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{what}: loss {result['loss']:.4f} nats/token, perplexity {result['ppl']:.2f}, "
              f"{result['bpb']:.4f} bits per byte over {int(result['tokens']):,} tokens")
    return 0
