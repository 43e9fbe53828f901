"""WARC/WET readers: real Common Crawl records, files written with warcio, and damaged files."""

from __future__ import annotations

import gzip
import io
import re
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastwarc")
pytest.importorskip("resiliparse")
warcio = pytest.importorskip("warcio")
from warcio.statusandheaders import StatusAndHeaders  # noqa: E402
from warcio.warcwriter import WARCWriter  # noqa: E402

from nextword.data.sources import SkipLog, read_sources  # noqa: E402
from nextword.data.web import read_web  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "commoncrawl"


def page(title: str, body: str) -> str:
    return (f"<html><head><title>{title}</title><script>var tracking = 1;</script></head><body>"
            f"<nav><a href='/'>Home</a> <a href='/about'>About</a></nav>"
            f"<article><h1>{title}</h1><p>{body}</p></article>"
            f"<footer>Copyright 2024. All rights reserved.</footer></body></html>")


def write_warc(path: Path, pages: list[tuple[str, bytes, str]], gz: bool = True) -> list[int]:
    """Write `response` records (url, payload, content type) behind a warcinfo record; return record offsets."""
    offsets = []
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gz)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "test"}))
        for url, payload, content_type in pages:
            offsets.append(f.tell())
            http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(payload),
                                                          http_headers=http))
    return offsets


def write_wet(path: Path, texts: list[tuple[str, bytes]], gz: bool = True) -> list[int]:
    offsets = []
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gz)
        for url, text in texts:
            offsets.append(f.tell())
            writer.write_record(writer.create_warc_record(
                url, "conversion", payload=io.BytesIO(text), warc_content_type="text/plain",
                warc_headers_dict={"WARC-Identified-Content-Language": "eng"}))
    return offsets


def html(i: int) -> tuple[str, bytes, str]:
    body = f"Article number {i} explains how the river floods every spring and what farmers do about it."
    return f"http://example.test/{i}", page(f"Story {i}", body).encode(), "text/html; charset=utf-8"


def test_real_common_crawl_records_are_read():
    if not FIXTURES.is_dir():
        pytest.skip("no Common Crawl fixtures beside the repository")
    skips = SkipLog()
    warc = list(read_web(FIXTURES / "whirlwind.warc.gz", skips))
    wet = list(read_web(FIXTURES / "whirlwind.warc.wet.gz", skips))
    wat = list(read_web(FIXTURES / "whirlwind.warc.wat.gz", skips))
    assert [d.meta["url"] for d in warc] == ["https://an.wikipedia.org/wiki/Escopete"]
    assert warc[0].source == "warc" and "Escopete" in warc[0].text and "<" not in warc[0].text
    assert wet[0].source == "wet" and wet[0].meta["crawl_language"] == "spa"
    assert "\r" not in wet[0].text and "Escopete" in wet[0].text
    assert wat == []
    reasons = skips.to_dict()["by_reason"]
    assert reasons["request record ignored"] == 1 and reasons["metadata record ignored"] == 2
    assert reasons["warcinfo record ignored"] == 3


@pytest.mark.parametrize("gz", [True, False])
def test_warc_responses_become_main_text_with_provenance(tmp_path, gz):
    path = tmp_path / ("a.warc.gz" if gz else "a.warc")
    pages = [html(0), html(1), ("http://example.test/logo.png", b"\x89PNG....", "image/png")]
    offsets = write_warc(path, pages, gz=gz)
    skips = SkipLog()
    docs = list(read_web(path, skips))
    assert [d.meta["url"] for d in docs] == ["http://example.test/0", "http://example.test/1"]
    assert [d.id for d in docs] == [f"{path}:{offsets[0]}", f"{path}:{offsets[1]}"]
    assert "river floods" in docs[0].text and "tracking" not in docs[0].text and "Home" not in docs[0].text
    assert skips.to_dict()["by_reason"] == {"warcinfo record ignored": 1, "response is not HTML": 1}


def test_wet_conversion_records_and_routing_through_read_sources(tmp_path):
    path = tmp_path / "b.warc.wet.gz"
    write_wet(path, [("http://x.test/a", b"First line.\r\nSecond line."), ("http://x.test/b", b"Other text.")])
    docs = list(read_sources([str(path)], [], SkipLog()))
    assert [d.text for d in docs] == ["First line.\nSecond line.", "Other text."]
    assert docs[0].source == "wet" and docs[0].meta["crawl_language"] == "eng"


def test_non_utf8_payload_is_counted_and_the_rest_read(tmp_path):
    path = tmp_path / "c.wet.gz"
    write_wet(path, [("http://x.test/1", "café".encode("latin-1")), ("http://x.test/2", b"fine text")])
    skips = SkipLog()
    assert [d.text for d in read_web(path, skips)] == ["fine text"]
    assert skips.to_dict()["by_reason"] == {"payload is not valid utf-8": 1}


def test_declared_charset_is_used_for_html(tmp_path):
    path = tmp_path / "d.warc.gz"
    latin = page("Café", "Un café au lait, s'il vous plaît, avec une tartine.").encode("latin-1")
    write_warc(path, [("http://x.test/fr", latin, "text/html; charset=ISO-8859-1")])
    [doc] = read_web(path, SkipLog())
    assert "café au lait" in doc.text



@pytest.mark.parametrize("meta", ['<meta charset="windows-1252">',
                                  '<meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'])
def test_a_charset_declared_in_a_meta_tag_is_used_when_the_header_gives_none(tmp_path, meta):
    path = tmp_path / "e.warc.gz"
    body = "Un café au lait, s\u2019il vous plaît, avec une tartine et du beurre."
    declared = page("Café", body).replace("<head>", f"<head>{meta}").encode("cp1252")
    overridden = page("Thé", "Un thé vert, très chaud, servi avec du miel.").replace(
        "<head>", '<head><meta charset="iso-8859-1">').encode("utf-8")
    write_warc(path, [("http://x.test/cafe", declared, "text/html"),
                      ("http://x.test/the", overridden, "text/html; charset=utf-8")])
    skips = SkipLog()
    cafe, the = read_web(path, skips)
    assert "café au lait, s\u2019il vous plaît" in cafe.text
    assert "Un thé vert, très chaud" in the.text  # the HTTP header wins over the page's own claim
    assert skips.to_dict()["by_reason"] == {"warcinfo record ignored": 1}

def test_empty_file_is_counted(tmp_path):
    path = tmp_path / "empty.warc.gz"
    path.write_bytes(b"")
    skips = SkipLog()
    assert list(read_web(path, skips)) == []
    assert skips.total == 1


def test_truncated_gzip_member_is_skipped_and_later_members_read(tmp_path):
    path = tmp_path / "e.warc.gz"
    offsets = write_warc(path, [html(0), html(1), html(2)])
    data = path.read_bytes()
    damaged = data[:offsets[1] + 60] + data[offsets[2]:]  # the middle record loses most of its member
    path.write_bytes(damaged)
    skips = SkipLog()
    urls = [d.meta["url"] for d in read_web(path, skips)]
    assert urls == ["http://example.test/0", "http://example.test/2"]
    assert skips.to_dict()["by_reason"]["corrupt gzip member skipped"] == 1


def test_truncated_file_end_is_counted(tmp_path):
    path = tmp_path / "f.warc.gz"
    offsets = write_warc(path, [html(0), html(1)])
    path.write_bytes(path.read_bytes()[:offsets[1] + 100])
    skips = SkipLog()
    assert [d.meta["url"] for d in read_web(path, skips)] == ["http://example.test/0"]
    assert "truncated gzip member at end of file" in skips.to_dict()["by_reason"]


def test_gzip_members_are_found_wherever_the_reads_end(tmp_path, monkeypatch):
    """The file is read front to back a chunk at a time: a member, a damaged one or the search for the next one may
    cross a chunk's end, and the records, their offsets and the skips must not depend on where it falls."""
    from nextword.data import web

    path = tmp_path / "h.warc.gz"
    offsets = write_warc(path, [html(i) for i in range(4)])
    data = path.read_bytes()
    # member 1 loses its end, bytes that are not gzip follow member 2, and the last member loses its trailer
    path.write_bytes(data[:offsets[1] + 60] + data[offsets[2]:offsets[3]] + b"not gzip" + data[offsets[3]:-4])
    expected = [(f"{path}:{offsets[0]}", "http://example.test/0"),
                (f"{path}:{offsets[1] + 60}", "http://example.test/2")]
    for read_chunk, piece in ((web.READ_CHUNK, web.INFLATE_PIECE), (7, 3), (100, 1000)):
        monkeypatch.setattr(web, "READ_CHUNK", read_chunk)
        monkeypatch.setattr(web, "INFLATE_PIECE", piece)
        skips = SkipLog()
        assert [(d.id, d.meta["url"]) for d in read_web(path, skips)] == expected
        assert skips.by_reason == {"warcinfo record ignored": 1, "corrupt gzip member skipped": 2,
                                   "truncated gzip member at end of file": 1}


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("delta", [+40, -25])
def test_record_with_bad_length_is_dropped_and_reading_resumes(tmp_path, gz, delta):
    path = tmp_path / ("g.warc.gz" if gz else "g.warc")
    offsets = write_warc(path, [html(0), html(1), html(2)], gz=gz)
    data = path.read_bytes()
    start, end = offsets[1], offsets[2]
    record = gzip.decompress(data[start:end]) if gz else data[start:end]
    record = re.sub(rb"Content-Length: (\d+)", lambda m: b"Content-Length: %d" % (int(m.group(1)) + delta),
                    record, count=1)
    path.write_bytes(data[:start] + (gzip.compress(record) if gz else record) + data[end:])
    skips = SkipLog()
    urls = [d.meta["url"] for d in read_web(path, skips)]
    assert urls == ["http://example.test/0", "http://example.test/2"]
    assert skips.total - 1 >= 1  # the warcinfo record, plus the damaged one


def write_raw_responses(path: Path, responses: list[tuple[str, bytes]]) -> None:
    """Response records holding exactly the raw HTTP bytes given (headers as sent, body possibly compressed)."""
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, raw in responses:
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(raw),
                                               warc_content_type="application/http; msgtype=response")
            writer.write_record(record)


def http_response(body: bytes, encoding: str) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Encoding: {encoding}\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_compressed_http_payloads_are_decoded(tmp_path):
    path = tmp_path / "z.warc.gz"
    body = html(0)[1]
    raw_deflate = zlib.compressobj(wbits=-15)
    responses = [("http://x.test/gzip", http_response(gzip.compress(body), "gzip")),
                 ("http://x.test/zlib", http_response(zlib.compress(body), "deflate")),
                 ("http://x.test/raw", http_response(raw_deflate.compress(body) + raw_deflate.flush(), "deflate")),
                 ("http://x.test/broken", http_response(b"\x1f\x8b\x08 not really gzip", "gzip")),
                 ("http://x.test/br", http_response(b"\x0b\x02\x80brotli", "br"))]
    write_raw_responses(path, responses)
    skips = SkipLog()
    docs = list(read_web(path, skips))
    assert [d.meta["url"] for d in docs] == ["http://x.test/gzip", "http://x.test/zlib", "http://x.test/raw"]
    assert all("river floods" in d.text for d in docs)
    assert skips.to_dict()["by_reason"] == {"payload is not valid gzip": 1, "unsupported Content-Encoding 'br'": 1}


def test_angle_brackets_around_the_target_uri_are_removed(tmp_path):
    path = tmp_path / "w.warc"
    write_warc(path, [html(0)], gz=False)
    data = path.read_bytes().replace(b"WARC-Target-URI: http://example.test/0",
                                     b"WARC-Target-URI: <http://example.test/0>")
    assert b"<http://example.test/0>" in data
    path.write_bytes(data)  # as wget writes it; the record length does not count WARC headers
    [doc] = read_web(path, SkipLog())
    assert doc.meta["url"] == "http://example.test/0"


def test_trafilatura_text_is_kept_as_it_returns_it(tmp_path):
    pytest.importorskip("trafilatura")
    body = "The river that runs through the old town floods almost every spring, and farmers plant late. " * 4
    code_block = "<pre>def flood_level(year):\n    return levels[year]\n</pre>"
    payload = page("Floods", body).replace("</p>", f"</p>{code_block}<p>{body}</p>").encode()
    write_warc(tmp_path / "a.warc.gz", [("http://example.test/floods", payload, "text/html")])
    [traf] = read_web(tmp_path / "a.warc.gz", SkipLog(), extractor="trafilatura")
    [resili] = read_web(tmp_path / "a.warc.gz", SkipLog(), extractor="resiliparse")
    assert "def flood_level(year):\n    return levels[year]" in traf.text  # the code's indentation, as FineWeb has it
    assert "def flood_level(year):\nreturn levels[year]" in resili.text  # resiliparse's lines are tidied
