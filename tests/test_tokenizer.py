import json
from pathlib import Path

import pytest

from nextword.data.tokenizer import EOS, Tokenizer
from nextword.errors import DataError

TEXTS = [
    "def add(a, b):\r\n\treturn a + b  # sum\r\n",
    "   three leading spaces and a trailing one ",
    "naïve café, 日本語のテキスト, emoji 🙂🚀 and a family 👨‍👩‍👧",
    "tabs\tand\tnewlines\n\n\nmixed\r\nline\rendings",
    f"the literal text {EOS} inside a document",
    "",
    "\x00\x01\x7f control bytes",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXTS * 20, vocab_size=320)


def test_round_trip_is_lossless(tokenizer):
    for text in TEXTS + ["unseen ✓ text ∑ 🦀", " ", "\r\n"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_batch_encoding_matches_single(tokenizer):
    assert tokenizer.encode_batch(TEXTS) == [tokenizer.encode(t) for t in TEXTS]


def test_eos_is_only_added_by_the_writer(tokenizer):
    assert tokenizer.token_text(tokenizer.eos_id) == EOS
    assert tokenizer.eos_id not in tokenizer.encode(TEXTS[4])


def test_a_vocabulary_too_large_to_train_is_a_one_line_error_not_an_abort():
    # Asked for 10**9 tokens, the trainer tried to reserve 70 GB and aborted the whole process.
    with pytest.raises(DataError, match=r"vocab_size = 1,000,000,000 .*set data.vocab_size lower"):
        Tokenizer.train(TEXTS, vocab_size=10**9)


def test_vocab_size_and_merges(tokenizer):
    assert tokenizer.vocab_size == 320
    assert len(tokenizer.encode(TEXTS[0])) < len(TEXTS[0].encode("utf-8"))  # merges were learned


def test_save_load_keeps_ids_and_hash(tokenizer, tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.hash == tokenizer.hash
    assert [loaded.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]
    assert Tokenizer.train(TEXTS * 20, vocab_size=320).hash == tokenizer.hash  # training is deterministic


@pytest.mark.parametrize("content, message", [
    (None, "no such tokenizer file"),
    ("{not json", "not a JSON file"),
    ('{"hello": 1}', "not a Hugging Face tokenizer.json"),
])
def test_bad_tokenizer_file_is_a_data_error(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as raised:
        Tokenizer.load(path)
    assert str(path) in str(raised.value)


def test_tokenizer_without_eos_is_refused(tokenizer, tmp_path):
    raw = json.loads(tokenizer.to_json())
    raw["added_tokens"] = []
    del raw["model"]["vocab"][EOS]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="no <\\|endoftext\\|> token"):
        Tokenizer.load(path)


def test_a_save_that_fails_leaves_the_old_file_and_no_temporary_one(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    path.write_text("the earlier tokenizer")

    def disk_fills(self, text, encoding=None):
        with open(self, "w", encoding=encoding) as file:
            file.write(text[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_fills)
    with pytest.raises(OSError, match="No space left"):
        tokenizer.save(path)
    assert path.read_text() == "the earlier tokenizer"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
