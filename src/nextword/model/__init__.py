"""The network (network.py), read top to bottom like nanoGPT's model.py."""

from nextword.model.network import GPT, KVCache, linear_cross_entropy

__all__ = ["GPT", "KVCache", "linear_cross_entropy"]
