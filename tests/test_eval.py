import math

import pytest
import torch
import torch.nn.functional as F

from nextword import cli
from nextword.config import ModelConfig, RunConfig
from nextword.data.tokenizer import Tokenizer
from nextword.tools.evaluate import evaluate_text
from nextword.model import GPT

CONTEXT = 8


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    text = "def main():\n    return print('héllo world')\n" * 40 + "The quick brown fox jumps over the lazy dog.\n" * 40
    return Tokenizer.train([text], vocab_size=300)


def tiny_model(tokenizer: Tokenizer) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=2, context=CONTEXT, vocab_size=tokenizer.vocab_size)
    return GPT(cfg).eval()


@pytest.fixture
def run_dir(tmp_path, tokenizer):
    from nextword.training import checkpoint

    cfg = RunConfig()
    model = tiny_model(tokenizer)
    cfg.model = model.cfg
    cfg.save(tmp_path / "config.toml")
    tokenizer.save(tmp_path / "tokenizer.json")
    checkpoint.save_checkpoint(tmp_path, 1, model, torch.optim.AdamW(model.parameters()), {"step": 1}, cfg,
                               tokenizer.hash, keep_last=1)
    return tmp_path


@pytest.mark.parametrize("text", ["The quick brown fox jumps over the lazy dog, twice: the quick brown fox.",
                                  "héllo", "T"])
def test_bits_per_byte_of_a_text_counts_every_token_and_every_byte(tokenizer, text):
    """By hand: each token of the text is predicted (the first from end-of-text, as a document in training),
    windows of CONTEXT tokens, and bits per byte = total nats / (UTF-8 bytes · ln 2)."""
    model = tiny_model(tokenizer)
    ids = [tokenizer.eos_id] + tokenizer.encode(text)
    nats = 0.0
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, CONTEXT):
            window = torch.tensor(ids[begin: begin + CONTEXT + 1])
            logits = model(window[None, :-1])
            nats += F.cross_entropy(logits[0].double(), window[1:], reduction="sum").item()
    result = evaluate_text(model, tokenizer, text, CONTEXT, "cpu")
    assert result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(nats / (len(ids) - 1), rel=1e-5)
    assert result["bpb"] == pytest.approx(nats / (len(text.encode("utf-8")) * math.log(2)), rel=1e-5)


def test_eval_of_an_empty_file_names_the_file(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert cli.main(["eval", str(run_dir), "--text", str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and len(err.strip().splitlines()) == 1


def test_eval_of_a_text_shorter_than_the_context(run_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("def main", encoding="utf-8")
    assert cli.main(["eval", str(run_dir), "--text", str(short), "--json"]) == 0
    assert '"tokens": ' in capsys.readouterr().out


@pytest.mark.parametrize("device", ["foo", "mps", "cuda:7" if torch.cuda.is_available() else "cuda"])
def test_eval_refuses_a_device_this_machine_lacks_in_one_line(tmp_path, capsys, device):
    assert cli.main(["eval", str(tmp_path), "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"--device = {device!r}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("batches", ["0", "-5"])
def test_eval_refuses_fewer_than_one_batch(tmp_path, capsys, batches):
    assert cli.main(["eval", str(tmp_path), f"--batches={batches}"]) == 2
    assert f"--batches {batches}" in capsys.readouterr().err
