"""Generate text from a trained run, streamed to the terminal as it is made.

Each new token is drawn from the model's predicted distribution for the next token, reshaped by the
temperature (lower: safer choices; 0: always the most likely token), top-k (only the k most likely) and top-p
(only the most likely tokens that together hold probability p). A KV cache keeps every earlier token's keys
and values, so each step computes one new position instead of the whole text again.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Iterator

import torch
from torch import Tensor

from nextword.model import GPT


def sample(model: GPT, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 0.8, top_k: int = 0,
           top_p: float = 1.0, seed: int | None = None, use_cache: bool = True,
           stop_id: int | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` token ids after `prompt_ids`, one at a time, as they are drawn.

    The model sees at most its last `context` tokens. temperature 0 is greedy (top_k and top_p are then moot).
    Drawing `stop_id` ends the generation; that token is not yielded. With the same seed, the cached and the
    uncached paths yield the same tokens: once the text outgrows the context, the window slides, every position
    moves, and the cache can no longer be reused, so both paths recompute the last `context` tokens.
    The model should be in eval mode.
    """
    if not prompt_ids:
        raise ValueError("sample() needs at least one prompt token (start from the end-of-text id for a fresh document)")
    context = model.cfg.context
    device = model.tok_emb.weight.device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    tokens = list(prompt_ids)
    cache = model.new_cache(batch_size=1) if use_cache else None
    unseen = tokens[-context:]  # the tokens the cache has not yet taken in
    for _ in range(max_new_tokens):
        if cache is not None and cache.length + len(unseen) > context:
            cache = None
        with torch.no_grad():
            if cache is not None:
                logits, _ = model(torch.tensor([unseen], device=device), cache=cache)
            else:
                logits, _ = model(torch.tensor([tokens[-context:]], device=device))
        next_id = pick(logits[0, -1], temperature, top_k, top_p, generator)
        if next_id == stop_id:
            return
        yield next_id
        tokens.append(next_id)
        unseen = [next_id]


def pick(logits: Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator) -> int:
    """One token id from a vector of next-token logits."""
    if temperature == 0:
        return int(logits.argmax())
    probs = next_token_probs(logits, temperature, top_k, top_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def next_token_probs(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """The distribution a token is drawn from: softmax(logits / temperature), restricted to the top_k most likely
    tokens (0: all), then to the smallest set of the most likely whose probability reaches top_p, renormalised."""
    # Dividing after subtracting the largest logit keeps a tiny temperature from overflowing to inf (and softmax
    # to nan): the most likely token stays at 0, the others go towards −inf, and the draw tends to greedy.
    logits = (logits.float() - logits.max().float()) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # A token stays if the more likely ones before it hold less than top_p; the most likely always stays.
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter(0, order, before >= top_p)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum()
    return probs


class StreamDecoder:
    """Turns token ids, one at a time, into text pieces to print. A multi-byte character split across tokens
    decodes as '�' until its last byte arrives, so such text is held back until the next token completes it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []  # ids after the last character printed in full

    def add(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd"):
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text, self.pending = self.tokenizer.decode(self.pending), []
        return text


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run directory written by `nextword train`")
    parser.add_argument("--prompt", default="", help="text to continue (default: a fresh document)")
    parser.add_argument("--max-tokens", type=int, default=200, help="how many tokens to generate (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy; higher: more varied (default 0.8)")
    parser.add_argument("--top-k", type=int, default=50, help="draw only from the K most likely tokens; 0: all (default 50)")
    parser.add_argument("--top-p", type=float, default=1.0, help="draw only from the most likely tokens holding "
                        "probability P (default 1.0: all)")
    parser.add_argument("--seed", type=int, default=None, help="a seed for a repeatable draw")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole text at every step (slower; "
                        "gives the same tokens)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")


def run(args: argparse.Namespace) -> int:
    from nextword.checkpoint import load_for_inference
    from nextword.errors import ConfigError
    from nextword.machine import resolve_device

    if args.max_tokens < 1:
        raise ConfigError(f"--max-tokens {args.max_tokens} must be at least 1")
    if not args.temperature >= 0 or args.top_k < 0 or not 0.0 < args.top_p <= 1.0:  # `not >=` catches nan
        raise ConfigError("--temperature and --top-k must be 0 or more, and --top-p in (0, 1]")
    device = str(resolve_device(args.device, "--device"))
    model, tokenizer, _ = load_for_inference(args.run_dir, device)
    prompt_ids = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.eos_id]
    decoder = StreamDecoder(tokenizer)
    sys.stdout.write(args.prompt)
    start, count = time.perf_counter(), 0
    for token_id in sample(model, prompt_ids, args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache, stop_id=tokenizer.eos_id):
        sys.stdout.write(decoder.add(token_id))
        sys.stdout.flush()
        count += 1
    sys.stdout.write(decoder.flush() + "\n")
    seconds = time.perf_counter() - start
    print(f"[{count} tokens in {seconds:.2f} s, {count / seconds:.1f} tokens/s on {device}]", file=sys.stderr)
    return 0
