"""Drawing tokens from the model: the next-token distribution reshaped by temperature, top-k and top-p, and a loop
that feeds each drawn token back through a KV cache, so each step computes one new position instead of the whole
text again.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from nextword.model.network import GPT


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
                logits = model(torch.tensor([unseen], device=device), cache=cache)
            else:
                logits = model(torch.tensor([tokens[-context:]], device=device))
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
