import json

import pytest
import torch

from nextword.config import ModelConfig
from nextword.data.tokenizer import EOS, Tokenizer
from nextword.errors import CheckpointError, ConfigError
from nextword.model.hf import load_hf_model
from nextword.tools.export import export_model
from nextword.model import GPT

transformers = pytest.importorskip("transformers")

TEXT = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.\n",
        "import os\nprint(os.getcwd())\n"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXT, vocab_size=300)


def small(arch: str, vocab: int, **overrides) -> ModelConfig:
    # A larger init spread than training uses, so random logits are far apart and greedy choices are clear.
    # A tied head and a plain embedding unless a case asks otherwise: the networks transformers has built in.
    shape = dict(arch=arch, n_layers=2, d_model=64, n_heads=4, context=32, vocab_size=vocab, init_std=0.2,
                 tie_embeddings=True, embedding_norm=False, zero_init_head=False)
    return ModelConfig(**(shape | overrides))


FAMILIES = {
    "gpt2": dict(arch="gpt2"),
    "llama": dict(arch="llama"),
    "llama-gqa-untied": dict(arch="llama", n_kv_heads=2, tie_embeddings=False, rope_theta=500000.0),
    "llama-qknorm": dict(arch="llama", qk_norm=True),
    # transformers' GPT-2 takes activation_function "relu2", exactly our squared ReLU
    "gpt2-relu2-untied": dict(arch="gpt2", mlp_activation="relu2", tie_embeddings=False),
    # Mixtures of experts: a shared expert with top-1 (Llama 4, here with a dense first block), top-k alone.
    "moe-shared": dict(arch="llama", n_kv_heads=2, n_experts=4, experts_per_token=1, shared_experts=1, d_expert=48,
                       moe_every=2, tie_embeddings=False),
    "moe-topk": dict(arch="llama", n_kv_heads=2, n_experts=4, experts_per_token=2, d_expert=48),
    "moe-topk-qknorm": dict(arch="llama", qk_norm=True, n_experts=4, experts_per_token=2, d_expert=48, moe_every=2),
}
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "gpt2-relu2-untied": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                 "llama-gqa-untied": "LlamaForCausalLM", "llama-qknorm": "Qwen3ForCausalLM",
                 "moe-shared": "Llama4ForCausalLM", "moe-topk": "MixtralForCausalLM",
                 "moe-topk-qknorm": "Qwen3MoeForCausalLM"}


def greedy(step, prompt: torch.Tensor, n: int) -> list[int]:
    ids = prompt
    for _ in range(n):
        ids = torch.cat([ids, step(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_with_the_same_logits(family, tokenizer, tmp_path):
    cfg = small(vocab=tokenizer.vocab_size + 4, **FAMILIES[family])  # padded past the tokenizer, as nextword may
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    out = export_model(model, tokenizer, tmp_path / "hf")

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == ARCHITECTURES[family]
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    ids = torch.randint(0, tokenizer.vocab_size, (2, cfg.context), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids)
        theirs = hf(ids).logits
        assert (ours - theirs).abs().max().item() < 1e-4

        prompt = ids[:1, :5]
        expected = greedy(model, prompt, 10)
        generated = hf.generate(prompt, max_new_tokens=10, do_sample=False, min_new_tokens=10,
                                attention_mask=torch.ones_like(prompt), pad_token_id=tokenizer.eos_id)
        assert generated[0, 5:].tolist() == expected

        back = load_hf_model(out)
        assert back.cfg.arch == cfg.arch and back.cfg.qk_norm == cfg.qk_norm and back.cfg.mlp == cfg.mlp
        sparse_shape = ("n_experts", "experts_per_token", "shared_experts", "moe_every", "expert_dim")
        assert [getattr(back.cfg, k) for k in sparse_shape] == [getattr(cfg, k) for k in sparse_shape]
        assert back.cfg.ffn_dim == cfg.ffn_dim or all(map(cfg.is_sparse, range(cfg.n_layers)))
        assert (back(ids) - ours).abs().max().item() < 1e-5


# Dense models no built-in transformers architecture computes: they export as custom code (modeling_nextword.py).
CUSTOM_CODE = {
    "softcap-gpt2": dict(arch="gpt2", logit_softcap=3.0),
    "softcap-llama": dict(arch="llama", logit_softcap=5.0),
    "speedrun-gpt2": dict(arch="gpt2", value_embeddings=True, residual_scalars=True, embedding_norm=True),
    "speedrun-llama-gqa": dict(arch="llama", n_kv_heads=2, value_embeddings=True, residual_scalars=True,
                               embedding_norm=True, logit_softcap=5.0),
    "doc-masking": dict(arch="llama", doc_masking=True),
    "qknorm-gpt2": dict(arch="gpt2", qk_norm=True, n_kv_heads=2),
    "zero-head-relu2-llama": dict(arch="llama", tie_embeddings=False, zero_init_head=True, mlp_activation="relu2"),
    # The default network: llama blocks, an untied head that starts at zero, the embedding RMS-normalised
    "default": {name: getattr(ModelConfig(), name)
                for name in ("arch", "tie_embeddings", "zero_init_head", "embedding_norm")},
}


def custom_model(tokenizer, options: dict) -> GPT:
    """A tiny model with `options`, every learned scalar and the head moved off their starting values (as training
    would move them), so that each one has to travel for the logits to agree."""
    cfg = small(vocab=tokenizer.vocab_size + 4, d_model=32, **options)
    if cfg.doc_masking:
        cfg.document_end = tokenizer.eos_id
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        if cfg.residual_scalars:
            model.resid_scales.uniform_(0.5, 1.5)
            model.x0_scales.uniform_(-0.5, 0.5)
        if cfg.zero_init_head:
            model.lm_head.weight.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("options", CUSTOM_CODE.values(), ids=CUSTOM_CODE.keys())
def test_a_model_no_transformers_architecture_computes_exports_as_custom_code(options, tokenizer, tmp_path):
    model = custom_model(tokenizer, options)
    cfg = model.cfg
    out = export_model(model, tokenizer, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "modeling_nextword.NextwordConfig",
                                  "AutoModelForCausalLM": "modeling_nextword.NextwordForCausalLM"}
    assert "import nextword" not in (out / "modeling_nextword.py").read_text()  # it travels without nextword

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(hf).__name__ == "NextwordForCausalLM"
    ids = torch.randint(0, tokenizer.vocab_size, (2, cfg.context), generator=torch.Generator().manual_seed(1))
    ids[:, [6, 17]] = tokenizer.eos_id  # documents end inside the rows
    with torch.no_grad():
        ours = model(ids)
        assert (ours - hf(ids).logits).abs().max().item() < 1e-4
        assert hf(ids, labels=ids).loss.item() == pytest.approx(model(ids[:, :-1], ids[:, 1:]).item(), abs=1e-5)

        # A row left-padded (with the end token, as lm-eval pads) computes what it computes alone.
        pad = 3
        padded = torch.cat([torch.full((1, pad), tokenizer.eos_id), ids[:1, :-pad]], dim=1)
        mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, cfg.context - pad, dtype=torch.long)], 1)
        assert (hf(padded, attention_mask=mask).logits[:, pad:] - model(ids[:1, :-pad])).abs().max().item() < 1e-4

        prompt = ids[:1, :10]  # holds an end token
        generated = hf.generate(prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                attention_mask=torch.ones_like(prompt), pad_token_id=tokenizer.eos_id)
        assert generated[0, 10:].tolist() == greedy(model, prompt, 6)

        back = load_hf_model(out)
        assert back.cfg == cfg
        assert torch.equal(back(ids), ours)


def test_a_mixture_of_experts_no_transformers_architecture_computes_is_refused_naming_the_option(tokenizer, tmp_path):
    model = GPT(small(vocab=tokenizer.vocab_size, arch="llama", n_experts=4, d_expert=48, logit_softcap=30.0))
    with pytest.raises(ConfigError, match="model.logit_softcap") as refused:
        export_model(model, tokenizer, tmp_path / "hf")
    assert len(str(refused.value).splitlines()) == 1
    assert not (tmp_path / "hf").exists()


def test_lm_eval_loads_a_custom_code_export_and_scores_as_nextword_does(tokenizer, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = custom_model(tokenizer, CUSTOM_CODE["speedrun-llama-gqa"])
    out = export_model(model, tokenizer, tmp_path / "hf")
    hflm = HFLM(pretrained=str(out), trust_remote_code=True, batch_size=2, device="cpu", dtype="float32")
    requests = [("def add(a, b):", "\n    return a + b"), ("The quick brown", " fox jumps over the lazy dog.")]
    theirs = hflm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(requests)])
    for (context, continuation), (logprob, is_greedy) in zip(requests, theirs, strict=True):
        whole = tokenizer.encode(context + continuation)
        first = len(tokenizer.encode(context))
        ids = torch.tensor([whole])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids[:, :-1])[0].double(), dim=-1)
        rows = range(first - 1, len(whole) - 1)
        assert logprob == pytest.approx(sum(logprobs[i, whole[i + 1]].item() for i in rows), abs=1e-4)
        assert is_greedy == all(logprobs[i].argmax().item() == whole[i + 1] for i in rows)


def test_exported_tokenizer_is_a_fast_tokenizer_with_eos(tokenizer, tmp_path):
    model = GPT(small("llama", tokenizer.vocab_size))
    out = export_model(model, tokenizer, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.is_fast
    assert hf_tok.eos_token == EOS and hf_tok.bos_token == EOS
    assert hf_tok.eos_token_id == tokenizer.eos_id
    text = "def add(x, y):\n    return x + y  # ünïcode\n"
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text)
    assert hf_tok.decode(tokenizer.encode(text)) == text
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == tokenizer.eos_id


def write_config(folder, **config):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


LLAMA = dict(architectures=["LlamaForCausalLM"], hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
             num_hidden_layers=2, intermediate_size=128, vocab_size=300, max_position_embeddings=32)


@pytest.mark.parametrize("config, reason", [
    (dict(LLAMA, architectures=["MistralForCausalLM"], sliding_window=4096), "sliding-window"),
    (dict(LLAMA, attention_bias=True), "biases"),
    (dict(LLAMA, hidden_act="gelu"), "activation"),
    (dict(LLAMA, rope_scaling={"rope_type": "llama3", "factor": 8.0}), "RoPE scaling"),
    (dict(LLAMA, architectures=["FalconForCausalLM"]), "only GPT2LMHeadModel"),
    (dict(architectures=["NextwordForCausalLM"], model_type="nextword"), "without its \"nextword_config\""),
    (dict(architectures=["NextwordForCausalLM"], model_type="nextword", nextword_config={"d_model": 32, "warp": 1}),
     "does not know \\(warp\\)"),
])
def test_import_refuses_what_nextword_cannot_represent(tmp_path, config, reason):
    with pytest.raises(CheckpointError, match=reason):
        load_hf_model(write_config(tmp_path / "m", **config))


def test_import_never_reads_pickled_weights(tmp_path):
    folder = write_config(tmp_path / "m", **LLAMA)
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="pickled"):
        load_hf_model(folder)
