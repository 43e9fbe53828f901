import math

import pytest
import torch

from nextword.config import ModelConfig, RunConfig
from nextword.data.tokenizer import Tokenizer
from nextword.model.sampling import next_token_probs, sample
from nextword.tools.generate import StreamDecoder
from nextword.model import GPT

VOCAB = 61
CONTEXT = 16


def tiny_model(arch: str = "gpt2", vocab: int = VOCAB) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, n_layers=2, d_model=32, n_heads=4, context=CONTEXT, vocab_size=vocab,
                      n_kv_heads=2 if arch == "llama" else 0, init_std=0.2,  # a wide init: peaky, varied logits
                      tie_embeddings=True, embedding_norm=False)  # (a head at zero would make every logit equal)
    return GPT(cfg).eval()


def test_greedy_is_the_argmax_chain():
    model = tiny_model()
    tokens = [3, 14, 15]
    expected = []
    with torch.no_grad():
        for _ in range(30):  # past the context, so the window slides
            logits = model(torch.tensor([tokens[-CONTEXT:]]))
            expected.append(int(logits[0, -1].argmax()))
            tokens.append(expected[-1])
    assert list(sample(model, [3, 14, 15], 30, temperature=0)) == expected
    assert list(sample(model, [3, 14, 15], 30, temperature=0, use_cache=False)) == expected


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                      dict(temperature=1.2, top_p=0.9)])
def test_cached_sampling_equals_uncached_with_the_same_seed(arch, settings):
    model = tiny_model(arch)
    prompt = [1, 2, 3, 4, 5]
    cached = list(sample(model, prompt, 40, seed=7, **settings))  # 45 tokens: well past the context of 16
    uncached = list(sample(model, prompt, 40, seed=7, use_cache=False, **settings))
    assert len(cached) == 40
    assert cached == uncached
    assert len(set(cached)) > 3  # really sampled, not stuck on one token
    assert list(sample(model, prompt, 40, seed=8, **settings)) != cached


def test_a_prompt_longer_than_the_context_is_cropped():
    model = tiny_model()
    prompt = list(range(1, 40))
    assert list(sample(model, prompt, 5, temperature=0)) == list(sample(model, prompt[-CONTEXT:], 5, temperature=0))


def test_top_k_one_equals_greedy():
    model = tiny_model("llama")
    greedy = list(sample(model, [7], 25, temperature=0))
    assert list(sample(model, [7], 25, temperature=1.5, top_k=1, seed=3)) == greedy


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()
    kept = lambda p: (next_token_probs(logits, top_p=p) > 0).tolist()  # noqa: E731
    assert kept(0.45) == [False, True, False, False]
    assert kept(0.75) == [False, True, False, True]
    assert kept(0.9) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    probs = next_token_probs(logits, top_p=0.75)
    torch.testing.assert_close(probs, torch.tensor([0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]))


def test_top_k_and_temperature_reshape_the_distribution():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    probs = next_token_probs(logits, temperature=2.0, top_k=2)
    expected = torch.tensor([0.0, math.exp(1.5), math.exp(1.0), 0.0])
    torch.testing.assert_close(probs, expected / expected.sum())


@pytest.mark.parametrize("temperature", [1e-30, 1e-45])
def test_a_tiny_temperature_draws_the_most_likely_token(temperature):
    logits = torch.tensor([1.0, 3.0, 2.0, -40.0])
    torch.testing.assert_close(next_token_probs(logits, temperature=temperature), torch.tensor([0.0, 1.0, 0.0, 0.0]))
    model = tiny_model()
    greedy = list(sample(model, [7], 10, temperature=0))
    assert list(sample(model, [7], 10, temperature=temperature, seed=1)) == greedy


def test_sampling_follows_the_distribution():
    model = tiny_model(vocab=VOCAB)
    with torch.no_grad():
        logits = model(torch.tensor([[9]]))
    probs = next_token_probs(logits[0, -1])
    draws = [next(sample(model, [9], 1, temperature=1.0, seed=s)) for s in range(400)]
    top = int(probs.argmax())
    assert abs(draws.count(top) / 400 - probs[top].item()) < 0.08


def test_stop_id_ends_generation_without_yielding_it():
    model = tiny_model()
    greedy = list(sample(model, [3], 20, temperature=0))
    stop = greedy[4]
    first = greedy.index(stop)
    assert list(sample(model, [3], 20, temperature=0, stop_id=stop)) == greedy[:first]


def test_an_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="prompt"):
        next(sample(tiny_model(), [], 3))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    text = "def main():\n    return print('hello world')\n" * 40 + "The quick brown fox jumps over the lazy dog.\n" * 40
    return Tokenizer.train([text], vocab_size=300)


def test_stream_decoder_holds_back_a_split_character(tokenizer):
    ids = tokenizer.encode("a→b")  # '→' is three UTF-8 bytes the tokenizer never merged
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.add(i) for i in ids]
    assert "".join(pieces) + decoder.flush() == "a→b"
    assert "\ufffd" not in "".join(pieces)
    assert "" in pieces  # the first bytes of the arrow waited for the last


def test_sample_command_streams_the_continuation(tmp_path, tokenizer, capsys):
    from nextword import cli
    from nextword.training import checkpoint

    cfg = RunConfig()
    cfg.model = ModelConfig(arch="llama", n_layers=1, d_model=32, n_heads=2, context=CONTEXT,
                            vocab_size=tokenizer.vocab_size)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    cfg.save(tmp_path / "config.toml")
    tokenizer.save(tmp_path / "tokenizer.json")
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoint.save_checkpoint(tmp_path, 1, model, optimizer, {"step": 1}, cfg, tokenizer.hash, keep_last=1)

    code = cli.main(["sample", str(tmp_path), "--prompt", "def main", "--max-tokens", "12", "--seed", "5",
                     "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0
    expected = list(sample(model.eval(), tokenizer.encode("def main"), 12, temperature=0.8, top_k=50, seed=5,
                           stop_id=tokenizer.eos_id))
    assert out.out == tokenizer.decode(tokenizer.encode("def main") + expected) + "\n"
    assert "tokens/s" in out.err


@pytest.mark.parametrize("flag", ["--temperature=nan", "--temperature=-1", "--top-p=0", "--top-p=nan"])
def test_sample_refuses_a_bad_setting_in_one_line(tmp_path, capsys, flag):
    from nextword import cli

    assert cli.main(["sample", str(tmp_path), flag]) == 2
    err = capsys.readouterr().err
    assert "--temperature" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("device", ["foo", "tpu", "cuda:7" if torch.cuda.is_available() else "cuda"])
def test_sample_refuses_a_device_this_machine_lacks_in_one_line(tmp_path, capsys, device):
    from nextword import cli

    assert cli.main(["sample", str(tmp_path), "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"--device = {device!r}" in err and len(err.strip().splitlines()) == 1
