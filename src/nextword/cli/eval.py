"""Validation loss, perplexity and bits per byte of a trained run, on its held-out split or on any text file.

Bits per byte = loss in nats × tokens ÷ (UTF-8 bytes × ln 2): unlike loss per token it does not depend on the
tokenizer, so runs with different vocabularies can be compared.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nextword.errors import ConfigError, DataError
from nextword.tools.evaluate import evaluate_split, evaluate_text


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
        result = evaluate_split(model, tokenizer, data_dir, cfg.train.micro_batch, cfg.model.context, args.batches,
                                device)
        what = f"{data_dir} (validation split)"
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{what}: loss {result['loss']:.4f} nats/token, perplexity {result['ppl']:.2f}, "
              f"{result['bpb']:.4f} bits per byte over {int(result['tokens']):,} tokens")
    return 0
