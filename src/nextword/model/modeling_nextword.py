"""A nextword language model in Hugging Face transformers, for the networks no built-in transformers architecture
computes: a logit soft-cap, value embeddings, an RMS-normalised embedding, residual scalars, attention kept within
each document, QK-norm in a GPT-2 block, or a llama block with a two-matrix MLP.

`nextword export` writes this file beside the weights, and config.json's auto_map points at its two classes, so

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(DIR)

load the model anywhere transformers runs (lm-eval: --model hf --model_args pretrained=DIR,trust_remote_code=True).
The file needs only torch and transformers. It computes what nextword's network computes:

    x = tok_emb[ids] (+ pos_emb[positions] | RoPE on q and k), RMS-normalised with embedding_norm; x0 = x
    for each block i:  x = resid_scales[i]·x + x0_scales[i]·x0           (residual_scalars)
                       x = x + attn(norm(x))    values + value_embed[ids] in blocks L-1, L-3, ... (value_embeddings)
                       x = x + mlp(norm(x))
    logits = cap·tanh(head(norm(x)) / cap)                                (logit_softcap; 0: no cap)

Padding: the attention mask keeps padded positions out of every other position's attention, and each row's
positions count from its first real token, so a left-padded row computes what it computes alone. With
doc_masking, a position attends only within its document: the tokens after the last document_end before it.

Generation recomputes the whole sequence at each new token (there is no key-value cache): simple and exact, and
fast enough for the short continuations of an evaluation.

The weight names are nextword's own (tok_emb.weight, blocks.0.attn.q.weight, ...), so the weights are those of
the training checkpoint unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class NextwordConfig(PretrainedConfig):
    """The network's shape and options, each resolved (no family defaults left to look up).

    norm_type: "layernorm" (with bias) or "rmsnorm"; linear_bias: biases on attention's and the MLP's linear layers;
    positions: "learned" (an embedding per position) or "rotary" (RoPE, rotate-half layout);
    mlp_activation: "gelu" (tanh GELU), "relu2" (squared ReLU), both proj(act(fc(x))), or "swiglu",
    down(silu(gate(x))·up(x)). `nextword_config` keeps nextword's own model settings, for reading the model back."""

    model_type = "nextword"

    def __init__(self, vocab_size: int = 256, hidden_size: int = 64, num_hidden_layers: int = 2,
                 num_attention_heads: int = 4, num_key_value_heads: int = 4, intermediate_size: int = 256,
                 max_position_embeddings: int = 256, norm_type: str = "layernorm", linear_bias: bool = True,
                 positions: str = "learned", mlp_activation: str = "gelu", rope_theta: float = 10000.0,
                 norm_eps: float = 1e-5, qk_norm: bool = False, logit_softcap: float = 0.0,
                 embedding_norm: bool = False, value_embeddings: bool = False, residual_scalars: bool = False,
                 doc_masking: bool = False, document_end: int = -1, tie_word_embeddings: bool = True,
                 nextword_config: dict | None = None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.norm_type = norm_type
        self.linear_bias = linear_bias
        self.positions = positions
        self.mlp_activation = mlp_activation
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.qk_norm = qk_norm
        self.logit_softcap = logit_softcap
        self.embedding_norm = embedding_norm
        self.value_embeddings = value_embeddings
        self.residual_scalars = residual_scalars
        self.doc_masking = doc_masking
        self.document_end = document_end
        self.nextword_config = nextword_config or {}
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def make_norm(config: NextwordConfig, dim: int) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps)


def rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rope_tables(config: NextwordConfig, positions: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin of each position's angles, [B, 1, T, head_dim], computed in float64 as nextword does."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64, device=positions.device) / hd))
    angles = positions.double()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def has_value_embedding(config: NextwordConfig, layer: int) -> bool:
    """Every other block counted back from the last has a value embedding, so the last block always does."""
    return config.value_embeddings and (config.num_hidden_layers - 1 - layer) % 2 == 0


class Attention(nn.Module):
    def __init__(self, config: NextwordConfig, layer: int):
        super().__init__()
        d, hd, bias = config.hidden_size, config.head_dim, config.linear_bias
        self.n_heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
        self.q = nn.Linear(d, self.n_heads * hd, bias=bias)
        self.k = nn.Linear(d, self.kv_heads * hd, bias=bias)
        self.v = nn.Linear(d, self.kv_heads * hd, bias=bias)
        self.o = nn.Linear(self.n_heads * hd, d, bias=bias)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(hd, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(hd, eps=config.norm_eps)
        self.qk_norm = config.qk_norm
        self.value_embed = (nn.Embedding(config.vocab_size, self.kv_heads * hd)
                            if has_value_embedding(config, layer) else None)

    def forward(self, x: Tensor, ids: Tensor, rope: tuple[Tensor, Tensor] | None, allowed: Tensor) -> Tensor:
        """allowed: which keys each query may see, [B, 1, T, T]."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x)
        if self.value_embed is not None:
            v = v + self.value_embed(ids).to(v.dtype)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=self.kv_heads != self.n_heads)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU by the tanh approximation, as GPT-2 computed it."""
    return F.gelu(x, approximate="tanh")


def relu_squared(x: Tensor) -> Tensor:
    return F.relu(x).square()


ACTIVATIONS = {"gelu": gelu_tanh, "relu2": relu_squared}


class MLP(nn.Module):
    """proj(act(fc(x)))."""

    def __init__(self, config: NextwordConfig):
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.linear_bias)
        self.proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.linear_bias)
        self.activation = ACTIVATIONS[config.mlp_activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.activation(self.fc(x)))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) · up(x))."""

    def __init__(self, config: NextwordConfig):
        super().__init__()
        self.gate = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: NextwordConfig, layer: int):
        super().__init__()
        self.attn_norm = make_norm(config, config.hidden_size)
        self.attn = Attention(config, layer)
        self.mlp_norm = make_norm(config, config.hidden_size)
        self.mlp = SwiGLU(config) if config.mlp_activation == "swiglu" else MLP(config)

    def forward(self, x: Tensor, ids: Tensor, rope: tuple[Tensor, Tensor] | None, allowed: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), ids, rope, allowed)
        return x + self.mlp(self.mlp_norm(x))


def attention_allowed(ids: Tensor, real: Tensor, config: NextwordConfig) -> Tensor:
    """Which keys each query may see, [B, 1, T, T]: earlier real (unpadded) positions, and with doc_masking only
    those of the query's own document. A position's document number counts the document ends before it, so the
    end token belongs to the document it ends; padding on the left (even with end tokens) adds the same count to
    every real position, and padding on the right comes after them. A padded position sees itself alone: a row with no
    key at all is NaN in some attention kernels, and NaN would reach the real positions through the padded values
    they weigh by zero. Nothing reads what a padded position computes."""
    T = ids.shape[1]
    positions = torch.arange(T, device=ids.device)
    allowed = (positions[None, :] <= positions[:, None])[None] & real[:, None, :]
    if config.doc_masking:
        ends = (ids == config.document_end).long()
        documents = ends.cumsum(dim=1) - ends
        allowed = allowed & (documents[:, None, :] == documents[:, :, None])
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=ids.device)
    return allowed.unsqueeze(1)


class NextwordPreTrainedModel(PreTrainedModel):
    config_class = NextwordConfig
    base_model_prefix = "nextword"  # no base model inside: the weights sit at the top, under nextword's names
    _no_split_modules = ["Block"]

    def _init_weights(self, module: nn.Module) -> None:
        """Only for a model made from a config alone; from_pretrained loads every weight."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, NextwordForCausalLM) and module.config.residual_scalars:
            nn.init.ones_(module.resid_scales)
            nn.init.zeros_(module.x0_scales)


class NextwordForCausalLM(NextwordPreTrainedModel, GenerationMixin):
    def __init__(self, config: NextwordConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos_emb = (nn.Embedding(config.max_position_embeddings, config.hidden_size)
                        if config.positions == "learned" else None)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.num_hidden_layers))
        self.norm = make_norm(config, config.hidden_size)
        # Tied: the head is the token embedding itself, read in forward, so there is no second weight to tie.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                           bias=False)
        if config.residual_scalars:
            self.resid_scales = nn.Parameter(torch.ones(config.num_hidden_layers))
            self.x0_scales = nn.Parameter(torch.zeros(config.num_hidden_layers))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.tok_emb = value

    def get_output_embeddings(self) -> nn.Module | None:
        return self.lm_head

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                use_cache: bool | None = None, **kwargs) -> CausalLMOutput:
        """input_ids: [B, T]; attention_mask: 1 for real tokens, 0 for padding, on either side; labels: the
        targets as transformers gives them (input_ids, shifted here; -100 is not scored), for the mean
        cross-entropy. use_cache and transformers' other arguments (output_attentions, ...) change nothing:
        there is no cache to keep."""
        config = self.config
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # counted from each row's first real token
        x = self.tok_emb(input_ids)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:
            rope = rope_tables(config, positions)
        if config.embedding_norm:
            x = F.rms_norm(x, (x.shape[-1],), eps=config.norm_eps)
        x0 = x
        allowed = attention_allowed(input_ids, real, config)
        for layer, block in enumerate(self.blocks):
            if config.residual_scalars:
                x = self.resid_scales[layer] * x + self.x0_scales[layer] * x0
            x = block(x, input_ids, rope, allowed)
        head = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(self.norm(x), head)
        if config.logit_softcap:
            logits = config.logit_softcap * torch.tanh(logits / config.logit_softcap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate keeps no cache: each step recomputes the whole sequence

    def prepare_inputs_for_generation(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                                      **kwargs) -> dict:
        """Every step sees the whole sequence so far and its padding."""
        return {"input_ids": input_ids, "attention_mask": attention_mask}
