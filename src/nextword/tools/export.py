"""A trained model and its tokenizer as a Hugging Face transformers model directory, which AutoModelForCausalLM and
AutoTokenizer load (`nextword export --help` lists what it holds and which architecture each family becomes): with
no custom code where a built-in architecture computes the model, else with trust_remote_code=True and the
modeling_nextword.py written beside the weights. The weight names and config fields, both ways, live in
`nextword.model.hf`.
"""

from __future__ import annotations

from pathlib import Path

from nextword.data.tokenizer import Tokenizer
from nextword.errors import CheckpointError, ConfigError
from nextword.model import GPT
from nextword.model.hf import CUSTOM_CODE, hf_config, hf_model_class, to_hf_state_dict


def export_model(model: GPT, tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Write `model` and `tokenizer` as a transformers model directory (fp32 weights in safetensors)."""
    try:
        import transformers
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise ConfigError("exporting needs the transformers package: pip install 'nextword[hf]'") from None
    cfg = model.cfg
    if tokenizer.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{cfg.vocab_size}; they do not belong together")
    out = Path(out_dir)
    config = hf_config(cfg, tokenizer.eos_id, tokenizer.bos_id)
    model_class = hf_model_class(config.architectures[0])
    if config.architectures[0] == CUSTOM_CODE:
        # save_pretrained then copies the classes' file beside the weights and names them in config.json's auto_map.
        type(config).register_for_auto_class("AutoConfig")
        model_class.register_for_auto_class("AutoModelForCausalLM")
    hf_model = model_class(config)
    missing, unexpected = hf_model.load_state_dict(to_hf_state_dict(model), strict=False)
    # Tied heads and GPT-2's causal-mask buffers are not weights of their own.
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_embeddings) and not k.endswith(".attn.bias")]
    if missing or unexpected:
        raise CheckpointError(f"weight names do not line up with {config.architectures[0]}: "
                              f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    bos = tokenizer.bos_token or tokenizer.eos_token
    hf_model.generation_config.bos_token_id = config.bos_token_id
    hf_model.generation_config.eos_token_id = tokenizer.eos_id
    hf_model.generation_config.pad_token_id = tokenizer.eos_id
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=HFTokenizer.from_str(tokenizer.to_json()), bos_token=bos, eos_token=tokenizer.eos_token,
        pad_token=tokenizer.eos_token, model_max_length=cfg.context, clean_up_tokenization_spaces=False)
    try:
        out.mkdir(parents=True, exist_ok=True)
        hf_model.save_pretrained(out, safe_serialization=True)
        fast.save_pretrained(out)
    except OSError as e:
        raise ConfigError(f"{out}: cannot write the model there ({e.strerror or e}); give --hf a folder you can "
                          "write to") from None
    return out
