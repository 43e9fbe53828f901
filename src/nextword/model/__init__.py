"""The model: the network (network.py, read top to bottom like nanoGPT's model.py), its fused output layer and
loss (loss.py), the KV cache for generation (kv_cache.py), drawing tokens (sampling.py) and the Hugging Face
names of its weights and config (hf.py). What sets the gpt2 and llama families apart is `config.FAMILIES`."""

from nextword.model.kv_cache import KVCache
from nextword.model.loss import linear_cross_entropy
from nextword.model.network import GPT

__all__ = ["GPT", "KVCache", "linear_cross_entropy"]
