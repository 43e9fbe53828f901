"""Holding out the validation split: whole documents when there are enough, else the tail of each document."""

import json

import numpy as np

from nextword.config import DataConfig
from nextword.data.prepare import prepare, summary_lines
from nextword.data.shards import TokenShards
from nextword.data.sources import SkipLog, read_sources
from nextword.data.split import BY_DOCUMENTS, BY_TAILS, choose_rule, cut_tail, split_of, split_pieces

WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()


def paragraphs(count: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "\n\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(20, 60)))) + "." for _ in range(count)) + "\n"


def split_texts(data_dir, tokenizer, split):
    """The documents of one split, decoded."""
    shards = TokenShards(data_dir, split)
    tokens = np.concatenate(shards.arrays)
    ends = np.flatnonzero(tokens == shards.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]


def test_the_tail_is_cut_at_a_paragraph_break_near_its_share():
    text = paragraphs(200)
    head, tail = cut_tail(text, 0.1)
    assert head + tail == text
    assert head.endswith("\n\n") and not tail.startswith("\n")
    assert 0.05 <= len(tail) / len(text) <= 0.15


def test_without_a_break_near_the_point_the_tail_is_cut_there():
    head, tail = cut_tail("x" * 1000, 0.1)
    assert (len(head), len(tail)) == (900, 100)
    lines = "\n".join(["word " * 30] * 40)  # lines but no paragraphs: cut at a line break
    head, tail = cut_tail(lines, 0.1)
    assert head.endswith("\n") and head + tail == lines


def test_one_document_or_a_few_are_held_out_by_tails_and_many_by_documents():
    assert choose_rule([("input.txt", 3_000_000)], 0.05) == BY_TAILS
    assert choose_rule([(f"book{i}", 500_000) for i in range(3)], 0.05) == BY_TAILS
    assert choose_rule([(f"doc{i}.txt", 2_000) for i in range(2_000)], 0.05) == BY_DOCUMENTS
    pieces = list(split_pieces([("a", "one\n\ntwo\n\nthree\n\nfour\n", "src")], BY_TAILS, 0.25))
    assert [split for split, _, _ in pieces] == ["train", "val"] and pieces[1] == ("val", "four\n", "src")


def test_a_single_text_file_gives_a_validation_split_that_training_never_sees(tmp_path):
    text = paragraphs(400)
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    cfg = DataConfig(sources=[str(tmp_path / "input.txt")], data_dir=str(tmp_path / "data"), vocab_size=300,
                     val_fraction=0.1, workers=1)
    prepared = prepare(cfg, progress=False)
    (head,) = split_texts(prepared.data_dir, prepared.tokenizer, "train")
    (tail,) = split_texts(prepared.data_dir, prepared.tokenizer, "val")
    assert head + tail == text  # all of it, each character on one side only
    assert head.endswith("\n\n") and 0.05 <= len(tail) / len(text) <= 0.15
    assert prepared.index["val_held_out"] == BY_TAILS
    lines = summary_lines(prepared.data_dir, prepared.index, SkipLog(), 1.0)
    assert any("the last 10% of each document, cut at a paragraph or line break" in line for line in lines)
    assert any(line.strip().startswith("documents   1 ") for line in lines)


def test_one_big_jsonl_record_is_held_out_by_its_tail(tmp_path):
    text = paragraphs(300, seed=1)
    (tmp_path / "data.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    cfg = DataConfig(sources=[str(tmp_path / "data.jsonl")], data_dir=str(tmp_path / "data"), vocab_size=300,
                     workers=1)
    prepared = prepare(cfg, progress=False)
    (head,) = split_texts(prepared.data_dir, prepared.tokenizer, "train")
    (tail,) = split_texts(prepared.data_dir, prepared.tokenizer, "val")
    assert head + tail == text and tail


def test_many_documents_are_still_held_out_whole(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = {f"doc_{i:03d}.txt": paragraphs(2, seed=i) for i in range(200)}
    for name, text in texts.items():
        (corpus / name).write_text(text, encoding="utf-8")
    cfg = DataConfig(sources=[str(corpus)], data_dir=str(tmp_path / "data"), vocab_size=300, val_fraction=0.2,
                     workers=1)
    prepared = prepare(cfg, progress=False)
    assert prepared.index["val_held_out"] == BY_DOCUMENTS
    val = split_texts(prepared.data_dir, prepared.tokenizer, "val")
    assert val and set(val) <= set(texts.values())  # whole documents


def test_documents_cut_from_a_large_file_are_held_out_whole_by_hash(tmp_path, monkeypatch):
    monkeypatch.setattr("nextword.data.sources.MAX_FILE_BYTES", 20_000)
    monkeypatch.setattr("nextword.data.sources.CUT_DOCUMENT_BYTES", 1_000)
    text = paragraphs(600, seed=2)  # about 150 KB: far over the lowered cap
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    cfg = DataConfig(sources=[str(tmp_path / "big.txt")], data_dir=str(tmp_path / "data"), vocab_size=300,
                     val_fraction=0.1, workers=1)
    prepared = prepare(cfg, progress=False)
    assert prepared.index["val_held_out"] == BY_DOCUMENTS
    train = split_texts(prepared.data_dir, prepared.tokenizer, "train")
    val = split_texts(prepared.data_dir, prepared.tokenizer, "val")
    assert len(train) > 50 and 0.03 <= len(val) / (len(train) + len(val)) <= 0.25
    pieces = [d.text for d in read_sources([str(tmp_path / "big.txt")], [], SkipLog())]
    expected_val = [piece for n, piece in enumerate(pieces, 1) if split_of(f"big.txt:{n}", 0.1) == "val"]
    assert val == expected_val  # whole pieces, each by its hash
    assert sorted(train + val) == sorted(pieces) and "".join(pieces) == text


def test_a_document_separator_never_reaches_the_tokenizer_as_text(tmp_path):
    stories = [paragraphs(2, seed=i).strip() for i in range(120)]
    (tmp_path / "stories.txt").write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    cfg = DataConfig(sources=[str(tmp_path / "stories.txt")], data_dir=str(tmp_path / "data"), vocab_size=300,
                     val_fraction=0.1, workers=1, doc_separator="<|endoftext|>")
    prepared = prepare(cfg, progress=False)
    texts = (split_texts(prepared.data_dir, prepared.tokenizer, "train")
             + split_texts(prepared.data_dir, prepared.tokenizer, "val"))
    assert sorted(texts) == sorted(stories)  # one end-of-document token per story, and no marker in any text
    assert prepared.index["val_held_out"] == BY_DOCUMENTS
