"""Every reader, fed damaged input: random bytes, a valid file cut at any offset, bit flips, zero bytes, the wrong
encoding. Each must end in bounded time with documents, counted skips, or one DataError/ConfigError line that
names the file, never another exception. From a truncated file (the common damage: an interrupted copy or
download) every accepted document must be one that was really in the file: truncation may lose a record, never
change one. A flipped bit inside a record's text cannot be told from real text where the format has no checksum
per record, so for bit flips only "no crash" is asserted."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nextword.config import RunConfig, load
from nextword.data.sources import SkipLog, read_sources
from nextword.data.tokenizer import Tokenizer
from nextword.errors import ConfigError, DataError

EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TEXTS = [f"Record {i} says the river floods every spring and farmers plant after it." for i in range(6)]


def damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or `valid` cut at a random offset, or `valid` with up to three bits flipped."""
    cut = st.integers(0, len(valid)).map(lambda n: valid[:n])
    flips = st.lists(st.integers(0, len(valid) * 8 - 1), min_size=1, max_size=3).map(
        lambda bits: _flip(valid, bits))
    return st.one_of(st.binary(max_size=2048), cut, flips)


def _flip(data: bytes, bits: list[int]) -> bytes:
    out = bytearray(data)
    for bit in bits:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def read_file(name: str, data: bytes) -> tuple[list, SkipLog]:
    """Read one file as `nextword prepare` would; a DataError must be one line naming the file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        skips = SkipLog()
        try:
            documents = list(read_sources([str(path)], [".txt"], skips))
        except DataError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            return [], skips
    for document in documents:
        assert isinstance(document.text, str) and document.text.strip()
    return documents, skips


def jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)).encode()


@pytest.mark.parametrize("name, compress", [("a.jsonl", lambda b: b), ("a.jsonl.gz", gzip.compress),
                                            ("a.jsonl.zst", zstandard.ZstdCompressor().compress)])
def test_jsonl_readers_never_crash_and_never_accept_a_corrupt_record(name, compress):
    valid = compress(jsonl(TEXTS))

    @FUZZ
    @given(damaged(valid))
    @example(b"")
    def check(data):
        documents, _ = read_file(name, data)
        if valid.startswith(data):
            assert all(d.text in TEXTS for d in documents)

    check()


def test_text_files_are_read_exactly_or_skipped_whatever_their_bytes_or_encoding():
    @FUZZ
    @given(st.one_of(st.binary(max_size=2048),
                     st.tuples(st.text(max_size=200), st.sampled_from(["utf-16", "latin-1", "cp1252", "utf-8"]))
                     .map(lambda t: t[0].encode(t[1], errors="replace"))))
    @example(b"")
    def check(data):
        documents, skips = read_file("a.txt", data)
        if documents:
            assert [d.text for d in documents] == [data.decode("utf-8")]
        else:
            assert skips.total == 1

    check()


def parquet_bytes() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(TEXTS))], "text": TEXTS}), buffer)
    return buffer.getvalue()


def test_parquet_reader_never_crashes_and_never_accepts_a_corrupt_row():
    valid = parquet_bytes()

    @FUZZ
    @given(damaged(valid))
    @example(b"")
    def check(data):
        documents, _ = read_file("a.parquet", data)
        assert len(documents) <= len(TEXTS)
        if valid.startswith(data):
            assert all(d.text in TEXTS for d in documents)

    check()


def web_bytes(kind: str, gz: bool) -> bytes:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buffer = io.BytesIO()
    writer = WARCWriter(buffer, gzip=gz)
    for i, text in enumerate(TEXTS[:3]):
        url = f"http://example.test/{i}"
        if kind == "wet":
            record = writer.create_warc_record(url, "conversion", payload=io.BytesIO(text.encode()),
                                               warc_content_type="text/plain")
        else:
            html = f"<html><body><article><h1>Story {i}</h1><p>{text}</p></article></body></html>".encode()
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(html), http_headers=http)
        writer.write_record(record)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["a.warc", "a.warc.gz", "a.wet", "a.warc.wet.gz"])
def test_web_readers_never_crash(name):
    pytest.importorskip("fastwarc")
    pytest.importorskip("warcio")
    kind = "wet" if ".wet" in name else "warc"
    valid = web_bytes(kind, gz=name.endswith(".gz"))

    @FUZZ
    @given(damaged(valid))
    @example(b"")
    def check(data):
        documents, _ = read_file(name, data)
        assert len(documents) <= 3 + data.count(b"WARC/1.")
        if valid.startswith(data) and kind == "wet":
            assert all(d.text in TEXTS for d in documents)

    check()


@pytest.fixture(scope="module")
def tokenizer_json() -> bytes:
    return Tokenizer.train(TEXTS, 300).to_json().encode()


def test_tokenizer_json_loads_or_fails_in_one_line_naming_the_file(tokenizer_json):
    """A file that loads gives a tokenizer the model can use: every id it encodes to, and its end-of-text id, are
    inside its vocabulary (an embedding row exists for each). The undamaged file gives the text back exactly."""
    text = "def f(): return 1"

    @FUZZ
    @given(st.one_of(damaged(tokenizer_json), st.text(max_size=300).map(str.encode)))
    @example(b"")
    @example(tokenizer_json)
    def check(data):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "tokenizer.json"
            path.write_bytes(data)
            try:
                tokenizer = Tokenizer.load(path)
            except DataError as e:
                assert "\n" not in str(e) and str(path) in str(e)
                return
            ids = tokenizer.encode(text)
            assert all(0 <= i < tokenizer.vocab_size for i in [*ids, tokenizer.eos_id])
            if data == tokenizer_json:
                assert tokenizer.decode(ids) == text

    check()


def test_config_toml_loads_or_fails_in_one_line_naming_the_file():
    valid = RunConfig().to_toml().encode()

    @FUZZ
    @given(st.one_of(damaged(valid), st.text(max_size=300).map(str.encode)))
    @example(b"")
    def check(data):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "config.toml"
            path.write_bytes(data)
            try:
                load(path)
            except ConfigError as e:
                assert "\n" not in str(e) and str(path) in str(e)

    check()


# --- inputs that once crashed a reader, kept so that each stays a skip or one line -------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_json_in_a_jsonl_line_is_a_counted_skip():
    documents, skips = read_file("deep.jsonl", (DEEP + "\n" + json.dumps({"text": "kept"}) + "\n").encode())
    assert [d.text for d in documents] == ["kept"] and skips.total == 1


def test_deeply_nested_tokenizer_json_is_a_one_line_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text(DEEP)
    with pytest.raises(DataError, match="tokenizer.json"):
        Tokenizer.load(tmp_path / "tokenizer.json")


def test_deeply_nested_toml_is_a_one_line_error(tmp_path):
    (tmp_path / "config.toml").write_text("a = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="config.toml"):
        load(tmp_path / "config.toml")


def test_a_folder_given_as_the_config_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load(tmp_path)


def test_a_status_code_with_a_non_ascii_digit_is_a_counted_skip():
    pytest.importorskip("warcio")
    valid = web_bytes("warc", gz=False)
    damaged_status = valid.replace(b"HTTP/1.1 200 OK", b"HTTP/1.1 \xb200 OK", 1)  # found by benchmarks/faults.py
    documents, skips = read_file("a.warc", damaged_status)
    assert len(documents) == 2 and skips.total >= 1
