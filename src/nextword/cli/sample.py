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

from nextword.cli import options
from nextword.model.sampling import sample
from nextword.tools.generate import StreamDecoder


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
    options.add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    from nextword.training.checkpoint import load_for_inference
    from nextword.errors import ConfigError
    from nextword.training.machine import resolve_device

    if args.max_tokens < 1:
        raise ConfigError(f"--max-tokens {args.max_tokens} must be at least 1")
    if not args.temperature >= 0 or args.top_k < 0 or not 0.0 < args.top_p <= 1.0:  # `not >=` catches nan
        raise ConfigError("--temperature and --top-k must be 0 or more, and --top-p in (0, 1]")
    device = str(resolve_device(args.device, "--device"))
    model, tokenizer, _ = load_for_inference(args.run_dir, device)
    prompt_ids = tokenizer.document_start + tokenizer.encode(args.prompt) if args.prompt else tokenizer.before_text
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
