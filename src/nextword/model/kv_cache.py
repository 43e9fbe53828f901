"""The keys and values of the tokens a model has already seen, kept so that generating each next token computes
one new position instead of the whole text again. `GPT.new_cache` makes one; `GPT.forward` fills it."""

from __future__ import annotations

import torch

from nextword.config import ModelConfig


class KVCache:
    """Keys and values of the tokens seen so far, per layer, preallocated to `max_len` positions.

    k[i] and v[i] have shape [batch, kv_heads, max_len, head_dim]; the first `length` positions are filled.
    With document-masked attention (model.doc_masking), `documents` [batch, max_len] holds each position's document
    number, so that a new token attends only to the keys of its own document.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if not 0 < max_len <= cfg.context:
            raise ValueError(f"a KV cache holds 1 to context = {cfg.context} positions, not {max_len}")
        shape = (batch_size, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.documents = torch.zeros((batch_size, max_len), device=device, dtype=torch.long) if cfg.doc_masking else None
        self.ends_last = torch.zeros((batch_size, 1), device=device, dtype=torch.long)  # the last position was an end
        self.max_len = max_len
        self.length = 0
