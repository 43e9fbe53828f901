"""Continued pretraining from the model directories people have: a Llama-3-style and a Mistral-style transformers
directory, each with its own tokenizer and special tokens, read through [model] init_from and written back out
through export (built here, small, with no download)."""

import copy
import shutil

import pytest
import torch

from families import llama3_tokenizer, mistral_tokenizer
from test_train import tiny  # noqa: F401 (a fixture)

from nextword.data.shards import TokenShards
from nextword.data.tokenizer import Tokenizer
from nextword.tools.export import export_model
from nextword.training.checkpoint import load_for_inference
from nextword.training.trainer import train

transformers = pytest.importorskip("transformers")


def hf_directory(folder, family: str):
    """A small randomly initialised transformers model of `family`, saved with that family's tokenizer."""
    make_tokenizer = {"llama3": llama3_tokenizer, "mistral": mistral_tokenizer}[family]
    tokenizer = Tokenizer.load(make_tokenizer(folder / "tokenizer"))
    shape = dict(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
                 bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    if family == "llama3":
        config, model_class = transformers.LlamaConfig(rope_theta=500000.0, **shape), transformers.LlamaForCausalLM
    else:
        config, model_class = transformers.MistralConfig(sliding_window=None, **shape), transformers.MistralForCausalLM
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder / "hf", safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / "tokenizer" / name, folder / "hf" / name)
    return folder / "hf", tokenizer


@pytest.mark.parametrize("family, specials", [("llama3", ("<|begin_of_text|>", "<|end_of_text|>")),
                                               ("mistral", ("<s>", "</s>"))])
def test_continued_pretraining_from_a_family_directory_and_back_out(family, specials, tiny, tmp_path):  # noqa: F811
    directory, tokenizer = hf_directory(tmp_path / family, family)
    tiny.model.init_from, tiny.train.steps = str(directory), 3
    summary = train(copy.deepcopy(tiny), progress=False)
    assert summary["steps"] == 3

    shards = TokenShards(tiny.data.data_dir, "train")
    tokens = shards.arrays[0]
    starts = shards.doc_starts[0]
    assert (tokens[starts] == tokenizer.bos_id).all() and tokens[-1] == tokenizer.eos_id  # <bos> text <eos>

    model, run_tokenizer, _ = load_for_inference(tmp_path / "run")
    assert (run_tokenizer.bos_token, run_tokenizer.eos_token) == specials and run_tokenizer.hash == tokenizer.hash
    out = export_model(model, run_tokenizer, tmp_path / "exported")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token) == specials
    assert (hf.config.bos_token_id, hf.config.eos_token_id) == (tokenizer.bos_id, tokenizer.eos_id)
    ids = torch.randint(0, tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < 1e-4
