"""Write a trained run as a Hugging Face transformers model directory.

`nextword export RUN --hf OUT` writes OUT with config.json, generation_config.json, model.safetensors and a fast
tokenizer (tokenizer.json, tokenizer_config.json), which AutoModelForCausalLM.from_pretrained(OUT) and
AutoTokenizer.from_pretrained(OUT) load with no custom code where a built-in architecture computes the model:

    gpt2 arch               → GPT2LMHeadModel (q, k, v fused into c_attn; Conv1D weights stored transposed)
    llama arch              → LlamaForCausalLM (same rotate-half RoPE layout: no weight permutation)
    llama arch with qk_norm → Qwen3ForCausalLM (Llama plus an RMSNorm on each head's queries and keys)
    mixture of experts      → Llama4ForCausalLM with a shared expert (q and k rows permuted: Llama 4 rotates
                              interleaved pairs); MixtralForCausalLM without one; Qwen3MoeForCausalLM with qk_norm

Any other dense model (a logit soft-cap, value embeddings, the embedding norm, residual scalars, document masking,
QK-norm or grouped-query attention in a gpt2 block, a llama block with a two-matrix MLP) exports as custom code:
OUT also holds modeling_nextword.py, and AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True) loads it
(lm-eval: --model hf --model_args pretrained=OUT,trust_remote_code=True). The command prints which route it took.

The names and layouts of both directions live in `nextword.model.hf`, which `[model] init_from` reads with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nextword.errors import ConfigError
from nextword.model.hf import CUSTOM_CODE, hf_architecture
from nextword.tools.export import export_model


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN", help="a run directory written by `nextword train`")
    parser.add_argument("--hf", required=True, metavar="OUT_DIR", help="where to write the transformers model")


def run(args: argparse.Namespace) -> int:
    from nextword.training.checkpoint import load_for_inference

    if Path(args.hf).resolve() == Path(args.run_dir).resolve():
        raise ConfigError(f"--hf {args.hf} is the run directory itself, whose tokenizer.json the export would "
                          f"replace; give another folder, e.g. --hf {Path(args.run_dir) / 'hf'}")
    model, tokenizer, _ = load_for_inference(args.run_dir)
    out = export_model(model, tokenizer, args.hf)
    architecture = hf_architecture(model.cfg)
    if architecture == CUSTOM_CODE:
        print(f"wrote {out} (custom code (trust_remote_code=True): {CUSTOM_CODE} of modeling_nextword.py); load it "
              f"with AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True) and "
              f"AutoTokenizer.from_pretrained({str(out)!r})")
    else:
        print(f"wrote {out} ({architecture}); load it with "
              f"AutoModelForCausalLM.from_pretrained({str(out)!r}) and AutoTokenizer.from_pretrained({str(out)!r})")
    return 0
