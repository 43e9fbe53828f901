import os

import numpy as np
import pytest

from nextword.config import DataConfig
from nextword.data.prepare import prepare
from nextword.data.shards import TokenShards
from nextword.data.tokenizer import Tokenizer
from nextword.errors import DataError

SNIPPETS = [
    "def add(a, b):\r\n\treturn a + b\r\n",
    "The quick brown fox jumps over the lazy dog. ",
    "naïve café — 日本語 — emoji 🙂🚀\n",
    "    indented with spaces\n\tand a tab\n",
]


def make_corpus(folder, files=40):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        text = "".join(SNIPPETS[(i + j) % len(SNIPPETS)] for j in range(3 + i % 5)) + f"# file {i}\n"
        (folder / f"doc_{i:03d}.txt").write_text(text, encoding="utf-8", newline="")
    return folder


def config(corpus, data_dir, **changes):
    settings = dict(sources=[str(corpus)], data_dir=str(data_dir), vocab_size=300, val_fraction=0.2, workers=1)
    return DataConfig(**{**settings, **changes})


def test_prepare_writes_lossless_shards_with_eos_between_documents(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    prepared = prepare(config(corpus, tmp_path / "data"), progress=False)
    assert not prepared.reused and prepared.tokenizer.vocab_size == 300
    texts = {p.name: p.read_bytes().decode("utf-8") for p in corpus.iterdir()}
    decoded = []
    for split in ("train", "val"):
        shards = TokenShards(prepared.data_dir, split)
        assert shards.tokenizer_hash == prepared.tokenizer.hash and shards.documents > 0
        tokens = np.concatenate(shards.arrays)
        ends = np.flatnonzero(tokens == shards.eos_id)
        assert len(ends) == shards.documents and ends[-1] == len(tokens) - 1
        starts = np.concatenate([[0], ends[:-1] + 1])
        assert list(starts) == list(shards.doc_starts[0])
        decoded += [prepared.tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]
        assert shards.num_bytes == sum(len(t.encode()) for t in decoded[-shards.documents:])
    assert sorted(decoded) == sorted(texts.values())  # every document, exactly, in one split or the other


def test_output_is_byte_identical_with_one_and_two_workers(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    one = prepare(config(corpus, tmp_path / "one", workers=1), progress=False).data_dir
    two = prepare(config(corpus, tmp_path / "two", workers=2), progress=False).data_dir
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    assert "train_00000.bin" in names and "val_00000.docs.npy" in names
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_every_message_goes_to_stderr_even_from_worker_processes(tmp_path, capfd):
    corpus = make_corpus(tmp_path / "corpus")
    cfg = config(corpus, tmp_path / "data", workers=2)
    prepare(cfg, progress=True)
    prepare(cfg, progress=True)
    printed = capfd.readouterr()  # file-descriptor level, so forked workers' output would be caught too
    assert printed.out == ""
    assert "trained a 300-token tokenizer" in printed.err and "reusing" in printed.err
    assert "documents   40" in printed.err


def test_prepare_reuses_its_output_and_redoes_it_when_an_input_changes(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    cfg = config(corpus, tmp_path / "data")
    first = prepare(cfg, progress=False)
    again = prepare(cfg, progress=False)
    assert again.reused and again.tokenizer.hash == first.tokenizer.hash
    printed = capsys.readouterr()
    assert "reusing" in printed.err and printed.out == ""
    changed = corpus / "doc_000.txt"
    changed.write_text("an entirely new first document\n")
    os.utime(changed, ns=(1, 1))  # a new mtime even where the clock is coarse
    (first.data_dir / "train_00007.bin").write_bytes(b"stale")
    (first.data_dir / "train_notes.txt").write_text("the user's own file")
    redone = prepare(cfg, progress=False)
    assert not redone.reused
    assert redone.index["splits"] != first.index["splits"]
    assert not (first.data_dir / "train_00007.bin").exists()  # an old shard is never mixed into the new data
    assert (first.data_dir / "train_notes.txt").exists()


def test_default_cache_folder_is_keyed_by_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    corpus = make_corpus(tmp_path / "corpus", files=12)
    small = prepare(config(corpus, "", vocab_size=280), progress=False)
    large = prepare(config(corpus, "", vocab_size=300), progress=False)
    assert small.data_dir.parent == large.data_dir.parent == tmp_path / "cache" / "data"
    assert small.data_dir != large.data_dir


def test_given_tokenizer_is_used_as_it_is(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    tokenizer = Tokenizer.train(SNIPPETS * 10, vocab_size=290)
    tokenizer.save(tmp_path / "mine.json")
    prepared = prepare(config(corpus, tmp_path / "data", tokenizer=str(tmp_path / "mine.json")), progress=False)
    assert prepared.tokenizer.hash == tokenizer.hash
    assert TokenShards(prepared.data_dir, "train").tokenizer_hash == tokenizer.hash


def test_folder_without_usable_documents_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: no usable documents"):
        prepare(config(empty, tmp_path / "data"), progress=False)
    (empty / "blank.txt").write_text("   \n")
    with pytest.raises(DataError, match=r"no usable documents \(skipped 1 files or records: 1 empty"):
        prepare(config(empty, tmp_path / "data"), progress=False)
    assert not (tmp_path / "data" / "index.json").exists()
