"""Validation loss, perplexity and bits per byte of a trained run, on its held-out split or on any text file.

Bits per byte = loss in nats × tokens ÷ (UTF-8 bytes × ln 2): unlike loss per token it does not depend on the
tokenizer, so runs with different vocabularies can be compared.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from nextword.data.shards import TokenShards
from nextword.data.tokenizer import Tokenizer
from nextword.errors import ConfigError, DataError
from nextword.training.evaluator import evaluate_loss, figures


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
        logits = model(x[None])
        nats += float(F.cross_entropy(logits[0].float(), y, reduction="sum"))
        predicted += len(y)
    loss = nats / predicted
    return figures(loss, tokens_per_byte=predicted / len(text.encode("utf-8")), tokens=predicted)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory made by `nextword train`")
    parser.add_argument("--text", metavar="FILE", help="a UTF-8 text file to score; default: the run's validation split")
    parser.add_argument("--shard-dir", metavar="DIR", help="a prepared data dir to score (its val split)")
    parser.add_argument("--batches", type=int, default=50, help="batches of the split to score (default 50)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    from nextword.training.checkpoint import load_for_inference
    from nextword.training.machine import resolve_device

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
