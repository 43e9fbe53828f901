"""The Common Crawl fetcher against a local HTTP server: listing, retries, resume with Range, size checks."""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nextword.data.fetch import FetchOptions, fetch_cc
from nextword.errors import ConfigError, DataError

CRAWL = "CC-MAIN-2024-22"
WET_PATHS = [f"crawl-data/{CRAWL}/segments/1/wet/file{i}.warc.wet.gz" for i in range(3)]
OTHER_CRAWL = "CC-MAIN-2024-26"
OTHER_WET_PATHS = [f"crawl-data/{OTHER_CRAWL}/segments/7/wet/other{i}.warc.wet.gz" for i in range(2)]


class CrawlServer(BaseHTTPRequestHandler):
    """Serves `files` with Range support; `failures[path]` lists what the next requests do wrong."""

    files: dict[str, bytes] = {}
    failures: dict[str, list[str]] = {}
    requests: list[tuple[str, str]] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        path = self.path.lstrip("/")
        self.requests.append((path, self.headers.get("Range", "")))
        if path not in self.files:
            self.send_error(404)
            return
        data = self.files[path]
        fault = self.failures.get(path, [])
        fault = fault.pop(0) if fault else ""
        if fault == "503":
            self.send_error(503)
            return
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        if fault == "no length, cut":  # HTTP/1.0 without Content-Length: the body ends where the connection closes
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        self.wfile.write(body[:len(body) // 2] if fault == "cut" else body)  # "cut": the connection drops

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    CrawlServer.files = {f"crawl-data/{CRAWL}/wet.paths.gz": gzip.compress("\n".join(WET_PATHS).encode())}
    CrawlServer.files.update({p: bytes(range(256)) * (40 + i) for i, p in enumerate(WET_PATHS)})
    CrawlServer.files[f"crawl-data/{OTHER_CRAWL}/wet.paths.gz"] = gzip.compress("\n".join(OTHER_WET_PATHS).encode())
    CrawlServer.files.update({p: bytes(range(255, -1, -1)) * (50 + i) for i, p in enumerate(OTHER_WET_PATHS)})
    CrawlServer.failures, CrawlServer.requests = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), CrawlServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()


def options(base_url: str) -> FetchOptions:
    return FetchOptions(base_url=base_url, retries=2, backoff_s=0.0, timeout_s=5.0)


def test_fetches_the_first_n_files_with_retries_and_resume(server, tmp_path):
    CrawlServer.failures = {WET_PATHS[0]: ["503"], WET_PATHS[1]: ["cut"]}
    got = fetch_cc(CRAWL, 2, tmp_path, options(server), log=lambda line: None)
    assert [p.name for p in got] == ["file0.warc.wet.gz", "file1.warc.wet.gz"]
    for path, name in zip(WET_PATHS, got):
        assert name.read_bytes() == CrawlServer.files[path]
    assert not list(tmp_path.glob("*.part"))
    ranges = [r for p, r in CrawlServer.requests if p == WET_PATHS[1]]
    half = (len(CrawlServer.files[WET_PATHS[1]])) // 2
    assert ranges == ["", f"bytes={half}-"]  # the second try asked only for what was missing


def test_partial_file_from_an_earlier_run_is_resumed_and_complete_files_kept(server, tmp_path):
    data = CrawlServer.files[WET_PATHS[0]]
    (tmp_path / "file0.warc.wet.gz.part").write_bytes(data[:1000])
    fetch_cc(CRAWL, 1, tmp_path, options(server), log=lambda line: None)
    assert (tmp_path / "file0.warc.wet.gz").read_bytes() == data
    CrawlServer.requests.clear()
    fetch_cc(CRAWL, 1, tmp_path, options(server), log=lambda line: None)
    assert CrawlServer.requests == []  # listing and file already complete: nothing downloaded again


def test_a_second_crawl_into_the_same_folder_downloads_its_own_files(server, tmp_path):
    fetch_cc(CRAWL, 1, tmp_path, options(server), log=lambda line: None)
    got = fetch_cc(OTHER_CRAWL, 2, tmp_path, options(server), log=lambda line: None)
    assert [p.name for p in got] == ["other0.warc.wet.gz", "other1.warc.wet.gz"]
    assert [p.read_bytes() for p in got] == [CrawlServer.files[p] for p in OTHER_WET_PATHS]
    assert (tmp_path / f"{CRAWL}.wet.paths.gz").exists() and (tmp_path / f"{OTHER_CRAWL}.wet.paths.gz").exists()


def test_a_listing_not_named_by_its_crawl_is_not_trusted(server, tmp_path):
    """A bare wet.paths.gz (as an earlier version kept it) could list any crawl: it is downloaded anew."""
    (tmp_path / "wet.paths.gz").write_bytes(gzip.compress("\n".join(OTHER_WET_PATHS).encode()))
    got = fetch_cc(CRAWL, 1, tmp_path, options(server), log=lambda line: None)
    assert got == [tmp_path / "file0.warc.wet.gz"]
    assert got[0].read_bytes() == CrawlServer.files[WET_PATHS[0]]


def test_a_crawl_name_that_would_leave_the_folder_is_an_error(server, tmp_path):
    with pytest.raises(ConfigError, match="--crawl"):
        fetch_cc("../CC-MAIN-2024-22", 1, tmp_path / "cc", options(server), log=lambda line: None)
    assert CrawlServer.requests == []


def test_a_body_without_a_length_that_breaks_off_is_resumed_not_kept(server, tmp_path):
    """Without Content-Length a closed connection looks like the end of the file: the gzip stream shows it is not."""
    whole = b"".join(gzip.compress(f"WARC record {i}\n".encode() * 200) for i in range(3))  # the cut is mid-member
    CrawlServer.files[WET_PATHS[0]] = whole
    CrawlServer.failures = {WET_PATHS[0]: ["no length, cut"]}
    got = fetch_cc(CRAWL, 1, tmp_path, options(server), log=lambda line: None)
    assert got[0].read_bytes() == whole
    ranges = [r for p, r in CrawlServer.requests if p == WET_PATHS[0]]
    assert ranges == ["", f"bytes={len(whole) // 2}-"]  # the half that came was kept and resumed from


def test_a_body_without_a_length_that_always_breaks_off_is_never_renamed_into_place(server, tmp_path):
    CrawlServer.files[WET_PATHS[0]] = gzip.compress(b"WARC record\n" * 500)
    CrawlServer.failures = {WET_PATHS[0]: ["no length, cut"] * 3}
    with pytest.raises(DataError, match="gzip stream ends part way"):
        fetch_cc(CRAWL, 1, tmp_path, FetchOptions(base_url=server, retries=2, backoff_s=0.0, timeout_s=5.0),
                 log=lambda line: None)
    assert not (tmp_path / "file0.warc.wet.gz").exists()


def test_a_file_that_keeps_failing_is_a_clear_error(server, tmp_path):
    CrawlServer.failures = {WET_PATHS[0]: ["cut"] * 5}
    with pytest.raises(DataError, match="download failed after 3 attempts"):
        fetch_cc(CRAWL, 1, tmp_path, options(server), log=lambda line: None)
    with pytest.raises(DataError, match="fewer than --files"):
        fetch_cc(CRAWL, 9, tmp_path / "other", options(server), log=lambda line: None)


def test_fetch_cc_command_downloads_and_reports_errors_in_one_line(server, tmp_path, capsys):
    from nextword.cli import main

    out = tmp_path / "cc"
    args = ["data", "fetch-cc", "--crawl", CRAWL, "--out", str(out), "--base-url", server, "--retries", "0"]
    assert main([*args, "--files", "2"]) == 0
    assert sorted(p.name for p in out.glob("file*")) == ["file0.warc.wet.gz", "file1.warc.wet.gz"]
    assert (out / "file1.warc.wet.gz").read_bytes() == CrawlServer.files[WET_PATHS[1]]
    assert "file1.warc.wet.gz" in capsys.readouterr().out
    assert main([*args, "--files", "9"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("nextword data:") and "fewer than --files 9" in error and "\n" not in error


def test_a_file_in_place_of_the_download_folder_is_a_clear_error(tmp_path):
    in_the_way = tmp_path / "cc"
    in_the_way.write_text("notes")
    with pytest.raises(DataError, match=r"cc: cannot make the download folder .*give --out a folder"):
        fetch_cc(CRAWL, 1, in_the_way, FetchOptions(base_url="http://127.0.0.1:9/", retries=0), log=lambda line: None)


@pytest.mark.parametrize(("files", "retries", "message"), [(-1, 2, "--files -1"), (0, 2, "--files 0"),
                                                           (1, -1, "--retries -1")])
def test_a_count_below_its_least_is_an_error_before_any_download(server, tmp_path, files, retries, message):
    with pytest.raises(ConfigError, match=message):
        fetch_cc(CRAWL, files, tmp_path, FetchOptions(base_url=server, retries=retries), log=lambda line: None)
    assert CrawlServer.requests == [] and not list(tmp_path.iterdir())


def test_files_download_several_at_once_and_one_failure_does_not_stop_the_others(server, tmp_path):
    """Each file's response takes 0.2 s; the server counts how many are under way at once."""
    lock, active, most = threading.Lock(), [0], [0]
    original = CrawlServer.do_GET

    def slow_get(handler):
        if not handler.path.endswith(".wet.gz"):
            return original(handler)
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.2)
        try:
            original(handler)
        finally:
            with lock:
                active[0] -= 1

    def fetch(count, folder, parallel):
        fetch_cc(CRAWL, count, folder, FetchOptions(base_url=server, retries=2, backoff_s=0.0, timeout_s=5.0,
                                                    parallel=parallel), log=lambda line: None)

    CrawlServer.do_GET = slow_get
    try:
        CrawlServer.failures = {WET_PATHS[1]: ["503"] * 3}  # more failures than retries: that file fails
        with pytest.raises(DataError, match="file1.warc.wet.gz"):
            fetch(3, tmp_path, parallel=3)
        assert most[0] >= 2
        assert sorted(p.name for p in tmp_path.glob("*.warc.wet.gz")) == ["file0.warc.wet.gz", "file2.warc.wet.gz"]
        most[0] = 0
        fetch(2, tmp_path / "one", parallel=1)
        assert most[0] == 1
    finally:
        CrawlServer.do_GET = original
    with pytest.raises(ConfigError, match="--parallel 0"):
        fetch(1, tmp_path, parallel=0)
