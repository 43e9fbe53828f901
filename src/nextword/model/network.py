"""The decoder-only transformer: one model, two families, chosen by `ModelConfig.arch` (`config.FAMILIES` says
what each family builds; the code below asks `cfg.family`, never the arch's name).

    "gpt2"   learned absolute positions, LayerNorm (with bias), GELU MLP, biases on every linear layer
    "llama"  rotary positions (RoPE), RMSNorm, SwiGLU MLP, no biases, grouped-query attention, optional QK-norm

Both are pre-norm: x = x + attn(norm(x)); x = x + mlp(norm(x)); logits = head(norm(x)). Options on top of either
family: the MLP's activation (`mlp_activation`, e.g. squared ReLU), QK-norm, an untied head (which may start at
zero), output projections that start at zero, and logits soft-capped to ±cap by cap·tanh(logits / cap)
(`logit_softcap`); and, from the GPT-2 speedrun (modded-nanogpt) and nanochat: the embedding RMS-normalised
(`embedding_norm`), value embeddings (`value_embeddings`: v = v + ve[token] in every other block, counted back from
the last), two learned scalars per block that mix the embedding x0 back in (`residual_scalars`:
x = resid_scale[i]·x + x0_scale[i]·x0 before block i), and attention kept within each document (`doc_masking`).
`model(idx)` gives the logits; `model(idx, targets)` the mean cross-entropy, through the fused output layer and loss
of loss.py.

State-dict keys (stable; the Hugging Face exporter maps them one to one):

    tok_emb.weight                          [vocab, d]      token embeddings (also the output head when tied)
    pos_emb.weight                          [context, d]    gpt2 only
    blocks.{i}.attn_norm.weight / .bias                     .bias gpt2 only
    blocks.{i}.attn.q.weight / .bias        [heads·hd, d]   .bias gpt2 only (likewise k, v, o)
    blocks.{i}.attn.k.weight / .bias        [kv_heads·hd, d]
    blocks.{i}.attn.v.weight / .bias        [kv_heads·hd, d]
    blocks.{i}.attn.o.weight / .bias        [d, heads·hd]
    blocks.{i}.attn.q_norm.weight           [hd]            qk_norm only (RMSNorm over each head)
    blocks.{i}.attn.k_norm.weight           [hd]            qk_norm only
    blocks.{i}.attn.value_embed.weight      [vocab, kv_heads·hd]  value_embeddings only, in blocks L-1, L-3, ...
    blocks.{i}.mlp_norm.weight / .bias
    blocks.{i}.mlp.fc.weight / .bias        [ffn, d]        gpt2: proj(gelu(fc(x))); relu2: proj(relu(fc(x))²)
    blocks.{i}.mlp.proj.weight / .bias      [d, ffn]
    blocks.{i}.mlp.gate.weight              [ffn, d]        llama: down(silu(gate(x)) · up(x))
    blocks.{i}.mlp.up.weight                [ffn, d]
    blocks.{i}.mlp.down.weight              [d, ffn]
    blocks.{i}.mlp.router.weight, .gate_up, .down, .shared.*  a sparse block instead (see moe.py)
    norm.weight / .bias                                     final norm; .bias gpt2 only
    lm_head.weight                          [vocab, d]      only when tie_embeddings is false; never a bias
    resid_scales, x0_scales                 [n_layers]      residual_scalars only

q, k and v are separate projections (not one fused qkv), so grouped-query attention and the export stay simple.
RoPE uses the "rotate half" layout (the first and second halves of each head are the pairs), the same layout as
Hugging Face's Llama, so q and k weights need no permutation on export.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextword.config import ModelConfig
from nextword.model.kv_cache import KVCache
from nextword.model.loss import linear_cross_entropy, softcap
from nextword.model.moe import MoE

def rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each head's pairs (x[j], x[j + hd/2]) by position-dependent angles. x: [B, H, T, hd]."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def rope_tables(cfg: ModelConfig) -> tuple[Tensor, Tensor]:
    """cos and sin of every position's angles, [context, head_dim], in the rotate-half layout."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim))
    angles = torch.outer(torch.arange(cfg.context, dtype=torch.float64), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float(), angles.sin().float()


NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    return NORMS[cfg.family.norm](dim, eps=cfg.norm_eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        bias = cfg.family.bias
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=bias)
        self.k = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=bias)
        self.v = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=bias)
        self.o = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=bias)
        self.o.is_residual_output = True
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
            self.k_norm = nn.RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.value_embed = nn.Embedding(cfg.vocab_size, cfg.kv_heads * cfg.head_dim) if has_value_embedding(cfg, layer) else None
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int,
                idx: Tensor, allowed: Tensor | None) -> Tensor:
        """idx: the tokens at these positions (for the value embedding); allowed: which keys each query may see
        (a document mask, [B, 1, T, keys]), or None for plain causal attention."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x)
        if self.value_embed is not None:
            v = v + self.value_embed(idx).to(v.dtype)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)

        start = 0
        if cache is not None:
            start = cache.length
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]

        # With grouped-query attention the kernels read each shared kv head in place (enable_gqa): on CPU (torch
        # 2.13, 8 query heads over 2 kv heads) forward + backward took about half the time of repeating them.
        gqa = self.kv_heads != self.n_heads

        dropout = self.dropout if self.training else 0.0
        if allowed is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, enable_gqa=gqa)
        elif start == 0:
            # No cache, or a prefill into an empty one: plain causal attention.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=gqa)
        elif T == 1:
            # One new token after the cache: it may see every key so far.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, enable_gqa=gqa)
        else:
            # Several new tokens after a filled cache: query j sits at position start + j.
            allowed = torch.arange(start + T, device=x.device) <= torch.arange(start, start + T, device=x.device)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o(y)


def has_value_embedding(cfg: ModelConfig, layer: int) -> bool:
    """Whether block `layer` has a value embedding: every other block, counted back from the last (as nanochat places
    them), so the last block always has one and a model of L blocks has ceil(L / 2) tables."""
    return cfg.value_embeddings and (cfg.n_layers - 1 - layer) % 2 == 0


def document_mask(idx: Tensor, document_end: int, cache: KVCache | None) -> Tensor:
    """Which keys each query may see, [B, 1, T, keys], when attention stays within a document: the earlier
    positions (causal) whose document number is the query's. A position's document number counts the
    end-of-document tokens before it, so the end token itself still belongs to the document it ends."""
    ends = (idx == document_end).long()
    documents = ends.cumsum(dim=1) - ends
    start = 0
    if cache is not None:
        start = cache.length
        if start:  # continue the count from the cached positions: the last one's number, plus one if it ended a document
            documents += cache.documents[:, start - 1:start] + cache.ends_last
        cache.documents[:, start:start + idx.shape[1]] = documents
        cache.ends_last = ends[:, -1:]
        documents_seen = cache.documents[:, :start + idx.shape[1]]
    else:
        documents_seen = documents
    positions = torch.arange(start + idx.shape[1], device=idx.device)
    causal = positions <= positions[start:, None]
    return (causal & (documents_seen[:, None, :] == documents[:, :, None])).unsqueeze(1)


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU as GPT-2 computed it, by the tanh approximation."""
    return F.gelu(x, approximate="tanh")


def relu_squared(x: Tensor) -> Tensor:
    return F.relu(x).square()


ACTIVATIONS = {"gelu": gelu_tanh, "relu2": relu_squared}


class MLP(nn.Module):
    """proj(act(fc(x))), act being GELU (gpt2) or squared ReLU; biases as the family has them."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.family.bias)
        self.proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.family.bias)
        self.proj.is_residual_output = True
        self.activation = ACTIVATIONS[cfg.mlp]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.activation(self.fc(x)))


class SwiGLU(nn.Module):
    """llama: down(silu(gate(x)) · up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)
        self.down.is_residual_output = True

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


MLPS = {"gelu": MLP, "relu2": MLP, "swiglu": SwiGLU}


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = make_norm(cfg, cfg.d_model)
        self.mlp = MoE(cfg) if cfg.is_sparse(layer) else MLPS[cfg.mlp](cfg)  # MoE: see moe.py
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int,
                idx: Tensor, allowed: Tensor | None) -> Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), rope, cache, layer, idx, allowed))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) before building the model")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.family.positions == "learned" else None
        if cfg.family.positions == "rotary":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.norm = make_norm(cfg, cfg.d_model)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.residual_scalars:
            self.resid_scales = nn.Parameter(torch.ones(cfg.n_layers))
            self.x0_scales = nn.Parameter(torch.zeros(cfg.n_layers))
        self.apply(self._init_weights)
        if cfg.zero_init_head and not cfg.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.cfg.init_std
        if isinstance(module, nn.Linear):
            # Each block adds two outputs to the residual stream; scaling them keeps its variance flat with depth.
            # At zero (zero_init_projections, as modded-nanogpt does) every block starts as the identity.
            if getattr(module, "is_residual_output", False):
                std = 0.0 if self.cfg.zero_init_projections else std / math.sqrt(2 * self.cfg.n_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, cache: KVCache | None = None) -> Tensor:
        """idx: [B, T] token ids. Without targets: the logits, [B, T, V]. With targets [B, T]: the mean
        cross-entropy, in fp32 even under bf16 autocast, from the fused output layer and loss
        (`linear_cross_entropy`), which is faster and lighter than taking it over the logits.

        With a cache, idx holds only the new tokens, which sit at positions cache.length ...; their keys and
        values are appended to it."""
        T = idx.shape[1]
        start = 0 if cache is None else cache.length
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"{T} new tokens do not fit a KV cache holding {start} of {cache.max_len} positions")
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        else:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        if self.cfg.embedding_norm:
            x = F.rms_norm(x, (x.shape[-1],), eps=self.cfg.norm_eps)
        x = self.dropout(x)
        x0 = x
        allowed = document_mask(idx, self.cfg.document_end, cache) if self.cfg.doc_masking else None
        for layer, block in enumerate(self.blocks):
            if self.cfg.residual_scalars:
                x = self.resid_scales[layer] * x + self.x0_scales[layer] * x0
            x = block(x, rope, cache, layer, idx, allowed)
        x = self.norm(x)
        if cache is not None:
            cache.length = start + T
        head = self.tok_emb.weight if self.cfg.tie_embeddings else self.lm_head.weight
        if targets is None:
            return softcap(F.linear(x, head), self.cfg.logit_softcap)
        return linear_cross_entropy(x, head, targets, self.cfg.logit_softcap)

    def logits_and_loss(self, idx: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The logits [B, T, V] and the mean cross-entropy taken over them the plain way, for the few callers
        that look at both. Training takes forward's fused loss instead, which never holds the fp32 logits."""
        logits = self(idx)
        return logits, F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for this model, on its device and in its dtype."""
        weight = self.tok_emb.weight
        return KVCache(self.cfg, batch_size, max_len or self.cfg.context, device=weight.device, dtype=weight.dtype)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The lookup tables: token, (learned positions) position and value embeddings."""
        tables = [self.tok_emb.weight]
        if self.pos_emb is not None:
            tables.append(self.pos_emb.weight)
        tables += [block.attn.value_embed.weight for block in self.blocks if block.attn.value_embed is not None]
        return tables

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters (a tied embedding counts once). non_embedding leaves out the token, position and value
        embeddings, and the output head when it is untied."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= sum(p.numel() for p in self.embedding_parameters())
            if not self.cfg.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6·N_matmul + 12·L·T·d.

        Each weight in a matrix multiply (see matmul_weights) costs 2 FLOPs per token forward and 4 backward, hence
        6·N. Attention adds Q·Kᵀ and A·V: 2·T·d each per layer forward, ×3 with backward, hence 12·L·T·d with
        T = context (the whole T×T score matrix is counted, as in the PaLM paper's appendix B and nanoGPT's
        estimate_mfu).
        """
        cfg = self.cfg
        return 6 * self.matmul_weights() + 12 * cfg.n_layers * cfg.context * cfg.d_model

    def matmul_weights(self) -> int:
        """The weights a token meets in matrix multiplies: every linear layer in the blocks, the routed experts a
        token visits in a sparse block (not all of them: MFU counts active parameters), the output head (V·d,
        whether or not it is tied), but not the embedding lookups, norms or biases."""
        n_matmul = sum(m.weight.numel() for m in self.blocks.modules() if isinstance(m, nn.Linear))
        # A sparse block's routed experts count only as many as a token visits (router and shared are linears).
        n_matmul += sum(m.routed_params_per_token() for m in self.blocks.modules() if isinstance(m, MoE))
        return n_matmul + self.cfg.vocab_size * self.cfg.d_model

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The blocks' weight matrices (attention's q, k, v, o and the MLP's): what Muon optimizes. The value
        embeddings are lookup tables, not matrices a vector multiplies, so AdamW keeps them with the other
        embeddings."""
        tables = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.blocks.parameters() if p.dim() == 2 and id(p) not in tables]

    def optimizer_groups(self, weight_decay: float, decay_embeddings: bool) -> list[dict]:
        """Two AdamW parameter groups: weight matrices decay; norms, biases and (unless decay_embeddings)
        embeddings do not. Every parameter appears exactly once."""
        embeddings = {id(p) for p in self.embedding_parameters()}
        decay, no_decay = [], []
        for p in self.parameters():
            is_matrix = p.dim() >= 2 and (decay_embeddings or id(p) not in embeddings)
            (decay if is_matrix else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
