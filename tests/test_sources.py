"""The source readers: the default corpus, folders, JSONL (plain, gzip, zstd), parquet, skips and fingerprints."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from nextword.data.sources import (
    DEFAULT_CORPUS_NAME,
    SkipLog,
    default_corpus,
    read_sources,
    sources_fingerprint,
)
from nextword.errors import DataError

EXTENSIONS = [".txt", ".md", ".py"]


def read(sources: list, extensions: list = EXTENSIONS) -> tuple[list, SkipLog]:
    skips = SkipLog()
    return list(read_sources([str(source) for source in sources], extensions, skips)), skips


def jsonl_bytes(records: list) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


# --- the default corpus ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdlib_docs() -> list:
    return list(default_corpus())


def test_default_corpus_is_large_and_deterministic(stdlib_docs):
    assert len(stdlib_docs) > 300
    again = list(default_corpus())
    assert [(d.id, d.text) for d in again] == [(d.id, d.text) for d in stdlib_docs]
    ids = [d.id for d in stdlib_docs]
    assert len(set(ids)) == len(ids)
    code_ids = [d.id for d in stdlib_docs if d.source == "stdlib"]
    assert code_ids == sorted(code_ids)
    assert "stdlib:json/decoder.py" in ids


def test_default_corpus_includes_pydoc_topics_as_prose(stdlib_docs):
    topics = {d.id: d for d in stdlib_docs if d.source == "pydoc"}
    assert len(topics) > 20
    assert "pydoc:assert" in topics
    assert "assert" in topics["pydoc:assert"].text
    # the topics table is data for the pydoc documents, not a code document of its own
    assert "stdlib:pydoc_data/topics.py" not in {d.id for d in stdlib_docs}


def test_default_corpus_excludes_tests_and_installed_packages(stdlib_docs):
    for doc in stdlib_docs:
        parts = doc.id.removeprefix("stdlib:").split("/")[:-1]
        assert not any(part.startswith("test") or part == "idle_test" for part in parts), doc.id
        assert "site-packages" not in parts and "__pycache__" not in parts, doc.id


def test_empty_sources_and_stdlib_name_mean_the_default_corpus(stdlib_docs):
    first_ids = [d.id for d in stdlib_docs[:5]]
    assert [d.id for d in read([])[0][:5]] == first_ids
    assert [d.id for d in read([DEFAULT_CORPUS_NAME])[0][:5]] == first_ids


# --- files and folders -----------------------------------------------------------------------------------


def test_folder_reads_by_extension_and_counts_bad_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha text\n")
    (tmp_path / "sub" / "b.py").write_text("print('beta')\n")
    (tmp_path / "c.csv").write_text("not,picked\n")
    (tmp_path / "bin.txt").write_bytes(b"head\x00\x01\x02tail")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "empty.md").write_text("")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("tooling, not text")

    docs, skips = read([tmp_path])

    assert [d.id for d in docs] == ["a.txt", "sub/b.py"]
    assert docs[0].text == "alpha text\n" and docs[0].source == "file"
    assert docs[1].meta["path"] == str(tmp_path / "sub" / "b.py")
    assert skips.total == 3
    assert skips.by_reason == {"binary": 1, "not valid UTF-8": 1, "empty": 1}
    skipped_files = {Path(path).name: reason for path, reason in skips.examples}
    assert set(skipped_files) == {"bin.txt", "latin.txt", "empty.md"}
    (line,) = skips.summary_lines()
    assert line.startswith("skipped 3 files or records: ")
    assert "1 not valid UTF-8" in line and "latin.txt" in line and "empty.md" in line
    assert json.loads(json.dumps(skips.to_dict()))["total"] == 3


def test_single_file_is_read_whatever_its_extension(tmp_path):
    path = tmp_path / "notes.log"
    path.write_text("a log line\n")
    docs, skips = read([path], extensions=[".txt"])
    assert [(d.id, d.text) for d in docs] == [("notes.log", "a log line\n")]
    assert skips.total == 0


@pytest.fixture
def small_caps(monkeypatch):
    """A "large" file is one over 1,000 bytes, cut into documents of at most 100, read 64 bytes at a time (so
    separators and characters fall across reads)."""
    monkeypatch.setattr("nextword.data.sources.MAX_FILE_BYTES", 1_000)
    monkeypatch.setattr("nextword.data.sources.CUT_DOCUMENT_BYTES", 100)
    monkeypatch.setattr("nextword.data.sources.READ_CHUNK_BYTES", 64)
    monkeypatch.setattr("nextword.data.sources.BINARY_SNIFF_BYTES", 16)


def test_file_over_the_size_cap_is_cut_at_blank_lines_into_bounded_documents(tmp_path, small_caps):
    text = "\n\n".join(f"Paragraph {i}: " + "word " * (i % 9) for i in range(120)) + "\n"
    (tmp_path / "big.txt").write_text(text)
    (tmp_path / "small.txt").write_text("x" * 1_000)
    docs, skips = read([tmp_path])
    assert docs[-1].id == "small.txt" and docs[-1].text == "x" * 1_000  # up to the cap: one document, as it was
    pieces = docs[:-1]
    assert skips.total == 0 and len(pieces) > 10
    assert "".join(d.text for d in pieces) == text  # every byte, once, in order
    assert [d.id for d in pieces] == [f"big.txt:{n}" for n in range(1, len(pieces) + 1)]
    assert all(len(d.text.encode()) <= 100 and d.text.endswith("\n\n") for d in pieces[:-1])  # whole paragraphs
    assert [d.meta["byte"] for d in pieces] == [text.encode().find(d.text.encode()) for d in pieces]


def test_text_without_blank_lines_is_cut_at_whitespace_and_text_without_any_between_characters(tmp_path, small_caps):
    words = " ".join(f"w{i}" for i in range(1_000))  # text8: one line of words
    runes = "é€🙂" * 200  # no whitespace at all, and characters of 2, 3 and 4 bytes
    (tmp_path / "text8.txt").write_text(words)
    (tmp_path / "runes.txt").write_text(runes)
    for name, text in (("text8.txt", words), ("runes.txt", runes)):
        docs, skips = read([tmp_path / name])
        assert skips.total == 0 and "".join(d.text for d in docs) == text
        assert all(len(d.text.encode()) <= 100 for d in docs)
        if name == "text8.txt":
            assert all(d.text.endswith(" ") for d in docs[:-1])  # no word is cut in two


def test_a_document_separator_cuts_every_text_file_and_never_stays_in_the_text(tmp_path, small_caps):
    stories = [f"Story {i}. Once upon a time " + "la " * (i % 11) + "the end." for i in range(60)]
    text = "".join(f"{story}\n<|endoftext|>\n" for story in stories)  # TinyStories' layout
    (tmp_path / "stories.txt").write_text(text)
    docs, skips = read([tmp_path / "stories.txt"])
    assert "<|endoftext|>" in docs[0].text  # without the setting, a file is cut only for its size
    skips = SkipLog()
    docs = list(read_sources([str(tmp_path / "stories.txt")], [], skips, doc_separator="<|endoftext|>"))
    assert [d.text for d in docs] == stories and skips.total == 0
    assert [d.id for d in docs] == [f"stories.txt:{n}" for n in range(1, 61)]
    (tmp_path / "three.txt").write_text("one\n<|endoftext|>\ntwo<|endoftext|>three\n")  # under the cap too
    docs = list(read_sources([str(tmp_path / "three.txt")], [], SkipLog(), doc_separator="<|endoftext|>"))
    assert [d.text for d in docs] == ["one", "two", "three"]


def test_a_separated_document_over_the_cap_is_cut_so_memory_stays_bounded(tmp_path, small_caps):
    (tmp_path / "long.txt").write_text("short<SEP>" + "word " * 500 + "<SEP>last")
    docs = list(read_sources([str(tmp_path / "long.txt")], [], SkipLog(), doc_separator="<SEP>"))
    assert docs[0].text == "short" and docs[-1].text == "last" and len(docs) == 5
    assert all(len(d.text) <= 1_000 for d in docs) and "<SEP>" not in "".join(d.text for d in docs)


def test_a_large_file_counts_its_bad_pieces_and_keeps_the_rest(tmp_path, small_caps):
    good = ("good text " * 9 + "\n\n").encode()
    (tmp_path / "mixed.txt").write_bytes(good * 10 + b"bad \xff\xfe bytes\n\n" + good * 10)
    (tmp_path / "binary.txt").write_bytes(b"\0" * 2_000)
    (tmp_path / "blank.txt").write_bytes(b" \n" * 1_000)
    docs, skips = read([tmp_path])
    assert {d.id.split(":")[0] for d in docs} == {"mixed.txt"} and len(docs) == 20
    assert skips.by_reason == {"not valid UTF-8": 1, "binary": 1, "empty": 1}
    assert ("mixed.txt", "not valid UTF-8 (byte 924)") in [(Path(p).name, r) for p, r in skips.examples]


def test_a_large_file_is_read_in_bounded_memory(tmp_path, monkeypatch):
    import tracemalloc

    monkeypatch.setattr("nextword.data.sources.MAX_FILE_BYTES", 1 << 20)
    paragraph = ("All work and no play makes a dull model. " * 20 + "\n\n").encode()
    with open(tmp_path / "big.txt", "wb") as file:
        for _ in range((16 << 20) // len(paragraph)):  # 16 MiB, 16 times the cap
            file.write(paragraph)
    tracemalloc.start()
    try:
        total = sum(len(d.text) for d in read_sources([str(tmp_path / "big.txt")], [], SkipLog()))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == (tmp_path / "big.txt").stat().st_size
    assert peak < 4 << 20, f"reading a 16 MiB file held {peak / 2**20:.1f} MiB at once"


def test_missing_path_raises_data_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(DataError, match="nowhere.txt: no such file or folder"):
        read([missing])
    with pytest.raises(DataError, match="nowhere.txt"):
        sources_fingerprint([str(missing)], EXTENSIONS)


# --- JSONL -----------------------------------------------------------------------------------------------

JSONL_RECORDS = [
    {"text": "first document", "url": "https://example.com/1"},
    {"id": "doc-two", "text": "second document", "dump": "CC-MAIN-2024-10"},
    {"url": "https://example.com/no-text"},
    {"text": "   "},
    {"text": 42},
]


def jsonl_payload() -> bytes:
    good_and_bad = jsonl_bytes(JSONL_RECORDS[:2]) + b"{this is not json\n\n" + jsonl_bytes(JSONL_RECORDS[2:])
    return good_and_bad + jsonl_bytes([{"text": "last document"}])


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("data.jsonl", lambda data: data),
        ("data.jsonl.gz", gzip.compress),
        ("data.jsonl.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
        ("books-0000.json.gz", gzip.compress),  # Dolma's and C4's name for the same thing
        ("c4-train.00000.json.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
    ],
)
def test_jsonl_reads_records_and_counts_bad_lines(tmp_path, name, compress):
    path = tmp_path / name
    path.write_bytes(compress(jsonl_payload()))

    docs, skips = read([path])

    assert [d.text for d in docs] == ["first document", "second document", "last document"]
    assert [d.id for d in docs] == [f"{name}:1", "doc-two", f"{name}:8"]
    assert docs[0].source == "jsonl"
    assert docs[0].meta["url"] == "https://example.com/1" and docs[0].meta["line"] == 1
    assert docs[1].meta["dump"] == "CC-MAIN-2024-10" and "text" not in docs[1].meta
    assert skips.by_reason == {"not JSON": 1, "no string text field": 2, "empty text": 1}
    assert (str(path), "line 3: not JSON") in skips.examples


def test_jsonl_in_a_folder_is_picked_by_its_extension(tmp_path):
    (tmp_path / "part.jsonl.gz").write_bytes(gzip.compress(jsonl_bytes([{"text": "from a shard"}])))
    docs, _ = read([tmp_path], extensions=[".jsonl.gz"])
    assert [(d.id, d.text) for d in docs] == [("part.jsonl.gz:1", "from a shard")]



def test_a_byte_order_mark_does_not_cost_the_first_record(tmp_path):
    path = tmp_path / "saved_on_windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes([{"text": "first"}, {"text": "second"}]))
    docs, skips = read([path])
    assert [d.text for d in docs] == ["first", "second"] and skips.total == 0

def many_records(count: int) -> bytes:
    return jsonl_bytes([{"text": f"document number {i} " + "padding " * 30} for i in range(count)])


@pytest.mark.parametrize(
    ("suffix", "compress", "kind"),
    [(".gz", gzip.compress, "gzip"), (".zst", lambda data: zstandard.ZstdCompressor().compress(data), "zstd")],
)
def test_truncated_archive_keeps_earlier_lines_and_counts_one_skip(tmp_path, suffix, compress, kind):
    compressed = compress(many_records(3000))
    path = tmp_path / f"cut.jsonl{suffix}"
    path.write_bytes(compressed[: len(compressed) // 2])

    docs, skips = read([path])

    assert 100 < len(docs) < 3000
    assert [d.text.split()[2] for d in docs] == [str(i) for i in range(len(docs))]
    assert skips.total == 1
    assert skips.examples[0][1].startswith(f"corrupt {kind} after line ")


def test_zstd_with_several_frames_reads_them_all(tmp_path):
    compressor = zstandard.ZstdCompressor()
    frames = compressor.compress(jsonl_bytes([{"text": "one"}])) + compressor.compress(jsonl_bytes([{"text": "two"}]))
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(frames)
    docs, skips = read([path])
    assert [d.text for d in docs] == ["one", "two"] and skips.total == 0


def test_zstd_without_its_package_names_the_extra_to_install(tmp_path, monkeypatch):
    """zstandard is an optional extra: without it a .zst input stops with one line, not a traceback or a skip."""
    path = tmp_path / "data.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes([{"text": "one"}])))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard now raises ImportError
    with pytest.raises(DataError, match=r"data\.jsonl\.zst: reading \.zst files needs the zstandard package: "
                                        r"pip install 'nextword\[zstd\]'"):
        read([path])


# --- parquet ---------------------------------------------------------------------------------------------


def test_parquet_with_text_column(tmp_path):
    path = tmp_path / "rows.parquet"
    table = pa.table({"text": ["row one", "", None, "row four"], "url": ["u1", "u2", "u3", "u4"]})
    pq.write_table(table, path)

    docs, skips = read([path])

    assert [(d.id, d.text, d.meta["url"]) for d in docs] == [
        ("rows.parquet:1", "row one", "u1"),
        ("rows.parquet:4", "row four", "u4"),
    ]
    assert docs[0].source == "parquet" and docs[0].meta["row"] == 1
    assert skips.by_reason == {"empty text": 1, "no string text field": 1}


def test_parquet_without_text_column_names_its_columns(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"content": ["x"], "lang": ["en"]}), path)
    docs, skips = read([path])
    assert docs == []
    assert skips.examples == [(str(path), "no text column (has: content, lang)")]


def test_unreadable_parquet_is_skipped_with_the_reason(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 definitely not a parquet file")
    docs, skips = read([path])
    assert docs == []
    assert skips.by_reason == {"unreadable parquet": 1}


# --- fingerprint -----------------------------------------------------------------------------------------


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("version one")
    before = sources_fingerprint([str(tmp_path)], EXTENSIONS)
    assert sources_fingerprint([str(tmp_path)], EXTENSIONS) == before

    path.write_text("version two, longer")
    changed = sources_fingerprint([str(tmp_path)], EXTENSIONS)
    assert changed != before

    (tmp_path / "b.txt").write_text("a new file")
    assert sources_fingerprint([str(tmp_path)], EXTENSIONS) != changed


def test_fingerprint_sees_a_same_size_edit_through_mtime(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("aaaa")
    before = sources_fingerprint([str(path)], EXTENSIONS)
    path.write_text("bbbb")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert sources_fingerprint([str(path)], EXTENSIONS) != before


def test_broken_links_in_a_folder_are_counted_skips_and_part_of_the_fingerprint(tmp_path):
    (tmp_path / "good.txt").write_text("a readable document")
    for name in ("gone.txt", "gone.jsonl", "gone.warc.gz"):
        (tmp_path / name).symlink_to(tmp_path / "missing" / name)
    extensions = EXTENSIONS + [".jsonl", ".warc.gz"]

    docs, skips = read([tmp_path], extensions)

    assert [d.text for d in docs] == ["a readable document"]
    assert skips.by_reason == {"unreadable": 3}
    before = sources_fingerprint([str(tmp_path)], extensions)
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "gone.txt").write_text("now it is there")
    assert sources_fingerprint([str(tmp_path)], extensions) != before


def test_links_out_of_a_folder_are_counted_skips_and_never_read(tmp_path):
    """A link in a data folder that leads out of it (to a private key, say) is not followed; one inside is."""
    data, home = tmp_path / "data", tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa.txt").write_text("PRIVATE KEY")
    (home / "notes").mkdir()
    (home / "notes" / "diary.txt").write_text("a private diary")
    data.mkdir()
    (data / "book.txt").write_text("a readable document")
    (data / "key.txt").symlink_to(home / ".ssh" / "id_rsa.txt")
    (data / "notes").symlink_to(home / "notes")
    (data / "again.txt").symlink_to(data / "book.txt")

    docs, skips = read([data])

    assert sorted(d.id for d in docs) == ["again.txt", "book.txt"]
    assert skips.by_reason == {"link leaves the source folder": 2}
    assert sorted(path for path, _ in skips.examples) == [str(data / "key.txt"), str(data / "notes")]
    before = sources_fingerprint([str(data)], EXTENSIONS)
    (data / "key.txt").unlink()
    assert sources_fingerprint([str(data)], EXTENSIONS) != before


def test_a_folder_or_file_named_through_a_link_is_read(tmp_path):
    """The path the user names is followed even if it is a link: that is where the data is."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "book.txt").write_text("a readable document")
    (tmp_path / "named").symlink_to(tmp_path / "real")
    (tmp_path / "one.txt").symlink_to(tmp_path / "real" / "book.txt")

    docs, skips = read([tmp_path / "named", tmp_path / "one.txt"])

    assert [d.id for d in docs] == ["book.txt", "one.txt"] and skips.total == 0


def test_default_corpus_fingerprint_is_stable_and_differs_from_paths(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    default = sources_fingerprint([], EXTENSIONS)
    assert default == sources_fingerprint([DEFAULT_CORPUS_NAME], EXTENSIONS)
    assert default != sources_fingerprint([str(tmp_path)], EXTENSIONS)
    assert len(default) == 64


# --- web archives ----------------------------------------------------------------------------------------


def test_web_archives_go_to_the_web_reader(tmp_path):
    pytest.importorskip("fastwarc", reason="the WARC/WET reader needs the web extra")
    from nextword.data import web

    text = "A page of plain English text about rivers and the towns along them. " * 5
    body = text.encode()
    record = (
        b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: http://example.com/rivers\r\n"
        b"WARC-Date: 2024-01-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000001>\r\n"
        b"Content-Type: text/plain\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body + b"\r\n\r\n"
    )
    path = tmp_path / "crawl.warc.wet.gz"
    path.write_bytes(gzip.compress(record))

    routed, _ = read([path])
    direct = list(web.read_web(path, SkipLog()))

    assert routed and [d.id for d in routed] == [d.id for d in direct]
    assert all(d.source != "file" for d in routed)



def test_a_folder_of_dataset_files_is_read_whatever_the_text_extensions(tmp_path):
    """A downloaded dataset is a folder of JSONL, parquet or WARC/WET files: `extensions` only picks which text
    and code files a folder contributes, so the folder is not read as empty."""
    pytest.importorskip("fastwarc", reason="the WARC/WET reader needs the web extra")
    (tmp_path / "shard_0.jsonl").write_text(json.dumps({"text": "a line of jsonl text"}) + "\n")
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "p.json.gz").write_bytes(gzip.compress(b'{"text": "a dolma record"}\n'))
    pq.write_table(pa.table({"text": ["a parquet row"]}), tmp_path / "part" / "q.parquet")
    body = b"A page of plain English text about rivers and the towns along them. " * 5
    (tmp_path / "crawl.wet.gz").write_bytes(gzip.compress(
        b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: http://example.com/rivers\r\n"
        b"WARC-Date: 2024-01-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-000000000002>\r\n"
        b"Content-Type: text/plain\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body + b"\r\n\r\n"))
    (tmp_path / "notes.csv").write_text("neither,a,dataset,format,nor,listed\n")

    docs, skips = read([tmp_path], extensions=[".txt"])

    assert sorted(d.text.strip()[:14] for d in docs) == sorted(
        ["A page of plai", "a dolma record", "a line of json", "a parquet row"])
    assert skips.total == 0
    before = sources_fingerprint([str(tmp_path)], [".txt"])
    (tmp_path / "shard_1.jsonl").write_text(json.dumps({"text": "one more"}) + "\n")
    assert sources_fingerprint([str(tmp_path)], [".txt"]) != before


def test_skip_summary_names_each_file_once_and_marks_more():
    skips = SkipLog()
    for line in (3, 9):
        skips.skip("data/a.jsonl", f"line {line}: not JSON")
    for name in ("b.txt", "c.txt", "d.txt", "e.txt"):
        skips.skip(f"docs/{name}", "empty")
    (line,) = skips.summary_lines()
    assert line == (
        "skipped 6 files or records: 4 empty (docs/b.txt, docs/c.txt, docs/d.txt, …), 2 not JSON (data/a.jsonl)"
    )


# --- code repositories without the clean step ----------------------------------------------------------------


def test_a_code_repository_is_read_without_the_clean_step(tmp_path):
    """`code:PATH` names a repository for `nextword train --source` as for `data clean`: its source files, one
    document each, with its .gitignore honoured."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "util.py").write_text("def twice(x):\n    return 2 * x\n", encoding="utf-8")
    (repo / "notes.bin").write_bytes(b"\0\1")
    (repo / "build").mkdir()
    (repo / "build" / "out.py").write_text("ignored = True\n", encoding="utf-8")
    (repo / ".gitignore").write_text("build/\n", encoding="utf-8")

    docs, skips = read([f"code:{repo}"])

    assert [(d.id, d.source, d.meta["language"]) for d in docs] == [("repo:pkg/util.py", "code", "python")]
    before = sources_fingerprint([f"code:{repo}"], [".txt"])
    (repo / "pkg" / "util.py").write_text("def thrice(x):\n    return 3 * x\n", encoding="utf-8")
    assert sources_fingerprint([f"code:{repo}"], [".txt"]) != before


def test_a_file_git_lists_but_the_checkout_lacks_is_a_counted_skip(tmp_path):
    """A tracked file deleted while editing (or a tracked link that leads nowhere) is still listed by
    `git ls-files`; reading the checkout counts it as unreadable instead of stopping with a traceback."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("kept.py", "deleted.py"):
        (repo / name).write_text(f"# {name}\ndef f(x):\n    return x\n", encoding="utf-8")
    (repo / "link.py").symlink_to(repo / "nowhere.py")
    git = ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    (repo / "deleted.py").unlink()

    docs, skips = read([f"code:{repo}"])

    assert [d.id for d in docs] == ["repo:kept.py"]
    assert skips.total == 2 and all("unreadable" in reason for reason in skips.by_reason)


def test_a_checkout_git_cannot_read_is_one_line(tmp_path):
    (tmp_path / ".git").mkdir()  # not a repository git can read
    (tmp_path / "a.py").write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"git cannot list the checkout's files \(fatal: not a git repository"):
        read([f"code:{tmp_path}"])


def test_a_code_source_that_is_not_a_folder_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"code:.*missing: not a folder; `code:` takes a repository folder"):
        read([f"code:{tmp_path / 'missing'}"])
