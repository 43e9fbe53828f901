import math

import pytest
import torch
import torch.nn.functional as F

from nextword.config import ModelConfig
from nextword.model import loss as loss_module
from nextword.model import GPT, linear_cross_entropy
from nextword.model.loss import softcap

VOCAB = 97


def tiny(arch: str, **overrides) -> ModelConfig:
    """A small network of the family, with a tied head and a plain embedding (the defaults' untied head starts at
    zero, which would hide what these tests look at) unless the test asks otherwise."""
    shape = dict(arch=arch, n_layers=2, d_model=32, n_heads=4, context=24, vocab_size=VOCAB, tie_embeddings=True,
                 embedding_norm=False, zero_init_head=False)
    return ModelConfig(**(shape | overrides))


CONFIGS = {
    "gpt2": tiny("gpt2"),
    "gpt2-untied": tiny("gpt2", tie_embeddings=False),
    "llama": tiny("llama"),
    "llama-gqa-qknorm": tiny("llama", n_kv_heads=2, qk_norm=True, tie_embeddings=False),
    "llama-mqa": tiny("llama", n_kv_heads=1),
    # The recipe options on either family: squared ReLU, QK-norm, soft-capped logits, an untied head.
    "gpt2-relu2-qknorm-softcap": tiny("gpt2", mlp_activation="relu2", qk_norm=True, logit_softcap=3.0,
                                      tie_embeddings=False),
    "llama-relu2-softcap": tiny("llama", mlp_activation="relu2", logit_softcap=3.0),
    # The speedrun's parts: value embeddings, a normed embedding, residual scalars, document-masked attention.
    "gpt2-speedrun": tiny("gpt2", n_layers=3, value_embeddings=True, embedding_norm=True, residual_scalars=True,
                          doc_masking=True, document_end=3, tie_embeddings=False),
    "llama-gqa-speedrun": tiny("llama", n_kv_heads=2, value_embeddings=True, residual_scalars=True,
                               doc_masking=True, document_end=3),
}


def build(cfg: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_changing_a_later_token_leaves_earlier_logits_unchanged(name):
    model = build(CONFIGS[name])
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    with torch.no_grad():
        before = model(idx)
        after = model(changed)
    assert before.shape == (2, 16, VOCAB)
    torch.testing.assert_close(before[:, :9], after[:, :9], rtol=0, atol=0)
    assert not torch.allclose(before[:, 9:], after[:, 9:])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_loss_at_initialisation_is_close_to_ln_vocab(arch):
    model = build(tiny(arch, vocab_size=512))
    idx = torch.randint(0, 512, (4, 24), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, 512, (4, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, loss = model.logits_and_loss(idx, targets)
    assert abs(loss.item() - math.log(512)) / math.log(512) < 0.05
    expected = F.cross_entropy(logits.double().view(-1, 512), targets.view(-1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def plain_loss_and_grads(x, weight, targets, scale, cap=0.0):
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    logits = softcap(F.linear(x, weight).float(), cap)
    loss = F.cross_entropy(logits.view(-1, weight.shape[0]), targets.view(-1))
    (loss * scale).backward()
    return loss, x.grad, weight.grad


def fused_loss_and_grads(x, weight, targets, scale, cap=0.0):
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    loss = linear_cross_entropy(x, weight, targets, cap)
    (loss * scale).backward()
    return loss, x.grad, weight.grad


@pytest.mark.parametrize("cap", [0.0, 2.0])  # 2: the soft-cap bends logits of this spread (about ±4) well away
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_loss_and_gradients_equal_the_plain_ones_across_chunks(monkeypatch, dtype, cap):
    # 7 rows a chunk over 3·10 rows: several chunks and a short last one.
    monkeypatch.setitem(loss_module.LOSS_CHUNK_BYTES, "cpu", 7 * 4 * VOCAB)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(3, 10, 16, generator=generator)
    weight = torch.randn(VOCAB, 16, generator=generator)
    targets = torch.randint(0, VOCAB, (3, 10), generator=generator)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        plain = plain_loss_and_grads(x, weight, targets, scale=0.25, cap=cap)
        fused = fused_loss_and_grads(x, weight, targets, scale=0.25, cap=cap)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-4}
    assert fused[0].dtype == torch.float32
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-6)  # the loss is fp32 in both
    for fused_grad, plain_grad in zip(fused[1:], plain[1:]):
        torch.testing.assert_close(fused_grad, plain_grad, **tolerance)
    assert fused[1].abs().max() > 1e-3  # a real gradient, not zeros


@pytest.mark.parametrize("name", CONFIGS)
def test_model_loss_without_logits_matches_the_loss_with_them(name):
    model = build(CONFIGS[name]).train()
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(6))
    targets = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(7))
    loss = model(idx, targets)
    assert loss.shape == ()  # the loss alone, without logits
    loss.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits, plain = model.logits_and_loss(idx, targets)
    plain.backward()
    assert logits.shape == (2, 16, VOCAB)
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)
    for fused_grad, p in zip(fused_grads, model.parameters()):
        torch.testing.assert_close(fused_grad, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_tiny_model_overfits_one_batch(arch):
    model = build(tiny(arch)).train()
    data = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(4))
    x, y = data[:, :-1], data[:, 1:]
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.0, False), lr=1e-2)
    for _ in range(300):
        loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.1:
            break
    assert loss.item() < 0.1


def test_num_params_matches_a_hand_count_gpt2():
    V, d, C, L, ff = VOCAB, 32, 24, 2, 128
    per_block = (
        2 * (2 * d)  # two LayerNorms, weight and bias
        + 4 * (d * d + d)  # q, k, v, o with biases
        + (d * ff + ff) + (ff * d + d)  # fc and proj with biases
    )
    embeddings = V * d + C * d
    total = embeddings + L * per_block + 2 * d  # + final LayerNorm
    tied = build(CONFIGS["gpt2"])
    assert tied.num_params() == total
    assert tied.num_params(non_embedding=True) == total - embeddings
    untied = build(CONFIGS["gpt2-untied"])
    assert untied.num_params() == total + V * d
    assert untied.num_params(non_embedding=True) == total - embeddings
    assert "lm_head.weight" not in tied.state_dict()
    assert untied.state_dict()["lm_head.weight"].shape == (V, d)


def test_num_params_matches_a_hand_count_llama_gqa():
    cfg = CONFIGS["llama-gqa-qknorm"]
    V, d, L, hd, kv, ff = VOCAB, 32, 2, 8, 2, cfg.ffn_dim
    assert ff == 128  # 8/3 · 32 = 85, rounded up to a multiple of 64
    per_block = 2 * d + (d * d) * 2 + 2 * (d * kv * hd) + 2 * hd + 3 * d * ff
    total = V * d + L * per_block + d + V * d  # + final RMSNorm + untied head
    model = build(cfg)
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == total - 2 * V * d


def test_flops_per_token_counts_matmul_weights_and_attention():
    cfg = CONFIGS["gpt2"]
    model = build(cfg)
    d, ff = cfg.d_model, cfg.ffn_dim
    matmul = cfg.n_layers * (4 * d * d + 2 * d * ff) + cfg.vocab_size * d
    assert model.flops_per_token() == 6 * matmul + 12 * cfg.n_layers * cfg.context * d


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_optimizer_groups_hold_every_parameter_once(name, decay_embeddings):
    model = build(CONFIGS[name])
    decay, no_decay = model.optimizer_groups(0.1, decay_embeddings)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    grouped = [id(p) for p in decay["params"]] + [id(p) for p in no_decay["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert not any(n.endswith(".bias") or "norm" in n for n in decayed)
    assert ("tok_emb.weight" in decayed) == decay_embeddings
    assert "blocks.0.attn.q.weight" in decayed


def test_state_dict_keys_are_plain():
    gpt2 = set(build(CONFIGS["gpt2"]).state_dict())
    assert {"tok_emb.weight", "pos_emb.weight", "blocks.1.attn.q.bias", "blocks.0.mlp.fc.weight",
            "blocks.0.attn_norm.bias", "norm.weight"} <= gpt2
    llama = set(build(CONFIGS["llama-gqa-qknorm"]).state_dict())
    assert {"blocks.0.attn.k_norm.weight", "blocks.0.mlp.gate.weight", "blocks.0.mlp.down.weight",
            "lm_head.weight"} <= llama
    assert not any(k.endswith(".bias") or "rope" in k for k in llama)


def test_residual_projections_start_smaller():
    model = build(tiny("gpt2", n_layers=8, d_model=64, n_heads=4))
    assert model.blocks[0].attn.q.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.blocks[0].attn.o.weight.std().item() == pytest.approx(0.02 / 4, rel=0.1)
    assert model.blocks[0].mlp.fc.bias.abs().max().item() == 0.0


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_forward_token_by_token_equals_uncached(name):
    model = build(CONFIGS[name])
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(batch_size=2)
        prefill = model(idx[:, :6], cache=cache)
        steps = [model(idx[:, t:t + 1], cache=cache) for t in range(6, 17)]
        chunk = model(idx[:, 17:], cache=cache)  # several new tokens after a filled cache
    cached = torch.cat([prefill, *steps, chunk], dim=1)
    assert cache.length == 20
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


def test_cache_overflow_is_refused():
    model = build(CONFIGS["llama"])
    cache = model.new_cache(batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="do not fit"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_missing_vocab_size_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(ModelConfig())


def test_relu2_is_relu_squared_and_changes_the_mlp():
    relu2, gelu = build(tiny("gpt2", mlp_activation="relu2")), build(tiny("gpt2"))
    mlp = relu2.blocks[0].mlp
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.proj(F.relu(mlp.fc(x)) ** 2))
        assert not torch.allclose(gelu.blocks[0].mlp(x), mlp(x))  # same weights (same seed), another function
    # Two matrices of width 4·d in either family, where llama's own SwiGLU has three of 8/3·d
    llama = build(tiny("llama", mlp_activation="relu2"))
    assert {n for n, _ in llama.blocks[0].mlp.named_parameters()} == {"fc.weight", "proj.weight"}
    assert llama.blocks[0].mlp.fc.weight.shape == (4 * 32, 32)


def test_zero_init_projections_start_at_zero_and_then_learn():
    model = build(tiny("llama", zero_init_projections=True)).train()
    projections = [p for b in model.blocks for p in (b.attn.o.weight, b.mlp.down.weight)]
    assert all(p.abs().max() == 0 for p in projections)
    assert model.blocks[0].attn.q.weight.abs().max() > 0 and model.blocks[0].mlp.up.weight.abs().max() > 0
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():  # every block adds zero: the logits are those of the embeddings alone
        torch.testing.assert_close(model(idx), F.linear(model.norm(model.tok_emb(idx)), model.tok_emb.weight))
    model(idx, idx).backward()
    assert all(p.grad.abs().max() > 0 for p in projections)  # they learn from the first step


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_logit_softcap_bounds_the_logits_in_every_path(arch):
    cap = 2.0
    capped = build(tiny(arch, logit_softcap=cap, init_std=0.5))  # large weights: raw logits far beyond ±cap
    raw = build(tiny(arch, init_std=0.5))
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(9))
    targets = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        logits, raw_logits = capped(idx), raw(idx)
        assert raw_logits.abs().max() > 3 * cap and logits.abs().max() <= cap
        torch.testing.assert_close(logits, cap * torch.tanh(raw_logits / cap))
        # The fused training loss, the plain loss over the logits and the cached logits of sampling agree
        expected = F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))
        torch.testing.assert_close(capped(idx, targets), expected)
        cache = capped.new_cache(batch_size=2)
        torch.testing.assert_close(capped(idx, cache=cache), logits, rtol=0, atol=1e-5)


def test_qk_norm_works_in_a_gpt2_block():
    plain, normed = build(tiny("gpt2")), build(tiny("gpt2", qk_norm=True))
    assert "blocks.0.attn.q_norm.weight" in normed.state_dict()
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        assert not torch.allclose(plain(idx), normed(idx))
    normed.train()
    normed(idx, idx).backward()
    assert normed.blocks[0].attn.q_norm.weight.grad.abs().max() > 0


def test_hidden_matrices_are_the_blocks_linear_weights():
    model = build(CONFIGS["gpt2-relu2-qknorm-softcap"])
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = sorted(names[id(p)] for p in model.hidden_matrices())
    assert hidden == sorted(f"blocks.{i}.{m}.weight" for i in range(2)
                            for m in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj"))


def test_value_embeddings_sit_in_every_other_block_from_the_last_and_add_to_the_values():
    model = build(tiny("llama", n_layers=3, n_kv_heads=2, value_embeddings=True))
    tables = [b.attn.value_embed for b in model.blocks]
    assert tables[0] is not None and tables[1] is None and tables[2] is not None
    assert tables[2].weight.shape == (VOCAB, 2 * 8)  # kv_heads · head_dim: one vector per token and kv head
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        before = model(idx)
        tables[2].weight.zero_()
        tables[0].weight.zero_()  # tables of zeros add nothing: the network without value embeddings
        plain = build(tiny("llama", n_layers=3, n_kv_heads=2))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if "value_embed" not in k})
        torch.testing.assert_close(model(idx), plain(idx))
        assert not torch.allclose(before, plain(idx))
    # They are embeddings: AdamW's, not Muon's, and out of the non-embedding count
    hidden = {id(p) for p in model.hidden_matrices()}
    assert all(id(t.weight) not in hidden for t in tables if t is not None)
    assert model.num_params(non_embedding=True) == plain.num_params(non_embedding=True)


def test_residual_scalars_start_as_the_plain_network_and_learn():
    plain = build(tiny("gpt2"))
    scaled = build(tiny("gpt2", residual_scalars=True)).train()
    scaled.load_state_dict(plain.state_dict(), strict=False)
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        torch.testing.assert_close(scaled(idx), plain(idx))  # 1·x + 0·x0 before every block
    scaled(idx, idx).backward()
    assert scaled.resid_scales.grad.abs().min() > 0 and scaled.x0_scales.grad.abs().min() > 0
    groups = scaled.optimizer_groups(0.1, decay_embeddings=False)
    assert any(p is scaled.x0_scales for p in groups[1]["params"])  # no weight decay pulls them to 0


def test_embedding_norm_gives_the_first_block_unit_rms_input():
    model = build(tiny("gpt2", embedding_norm=True, init_std=0.5))
    seen = []
    model.blocks[0].attn_norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(15)))
    torch.testing.assert_close(seen[0].pow(2).mean(-1).sqrt(), torch.ones(2, 16), rtol=1e-3, atol=1e-3)


def test_zero_init_head_starts_an_untied_head_uniform_and_leaves_a_tied_one_as_the_embedding():
    model = build(tiny("gpt2", tie_embeddings=False, zero_init_head=True))
    idx = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        assert model(idx).abs().max() == 0  # every first prediction is uniform: loss ln V exactly
        torch.testing.assert_close(model(idx, idx), torch.tensor(math.log(VOCAB)))
    assert model.tok_emb.weight.abs().max() > 0
    tied = build(tiny("gpt2", tie_embeddings=True, zero_init_head=True))
    assert tied.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_doc_masking_keeps_attention_within_each_document(arch):
    end = 3
    model = build(tiny(arch, doc_masking=True, document_end=end))
    first = torch.randint(4, VOCAB, (1, 20), generator=torch.Generator().manual_seed(17))
    first[0, 8] = end  # document one is positions 0-8 (its end token included), document two 9-19
    other = first.clone()
    other[0, :8] = torch.randint(4, VOCAB, (8,), generator=torch.Generator().manual_seed(18))
    with torch.no_grad():
        a, b = model(first), model(other)
    torch.testing.assert_close(a[0, 9:], b[0, 9:], rtol=0, atol=1e-6)  # the second document never sees the first
    assert not torch.allclose(a[0, :9], b[0, :9])
    # Without an end token in the row it is plain causal attention
    plain = build(tiny(arch))
    row = torch.randint(4, VOCAB, (2, 20), generator=torch.Generator().manual_seed(19))
    with torch.no_grad():
        torch.testing.assert_close(model(row), plain(row), rtol=0, atol=1e-6)


def test_the_default_network_is_the_second_recipe_rounds():
    """llama blocks, an untied head that starts at zero and a normed embedding (benchmarks/RESULTS.md, recipe round
    2); a named GPT-2 keeps GPT-2's own network."""
    from nextword.config import model_preset

    model = build(ModelConfig(vocab_size=VOCAB, n_layers=2, d_model=32, n_heads=4, context=24))
    assert model.pos_emb is None and isinstance(model.norm, torch.nn.RMSNorm)  # RoPE, RMSNorm
    assert model.lm_head.weight.abs().max() == 0 and model.cfg.embedding_norm
    gpt2 = model_preset("gpt2-124m")
    assert gpt2.arch == "gpt2" and gpt2.tie_embeddings and not gpt2.embedding_norm
