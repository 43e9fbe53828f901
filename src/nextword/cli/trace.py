"""Walk one real training step of a real model on a piece of text, with every number shown.

Pretraining is this, repeated: the model sees a prefix of the text and predicts a probability for every
possible next token; the loss is the negative log of the probability it gave to the token that actually came
next (cross-entropy); the gradient says how to change each weight to raise that probability; the optimizer
moves the weights a very small step that way. `nextword trace` does one such step and shows:

  1. how the text becomes tokens;
  2. at each position: the prefix, the top predictions, the actual next token, its probability p, −ln p;
  3. the mean of those losses: the training loss of this one-sequence batch;
  4. one optimizer step (SGD: every weight moves by exactly −lr × its gradient), and how small it is; with
     --optimizer muon, each hidden matrix's gradient and step by their singular values;
  5. the same predictions after the step: p before → after;
  6. with the network's optional parts on (embedding norm, value embeddings, residual scalars, logit soft-cap,
     document masking), each one's numbers at the chosen --position (else the last).

`<|endoftext|>` written in the text ends a document there, as in the training data.

Without RUN it uses a freshly initialised model, which gives every token about the same probability 1/V, so
its loss is about ln V. With RUN it uses that run's newest checkpoint and tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from nextword.config import DataConfig, ModelConfig, TrainConfig
from nextword.errors import DataError
from nextword.model import GPT
from nextword.tools.trace import DEFAULT_SGD_LR, DEFAULT_TEXT, Style, render_html, render_text, trace_step


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", nargs="?", help="a run directory (default: a freshly initialised "
                        "model with the default tokenizer)")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", help=f"the text to train on (default: {DEFAULT_TEXT!r}); <|endoftext|> in it ends "
                      "a document")
    text.add_argument("--file", metavar="FILE", help="read the text from a UTF-8 file")
    parser.add_argument("--lr", type=float, help=f"learning rate (default: {DEFAULT_SGD_LR} for sgd, the run's "
                        "train.lr for adamw and for muon's AdamW part; muon's own rate is the run's train.muon_lr)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw", "muon"), default="sgd", help="sgd (default): the "
                        "update is exactly −lr·gradient; adamw: the training loop's optimizer, taking a first step "
                        "from zero moments; muon: Muon for the blocks' matrices and AdamW for the rest, showing "
                        "each matrix's gradient and orthogonalised step")
    parser.add_argument("--top-k", type=int, default=5, help="predictions to show per position (default 5)")
    parser.add_argument("--position", type=int, help="show only this position (the mean is still over all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised model (default 0)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    parser.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML page")


def run(args: argparse.Namespace) -> int:
    model, tokenizer, train = _load_model(args.run_dir, args.seed)
    text = _read_text(args)
    lr = args.lr if args.lr is not None else (DEFAULT_SGD_LR if args.optimizer == "sgd" else train.lr)
    result = trace_step(model, tokenizer, text, lr=lr, optimizer=args.optimizer, top_k=args.top_k,
                        position=args.position, train=train)
    if result.text_tokens > len(result.tokens):
        print(f"trace: the text is {result.text_tokens:,} tokens and one training window holds context + 1 = "
              f"{len(result.tokens)}, so the step uses the first {len(result.tokens)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=1))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(render_text(result, Style(colour)))
    if args.html:
        try:
            Path(args.html).write_text(render_html(result), encoding="utf-8")
        except OSError as e:
            raise DataError(f"{args.html}: cannot write the page ({e.strerror}); give --html a file path in a "
                            "folder that exists") from None
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _read_text(args: argparse.Namespace) -> str:
    if args.file is None:
        return DEFAULT_TEXT if args.text is None else args.text
    try:
        return Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{args.file}: cannot read it as UTF-8 text ({e}); pass a text file or use --text") from None


def _load_model(run_dir: str | None, seed: int):
    """The run's model, tokenizer and training settings; without a run, a fresh default model."""
    if run_dir is not None:
        from nextword.training.checkpoint import load_for_inference

        model, tokenizer, cfg = load_for_inference(run_dir, "cpu")
        return model, tokenizer, cfg.train
    from nextword.data.prepare import prepare

    print("trace: an untrained model with the default corpus's tokenizer (give a RUN for a trained one)",
          file=sys.stderr)
    tokenizer = prepare(DataConfig()).tokenizer
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size))
    return model, tokenizer, TrainConfig()
