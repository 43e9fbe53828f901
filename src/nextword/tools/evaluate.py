"""Validation loss, perplexity and bits per byte of a trained model, on a prepared data dir's held-out split or on
any text.

Bits per byte = loss in nats × tokens ÷ (UTF-8 bytes × ln 2): unlike loss per token it does not depend on the
tokenizer, so runs with different vocabularies can be compared.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from nextword.data.shards import TokenShards
from nextword.data.tokenizer import Tokenizer
from nextword.errors import DataError
from nextword.training.evaluator import evaluate_loss, figures


@torch.no_grad()
def evaluate_text(model: torch.nn.Module, tokenizer: Tokenizer, text: str, context: int,
                  device: torch.device | str, where: str = "the text") -> dict[str, float]:
    """Loss over every token of `text`, in windows of `context` tokens, and its bits per byte."""
    ids = tokenizer.encode(text)
    if not ids:
        raise DataError(f"{where}: empty, so there is nothing to score; give a file with some text in it")
    model.eval()
    # The first token is predicted from what comes before every document in training (the end of the one before,
    # or the tokenizer's beginning token): so the loss covers every byte of the text, which bits per byte divide.
    ids = tokenizer.before_text + ids
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


def evaluate_split(model: torch.nn.Module, tokenizer: Tokenizer, data_dir: str | Path, micro_batch: int,
                   context: int, batches: int, device: torch.device | str) -> dict[str, float]:
    """Loss over `batches` batches of a prepared data dir's validation split, which `tokenizer` must have made."""
    split = TokenShards(Path(data_dir), "val")
    if split.tokenizer_hash != tokenizer.hash:
        raise DataError(f"{data_dir}: tokenized with another tokenizer than the run's; score it with --text")
    return evaluate_loss(model, split, micro_batch, context, batches, device)
