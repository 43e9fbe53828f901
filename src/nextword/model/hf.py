"""The same network under Hugging Face transformers' names: weights and config, both ways.

    gpt2 arch               ↔ GPT2LMHeadModel (q, k, v fused into c_attn; Conv1D weights stored transposed);
                              with mlp_activation relu2, its activation_function "relu2"
    llama arch              ↔ LlamaForCausalLM (same rotate-half RoPE layout: no weight permutation)
    llama arch with qk_norm ↔ Qwen3ForCausalLM (Llama plus an RMSNorm on each head's queries and keys)
    llama mixture of experts ↔ Llama4ForCausalLM, MixtralForCausalLM or Qwen3MoeForCausalLM (see SparseLayout)
    any other dense model    → NextwordForCausalLM, custom code (modeling_nextword.py), read back as nextword's own

Each family's Hugging Face layout (its architecture names, config fields and weight names, both ways) is one
class below, GPT2Layout or LlamaLayout, found from `ModelConfig.arch` in LAYOUTS. `load_hf_model(path)` also reads
MistralForCausalLM without a sliding window, with safetensors alone, for `[model] init_from`.

A dense model that no built-in architecture computes exactly (soft-capped logits, value embeddings, the embedding
norm, residual scalars, document masking, a llama block without its gated MLP, QK-norm or grouped-query attention in
a gpt2 block) exports as custom code instead: NextwordForCausalLM of modeling_nextword.py, a file that travels with
the weights and that transformers runs with trust_remote_code=True. Its weights keep nextword's own names, and its
config.json keeps nextword's model settings under "nextword_config", from which `load_hf_model` reads it back
without running that file. A mixture of experts with one of those options is refused by name. Writing a whole model
directory (with its tokenizer) is `nextword export`'s job.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from nextword.config import ModelConfig
from nextword.errors import CheckpointError, ConfigError
from nextword.model.network import GPT

Refusal = Callable[[str], CheckpointError]  # a reason → the error that says nextword cannot read the model

# The custom-code route: the architecture named in config.json, its model_type, and the file shipped beside the
# weights (this package's modeling_nextword.py, copied as it is).
CUSTOM_CODE = "NextwordForCausalLM"
CUSTOM_MODEL_TYPE = "nextword"
# Options that no built-in transformers architecture computes: a dense model with any of them exports as custom code.
CUSTOM_OPTIONS = ("logit_softcap", "embedding_norm", "value_embeddings", "residual_scalars", "doc_masking")


class GPT2Layout:
    """The gpt2 family as GPT2LMHeadModel."""

    reads = ("GPT2LMHeadModel",)  # the transformers architectures read as this family
    # Linear layers other than q, k, v (which GPT-2 fuses into c_attn), and the norms: Hugging Face name → ours.
    LINEARS = {"attn.c_proj": "attn.o", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    NORMS = {"ln_1": "attn_norm", "ln_2": "mlp_norm"}
    # Our activation → GPT2Config.activation_function, both computing exactly the same function.
    ACTIVATIONS = {"gelu": "gelu_new", "relu2": "relu2"}

    @staticmethod
    def architecture(cfg: ModelConfig) -> str | None:
        """None where GPT-2 computes something else: grouped-query attention or QK-norm in the block."""
        if cfg.kv_heads != cfg.n_heads or cfg.qk_norm:
            return None
        return "GPT2LMHeadModel"

    @staticmethod
    def config(cfg: ModelConfig, common: dict):
        import transformers

        return transformers.GPT2Config(
            n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.ffn_dim,
            n_positions=cfg.context, activation_function=GPT2Layout.ACTIVATIONS[cfg.mlp], layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **common)

    @staticmethod
    def to_hf(cfg: ModelConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"]}
        for i in range(cfg.n_layers):
            src, dst = f"blocks.{i}.", f"transformer.h.{i}."
            # GPT-2's Conv1D keeps weights as [in, out], the transpose of nn.Linear's [out, in].
            qkv_w = torch.cat([sd[src + f"attn.{p}.weight"] for p in "qkv"], dim=0)
            out[dst + "attn.c_attn.weight"] = qkv_w.t().contiguous()
            out[dst + "attn.c_attn.bias"] = torch.cat([sd[src + f"attn.{p}.bias"] for p in "qkv"])
            for hf_name, name in GPT2Layout.LINEARS.items():
                out[dst + hf_name + ".weight"] = sd[src + name + ".weight"].t().contiguous()
                out[dst + hf_name + ".bias"] = sd[src + name + ".bias"]
            for hf_name, name in GPT2Layout.NORMS.items():
                out[dst + hf_name + ".weight"] = sd[src + name + ".weight"]
                out[dst + hf_name + ".bias"] = sd[src + name + ".bias"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["norm.weight"], sd["norm.bias"]
        return out

    @staticmethod
    def from_hf(cfg: ModelConfig, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
        sd = {"tok_emb.weight": hf["wte.weight"], "pos_emb.weight": hf["wpe.weight"]}
        q_out = cfg.n_heads * cfg.head_dim
        for i in range(cfg.n_layers):
            src, dst = f"h.{i}.", f"blocks.{i}."
            for name, w, b in zip("qkv", hf[src + "attn.c_attn.weight"].t().split(q_out, dim=0),
                                  hf[src + "attn.c_attn.bias"].split(q_out)):
                sd[dst + f"attn.{name}.weight"], sd[dst + f"attn.{name}.bias"] = w.contiguous(), b
            for hf_name, name in GPT2Layout.LINEARS.items():
                sd[dst + name + ".weight"] = hf[src + hf_name + ".weight"].t().contiguous()
                sd[dst + name + ".bias"] = hf[src + hf_name + ".bias"]
            for hf_name, name in GPT2Layout.NORMS.items():
                sd[dst + name + ".weight"] = hf[src + hf_name + ".weight"]
                sd[dst + name + ".bias"] = hf[src + hf_name + ".bias"]
        sd["norm.weight"], sd["norm.bias"] = hf["ln_f.weight"], hf["ln_f.bias"]
        return sd

    @staticmethod
    def model_config(raw: dict, refuse: Refusal) -> ModelConfig:
        activation = raw.get("activation_function", "gelu_new")
        if activation not in ("gelu_new", "gelu_pytorch_tanh", "relu2"):
            raise refuse(f"activation {activation!r} is neither GPT-2's tanh GELU nor relu2")
        if raw.get("scale_attn_by_inverse_layer_idx") or not raw.get("scale_attn_weights", True):
            raise refuse("attention scaling other than 1/sqrt(head_dim)")
        d = raw["n_embd"]
        return ModelConfig(arch="gpt2", n_layers=raw["n_layer"], d_model=d, n_heads=raw["n_head"],
                           d_ff=raw.get("n_inner") or 4 * d, context=raw["n_positions"],
                           vocab_size=raw["vocab_size"], tie_embeddings=raw.get("tie_word_embeddings", True),
                           embedding_norm=False, norm_eps=raw.get("layer_norm_epsilon", 1e-5),
                           mlp_activation="relu2" if activation == "relu2" else "")


class LlamaLayout:
    """The llama family as LlamaForCausalLM, or Qwen3ForCausalLM with qk_norm; Mistral is read as Llama."""

    reads = ("LlamaForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")  # read as this family
    # Each layer's weights, one to one: Hugging Face name → ours.
    LAYER_NAMES = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn.q.weight",
        "self_attn.k_proj.weight": "attn.k.weight",
        "self_attn.v_proj.weight": "attn.v.weight",
        "self_attn.o_proj.weight": "attn.o.weight",
        "self_attn.q_norm.weight": "attn.q_norm.weight",
        "self_attn.k_norm.weight": "attn.k_norm.weight",
        "post_attention_layernorm.weight": "mlp_norm.weight",
        "mlp.gate_proj.weight": "mlp.gate.weight",
        "mlp.up_proj.weight": "mlp.up.weight",
        "mlp.down_proj.weight": "mlp.down.weight",
    }

    @staticmethod
    def architecture(cfg: ModelConfig) -> str | None:
        """None where the MLP is not the gated SwiGLU that Llama's and Qwen3's are."""
        if cfg.mlp != "swiglu":
            return None
        return "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"

    @staticmethod
    def config(cfg: ModelConfig, common: dict):
        import transformers

        llama_like = dict(
            hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
            max_position_embeddings=cfg.context, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
            hidden_act="silu", attention_bias=False, attention_dropout=cfg.dropout, **common)
        if cfg.qk_norm:
            return transformers.Qwen3Config(use_sliding_window=False, **llama_like)
        return transformers.LlamaConfig(mlp_bias=False, **llama_like)

    @staticmethod
    def to_hf(cfg: ModelConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {"model.embed_tokens.weight": sd["tok_emb.weight"]}
        for i in range(cfg.n_layers):
            src, dst = f"blocks.{i}.", f"model.layers.{i}."
            for hf_name, name in LlamaLayout.LAYER_NAMES.items():
                if src + name in sd:
                    out[dst + hf_name] = sd[src + name]
        out["model.norm.weight"] = sd["norm.weight"]
        return out

    @staticmethod
    def from_hf(cfg: ModelConfig, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        hf = {k.removeprefix("model."): v for k, v in hf.items()}
        sd = {"tok_emb.weight": hf["embed_tokens.weight"], "norm.weight": hf["norm.weight"]}
        for i in range(cfg.n_layers):
            for hf_name, name in LlamaLayout.LAYER_NAMES.items():
                if f"layers.{i}.{hf_name}" in hf:
                    sd[f"blocks.{i}.{name}"] = hf[f"layers.{i}.{hf_name}"]
        return sd

    @staticmethod
    def model_config(raw: dict, refuse: Refusal) -> ModelConfig:
        arch = raw["architectures"][0]
        if arch == "MistralForCausalLM" and raw.get("sliding_window"):
            raise refuse(f"sliding-window attention (window {raw['sliding_window']})")
        if arch == "Qwen3ForCausalLM" and raw.get("use_sliding_window"):
            raise refuse("sliding-window attention")
        return ModelConfig(**llama_shape(raw, refuse), d_ff=raw["intermediate_size"], qk_norm=arch == "Qwen3ForCausalLM")


def llama_shape(raw: dict, refuse: Refusal) -> dict[str, Any]:
    """The ModelConfig fields every llama-family config.json gives, dense or sparse; refused where the blocks
    differ from nextword's (biases, another activation, scaled RoPE, another head width)."""
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise refuse("biases in attention or MLP layers (nextword's llama blocks have none)")
    if raw.get("hidden_act", "silu") != "silu":
        raise refuse(f"activation {raw.get('hidden_act')!r} instead of SiLU")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise refuse(f"RoPE scaling {rope.get('rope_type') or rope.get('type')!r}")
    d, heads = raw["hidden_size"], raw["num_attention_heads"]
    if raw.get("head_dim") not in (None, d // heads):
        raise refuse(f"head_dim {raw['head_dim']} differs from hidden_size / heads = {d // heads}")
    return dict(arch="llama", n_layers=raw["num_hidden_layers"], d_model=d, n_heads=heads,
                n_kv_heads=raw.get("num_key_value_heads") or heads, context=raw.get("max_position_embeddings", 2048),
                vocab_size=raw["vocab_size"], tie_embeddings=raw.get("tie_word_embeddings", False),
                embedding_norm=False,  # no transformers architecture normalises its embedding
                rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
                norm_eps=raw.get("rms_norm_eps", 1e-6))


class SparseLayout:
    """A llama-family mixture of experts (model/moe.py), as the transformers architecture that routes the same way:

        a shared expert (Llama 4's routing)    → Llama4ForCausalLM, its text model with RoPE on every layer, no
                                                 chunked attention and no weightless QK-norm; q and k rows
                                                 permuted, as Llama 4 rotates interleaved pairs
        no shared expert, every block sparse   → MixtralForCausalLM
        no shared expert, with qk_norm         → Qwen3MoeForCausalLM (norm_topk_prob; moe_every as its sparse step)

    transformers saves Mixtral's and Qwen3-MoE's experts one by one (experts.{e}.w1 / gate_proj ...) and holds
    them fused in memory (experts.gate_up_proj); both are read here."""

    reads = ("Llama4ForCausalLM", "MixtralForCausalLM", "Qwen3MoeForCausalLM")
    ATTENTION = {k: v for k, v in LlamaLayout.LAYER_NAMES.items() if not k.startswith("mlp.")}
    DENSE = {"gate_proj.weight": "mlp.gate.weight", "up_proj.weight": "mlp.up.weight",
             "down_proj.weight": "mlp.down.weight"}

    @staticmethod
    def architecture(cfg: ModelConfig) -> str:
        if cfg.shared_experts:
            if cfg.shared_experts > 1 or cfg.qk_norm:
                raise ConfigError("a mixture of experts with shared experts exports as Llama 4, which has exactly "
                                  "one shared expert and no learned QK-norm; train with model.shared_experts = 1 "
                                  "and model.qk_norm = false to export it")
            return "Llama4ForCausalLM"
        if cfg.qk_norm:
            return "Qwen3MoeForCausalLM"
        if cfg.moe_every != 1:
            raise ConfigError("Mixtral has no dense blocks: a mixture of experts without shared experts exports "
                              "with model.moe_every = 1, or with model.qk_norm = true (as Qwen3-MoE)")
        return "MixtralForCausalLM"

    @staticmethod
    def config(cfg: ModelConfig, common: dict):
        import transformers

        shape = dict(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                     num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim, max_position_embeddings=cfg.context,
                     rms_norm_eps=cfg.norm_eps, hidden_act="silu", attention_dropout=cfg.dropout,
                     num_experts_per_tok=cfg.experts_per_token, output_router_logits=False,
                     rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, **common)
        arch = common["architectures"][0]
        if arch == "Llama4ForCausalLM":
            return transformers.Llama4TextConfig(
                intermediate_size=cfg.expert_dim, intermediate_size_mlp=cfg.ffn_dim, num_local_experts=cfg.n_experts,
                interleave_moe_layer_step=cfg.moe_every, no_rope_layers=[1] * cfg.n_layers,
                attention_chunk_size=None, use_qk_norm=False, attn_temperature_tuning=False, **shape)
        if arch == "Qwen3MoeForCausalLM":
            return transformers.Qwen3MoeConfig(
                intermediate_size=cfg.ffn_dim, moe_intermediate_size=cfg.expert_dim, num_experts=cfg.n_experts,
                decoder_sparse_step=cfg.moe_every, norm_topk_prob=True, use_sliding_window=False,
                attention_bias=False, **shape)
        return transformers.MixtralConfig(intermediate_size=cfg.expert_dim, num_local_experts=cfg.n_experts,
                                          sliding_window=None, router_jitter_noise=0.0, **shape)

    @staticmethod
    def names(cfg: ModelConfig) -> tuple[str, str]:
        """The feed-forward block's prefix and its router's name in this architecture."""
        if cfg.shared_experts:
            return "feed_forward.", "router"
        return "mlp.", "gate"

    @staticmethod
    def to_hf(cfg: ModelConfig, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        llama4 = cfg.shared_experts > 0
        ffn, router = SparseLayout.names(cfg)
        out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm.weight"]}
        for i in range(cfg.n_layers):
            src, dst = f"blocks.{i}.", f"model.layers.{i}."
            for hf_name, name in SparseLayout.ATTENTION.items():
                if src + name in sd:
                    out[dst + hf_name] = sd[src + name]
            if llama4:
                for p in "qk":
                    out[dst + f"self_attn.{p}_proj.weight"] = interleave_rope_rows(sd[src + f"attn.{p}.weight"],
                                                                                   cfg.head_dim)
            if not cfg.is_sparse(i):
                for hf_name, name in SparseLayout.DENSE.items():
                    out[dst + ffn + hf_name] = sd[src + name]
                continue
            out[dst + ffn + router + ".weight"] = sd[src + "mlp.router.weight"]
            gate_up, down = sd[src + "mlp.gate_up"], sd[src + "mlp.down"]
            if llama4:  # the same [experts, in, out] layout as ours
                out[dst + ffn + "experts.gate_up_proj"], out[dst + ffn + "experts.down_proj"] = gate_up, down
                for p in ("gate", "up", "down"):
                    out[dst + ffn + f"shared_expert.{p}_proj.weight"] = sd[src + f"mlp.shared.{p}.weight"]
            else:  # [experts, out, in], as nn.Linear keeps its weights
                out[dst + ffn + "experts.gate_up_proj"] = gate_up.transpose(1, 2).contiguous()
                out[dst + ffn + "experts.down_proj"] = down.transpose(1, 2).contiguous()
        return out

    @staticmethod
    def from_hf(cfg: ModelConfig, hf: dict[str, Tensor]) -> dict[str, Tensor]:
        llama4 = cfg.shared_experts > 0
        ffn, router = SparseLayout.names(cfg)
        hf = {k.removeprefix("model.").replace(".block_sparse_moe.", ".mlp."): v for k, v in hf.items()}
        sd = {"tok_emb.weight": hf["embed_tokens.weight"], "norm.weight": hf["norm.weight"]}
        for i in range(cfg.n_layers):
            src, dst = f"layers.{i}.", f"blocks.{i}."
            for hf_name, name in SparseLayout.ATTENTION.items():
                if src + hf_name in hf:
                    sd[dst + name] = hf[src + hf_name]
            if llama4:
                for p in "qk":
                    sd[dst + f"attn.{p}.weight"] = halve_rope_rows(hf[src + f"self_attn.{p}_proj.weight"], cfg.head_dim)
            if not cfg.is_sparse(i):
                for hf_name, name in SparseLayout.DENSE.items():
                    sd[dst + name] = hf[src + ffn + hf_name]
                continue
            sd[dst + "mlp.router.weight"] = hf[src + ffn + router + ".weight"]
            if llama4:
                sd[dst + "mlp.gate_up"] = hf[src + ffn + "experts.gate_up_proj"]
                sd[dst + "mlp.down"] = hf[src + ffn + "experts.down_proj"]
                for p in ("gate", "up", "down"):
                    sd[dst + f"mlp.shared.{p}.weight"] = hf[src + ffn + f"shared_expert.{p}_proj.weight"]
                continue
            gate_up, down = fused_experts(hf, src + ffn + "experts.", cfg.n_experts)
            sd[dst + "mlp.gate_up"] = gate_up.transpose(1, 2).contiguous()
            sd[dst + "mlp.down"] = down.transpose(1, 2).contiguous()
        return sd

    @staticmethod
    def model_config(raw: dict, refuse: Refusal) -> ModelConfig:
        arch = raw["architectures"][0]
        if raw.get("sliding_window") and (arch != "Qwen3MoeForCausalLM" or raw.get("use_sliding_window")):
            raise refuse(f"sliding-window attention (window {raw['sliding_window']})")
        shape = llama_shape(raw, refuse) | dict(experts_per_token=raw.get("num_experts_per_tok", 1))
        layers = shape["n_layers"]
        if arch == "Llama4ForCausalLM":
            step = raw.get("interleave_moe_layer_step", 1)
            if raw.get("use_qk_norm") or not all(raw.get("no_rope_layers") or [0]) or raw.get("attention_chunk_size"):
                raise refuse("QK-norm, layers without RoPE or chunked attention (nextword exports none of these)")
            if raw.get("moe_layers") not in (None, list(range(step - 1, layers, step))):
                raise refuse(f"sparse layers {raw['moe_layers']} other than every {step}th")
            return ModelConfig(**shape, d_ff=raw["intermediate_size_mlp"], n_experts=raw["num_local_experts"],
                               shared_experts=1, moe_every=step, d_expert=raw["intermediate_size"])
        if arch == "Qwen3MoeForCausalLM":
            if raw.get("mlp_only_layers") or not raw.get("norm_topk_prob"):
                raise refuse("dense-only layers or top-k weights left unnormalised")
            n_experts = raw.get("num_local_experts") or raw["num_experts"]  # transformers 5 renamed it
            return ModelConfig(**shape, qk_norm=True, d_ff=raw["intermediate_size"], n_experts=n_experts,
                               moe_every=raw.get("decoder_sparse_step", 1), d_expert=raw["moe_intermediate_size"])
        # Mixtral has no dense block, so no dense width either: d_ff is left at the family's default.
        return ModelConfig(**shape, n_experts=raw["num_local_experts"], d_expert=raw["intermediate_size"])


def interleave_rope_rows(weight: Tensor, head_dim: int) -> Tensor:
    """q or k rows from rotate-half pairs (j, j + hd/2) to interleaved pairs (2j, 2j + 1), head by head."""
    heads = weight.shape[0] // head_dim
    return weight.view(heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(weight.shape).contiguous()


def halve_rope_rows(weight: Tensor, head_dim: int) -> Tensor:
    """The inverse of interleave_rope_rows."""
    heads = weight.shape[0] // head_dim
    return weight.view(heads, head_dim // 2, 2, -1).transpose(1, 2).reshape(weight.shape).contiguous()


def fused_experts(hf: dict[str, Tensor], prefix: str, n_experts: int) -> tuple[Tensor, Tensor]:
    """[experts, 2f, d] gate-then-up and [experts, d, f] down, from fused tensors or from each expert's own."""
    if prefix + "gate_up_proj" in hf:
        return hf[prefix + "gate_up_proj"], hf[prefix + "down_proj"]
    mixtral = prefix + "0.w1.weight" in hf
    gate, up, down = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    try:
        gate_up = torch.stack([torch.cat([hf[f"{prefix}{e}.{gate}.weight"], hf[f"{prefix}{e}.{up}.weight"]])
                               for e in range(n_experts)])
        return gate_up, torch.stack([hf[f"{prefix}{e}.{down}.weight"] for e in range(n_experts)])
    except KeyError as e:
        raise CheckpointError(f"no weights {e.args[0]!r} for expert layer {prefix!r}") from None


LAYOUTS = {"gpt2": GPT2Layout, "llama": LlamaLayout}


def layout_for(cfg: ModelConfig):
    return SparseLayout if cfg.n_experts else LAYOUTS[cfg.arch]


# ---------------------------------------------------------------------------------------------------------------
# nextword → Hugging Face


def hf_architecture(cfg: ModelConfig) -> str:
    """The transformers architecture that computes exactly what this model does: a built-in one where there is one,
    else CUSTOM_CODE (modeling_nextword.py). A mixture of experts has no custom code: ConfigError naming the option."""
    custom = [name for name in CUSTOM_OPTIONS if getattr(cfg, name)]
    if cfg.n_experts:
        if custom:
            raise ConfigError(f"model.{custom[0]} with a mixture of experts cannot be exported: no transformers "
                              "architecture computes it and the custom-code export is for dense models only; train "
                              f"with model.{custom[0]} off (or model.n_experts = 0) to export")
        return SparseLayout.architecture(cfg)
    native = None if custom else LAYOUTS[cfg.arch].architecture(cfg)
    return native or CUSTOM_CODE


def is_custom_code(cfg: ModelConfig) -> bool:
    """Whether the model exports as custom code, which transformers loads with trust_remote_code=True."""
    return hf_architecture(cfg) == CUSTOM_CODE


def hf_config(cfg: ModelConfig, eos_id: int, bos_id: int | None = None):
    """The transformers config object for this shape; without a beginning-of-text token, documents begin after
    the end of the one before, as GPT-2's do."""
    common = dict(vocab_size=cfg.vocab_size, bos_token_id=eos_id if bos_id is None else bos_id, eos_token_id=eos_id,
                  tie_word_embeddings=cfg.tie_embeddings, architectures=[hf_architecture(cfg)])
    if common["architectures"] == [CUSTOM_CODE]:
        return custom_config(cfg, common)
    return layout_for(cfg).config(cfg, common)


def custom_config(cfg: ModelConfig, common: dict):
    """modeling_nextword's NextwordConfig: every choice resolved (the file knows no family defaults), and
    nextword's own settings kept whole for reading the model back."""
    from nextword.model.modeling_nextword import NextwordConfig

    family = cfg.family
    return NextwordConfig(
        hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads, intermediate_size=cfg.ffn_dim, max_position_embeddings=cfg.context,
        norm_type=family.norm, linear_bias=family.bias, positions=family.positions, mlp_activation=cfg.mlp,
        rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps, qk_norm=cfg.qk_norm, logit_softcap=cfg.logit_softcap,
        embedding_norm=cfg.embedding_norm, value_embeddings=cfg.value_embeddings,
        residual_scalars=cfg.residual_scalars, doc_masking=cfg.doc_masking, document_end=cfg.document_end,
        nextword_config=dataclasses.asdict(cfg), **common)


def hf_model_class(architecture: str):
    """The transformers model class of an architecture hf_architecture names."""
    if architecture == CUSTOM_CODE:
        from nextword.model.modeling_nextword import NextwordForCausalLM

        return NextwordForCausalLM
    import transformers

    return getattr(transformers, architecture)


def to_hf_state_dict(model: GPT) -> dict[str, Tensor]:
    """nextword's weights under Hugging Face's names (see the key list in network.py); the custom code keeps
    nextword's names."""
    cfg, sd = model.cfg, {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if is_custom_code(cfg):
        return sd
    out = layout_for(cfg).to_hf(cfg, sd)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face → nextword


def load_hf_model(path: str | Path) -> GPT:
    """A transformers model directory (safetensors weights) as a nextword GPT, in eval mode, fp32.

    Reads GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM and MistralForCausalLM without a sliding window,
    the mixtures of experts SparseLayout reads, and nextword's own custom-code export (without running its code);
    anything nextword's blocks cannot compute exactly is refused with the reason."""
    path = Path(path)
    raw = read_hf_config(path)
    custom = raw.get("model_type") == CUSTOM_MODEL_TYPE
    cfg = custom_model_config(raw, path) if custom else model_config_from_hf(raw, path)
    weights = read_hf_weights(path)
    state = {k: v.float() for k, v in weights.items()} if custom else from_hf_state_dict(cfg, weights)
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    return model.eval()


def custom_model_config(raw: dict, path: Path) -> ModelConfig:
    """The ModelConfig a custom-code export keeps under "nextword_config"."""
    settings = raw.get("nextword_config")
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}/config.json: model_type {CUSTOM_MODEL_TYPE!r} without its \"nextword_config\" "
                              "settings; export the run again with `nextword export`")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise CheckpointError(f"{path}/config.json: nextword_config has settings this nextword does not know "
                              f"({', '.join(unknown)}); read it with the nextword version that exported it")
    return ModelConfig(**settings)


def read_hf_config(path: Path) -> dict:
    file = path / "config.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: no such file; give a Hugging Face model directory") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None


def model_config_from_hf(raw: dict, path: Path) -> ModelConfig:
    arch = (raw.get("architectures") or ["?"])[0]
    where = f"{path}/config.json ({arch})"

    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"{where}: {reason}; nextword cannot represent this model")

    layouts = [*LAYOUTS.values(), SparseLayout]
    layout = next((layout for layout in layouts if arch in layout.reads), None)
    if layout is None:
        readable = [name for layout in layouts for name in layout.reads]
        raise refuse(f"only {', '.join(readable[:-1])} and {readable[-1]} are read")
    return layout.model_config(raw, refuse)


def read_hf_weights(path: Path) -> dict[str, Tensor]:
    """model.safetensors, or the shards a model.safetensors.index.json lists. Never a pickle."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        weights: dict[str, Tensor] = {}
        for shard in shards:
            if Path(shard).name != shard:
                raise CheckpointError(f"{index}: weight file {shard!r} is not a file of {path}; refusing to read it")
            weights.update(load_file(path / shard))
        return weights
    raise CheckpointError(f"{path}: no model.safetensors (nextword does not read pickled .bin weights)")


def from_hf_state_dict(cfg: ModelConfig, hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of to_hf_state_dict."""
    hf = {k: v.float() for k, v in hf.items()}
    sd = layout_for(cfg).from_hf(cfg, hf)
    if not cfg.tie_embeddings:
        if "lm_head.weight" not in hf:
            raise CheckpointError("config says the output head is untied, but the weights have no lm_head.weight")
        sd["lm_head.weight"] = hf["lm_head.weight"]
    return sd
