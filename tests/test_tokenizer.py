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


# --- tokenizers of other families, with their own special tokens ---------------------------------------------


def test_a_llama3_style_tokenizer_brings_its_own_document_tokens(tmp_path):
    from families import llama3_tokenizer

    tokenizer = Tokenizer.load(llama3_tokenizer(tmp_path / "llama3"))
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("<|end_of_text|>", "<|begin_of_text|>")
    assert tokenizer.document_start == [tokenizer.bos_id] and tokenizer.lossless
    text = "   leading spaces, <|end_of_text|> as text, naïve 🙂"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_id not in tokenizer.encode(text)  # only the shard writer puts the real one in


def test_a_mistral_style_tokenizer_is_read_and_said_to_be_lossy(tmp_path):
    from families import mistral_tokenizer

    tokenizer = Tokenizer.load(mistral_tokenizer(tmp_path / "mistral"))
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("</s>", "<s>")  # the bos as an AddedToken entry
    assert not tokenizer.lossless  # its decoder drops the space it puts in front
    assert tokenizer.decode(tokenizer.encode("no leading space, 日本語\n")) == "no leading space, 日本語\n"


def test_special_tokens_come_from_the_config_files_by_id_or_from_the_settings(tmp_path):
    from families import llama3_tokenizer

    path = llama3_tokenizer(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer_config.json").unlink()
    assert Tokenizer.load(path).bos_token is None  # nothing names one: none is used
    hf = json.loads(path.read_text())
    ids = {token["content"]: token["id"] for token in hf["added_tokens"]}
    (tmp_path / "hf" / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["<|begin_of_text|>"], "eos_token_id": [ids["<|end_of_text|>"]]}))
    by_id = Tokenizer.load(path)
    assert (by_id.eos_token, by_id.bos_token) == ("<|end_of_text|>", "<|begin_of_text|>")
    given = Tokenizer.load(path, eos_token="<|begin_of_text|>", bos_token="")
    assert given.eos_token == "<|begin_of_text|>" and given.bos_token is None  # the same token cannot be both
    assert len({by_id.hash, given.hash, Tokenizer.load(path, bos_token="<|end_of_text|>").hash}) == 3


def test_saved_and_loaded_back_the_special_tokens_stay(tmp_path):
    from families import mistral_tokenizer

    original = Tokenizer.load(mistral_tokenizer(tmp_path / "mistral"))
    (tmp_path / "run").mkdir()
    original.save(tmp_path / "run" / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "run" / "tokenizer.json")
    assert (again.eos_id, again.bos_id, again.hash) == (original.eos_id, original.bos_id, original.hash)


def test_a_tokenizer_without_an_end_of_text_token_names_the_setting(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    bare = HFTokenizer(models.BPE())
    bare.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(DataError, match=r"tokenizer\.json: the tokenizer has no <\|endoftext\|> token; .*data\.eos_token"):
        Tokenizer.load(tmp_path / "tokenizer.json")


def test_the_default_tokenizers_hash_is_what_it_was(tokenizer):
    """Runs prepared before special tokens were configurable keep resuming: the hash of a tokenizer with nextword's
    own special token is the hash of its JSON alone."""
    import hashlib

    assert tokenizer.hash == hashlib.sha256(tokenizer.to_json().encode("utf-8")).hexdigest()


def test_a_tokenizer_config_that_names_no_beginning_token_wins_over_an_id_elsewhere(tmp_path):
    """Qwen's tokenizer_config.json says "bos_token": null while its config.json has a bos_token_id: no beginning
    token is used."""
    from families import llama3_tokenizer

    path = llama3_tokenizer(tmp_path / "hf")
    ids = {token["content"]: token["id"] for token in json.loads(path.read_text())["added_tokens"]}
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"bos_token_id": ids["<|begin_of_text|>"]}))
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps({"bos_token": None,
                                                                        "eos_token": "<|end_of_text|>"}))
    assert Tokenizer.load(path).bos_token is None
