"""Readers for web archives: WARC (the crawl's raw HTTP responses) and WET (the crawl's plain-text conversions).

- WARC `response` records: HTTP payload → HTML → main text (extract.py). Only successful HTML responses count.
  A payload sent compressed (Content-Encoding gzip, x-gzip or deflate) is decompressed first.
- WET `conversion` records: already text, as Common Crawl serves them (CRLF line ends become LF).
- Every other record (warcinfo, request, metadata, WAT's JSON, revisit, ...) is counted and ignored.

Files may be gzip-per-record (as the crawl serves them, `.warc.gz`) or plain, local or named by a URL (remote.py).
A gzip file is read front to back, one member at a time, so a remote one streams; a plain remote file is first
copied, streamed, to a temporary file, since recovering from a bad record means searching the bytes after it.
Records are parsed by FastWARC.
Damage is counted in the SkipLog and reading goes on where the format allows: a truncated or corrupt gzip
member is skipped up to the next member, a record whose Content-Length is wrong is dropped and reading resumes at
the next `WARC/1.x` header line, an undecodable payload is dropped.

Each document's id is "PATH:OFFSET", the record's byte offset in the file (the compressed offset for gzip files,
which is what Common Crawl's index uses), so a record can be found again.
"""

from __future__ import annotations

import io
import mmap
import re
import shutil
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from fastwarc.warc import ArchiveIterator

from nextword.data.extract import extract_text
from nextword.data.remote import RemoteReadError, file_size, is_url, open_binary
from nextword.data.documents import Document, SkipLog

WEB_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_HEADER = re.compile(rb"(?:^|\n)WARC/1\.[01]\r?\n")
HTML_TYPES = ("text/html", "application/xhtml+xml")
CHARSET = re.compile(r"charset=[\"']?([\w.:-]+)", re.IGNORECASE)
# <meta charset="windows-1252"> or <meta http-equiv="Content-Type" content="text/html; charset=windows-1252">
META_CHARSET = re.compile(r"<meta[^>]*?charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
META_PRESCAN_BYTES = 1024
READ_CHUNK = 1 << 20
# Compressed bytes given to zlib at a time: what it has not used of them is copied once per gzip member, so a small
# piece keeps that copy small for the crawl's members of a few KB.
INFLATE_PIECE = 16 << 10


def is_web_file(path: str | Path) -> bool:
    return str(path).lower().endswith(WEB_SUFFIXES)


@dataclass
class _RawRecord:
    """One parsed record with its payload already read, so it can be judged before being turned into text."""

    offset: int
    type: str
    headers: dict[str, str]
    http_status: int | None
    http_content_type: str
    http_content_encoding: str  # "" when the payload is sent as is
    payload: bytes


def read_web(path: Path | str, skips: SkipLog, extractor: str = "resiliparse") -> Iterator[Document]:
    """Documents from one WARC or WET file (plain or gzip-per-record), a local path or a URL; everything dropped is
    counted in `skips`."""
    path = path if is_url(path) else Path(path)
    try:
        size = file_size(path)
    except OSError as error:  # a broken link, a link loop, a URL gone
        skips.unreadable(path, error)
        return
    if size == 0:
        skips.skip(path, "empty file")
        return
    read = 0
    try:
        for record in _records(path, skips):
            doc = _to_document(path, record, skips, extractor)
            if doc is not None:
                read += 1
                yield doc
    except RemoteReadError as error:
        skips.skip(path, f"read failed after {read} documents ({error})")


def _to_document(path: Path | str, record: _RawRecord, skips: SkipLog, extractor: str) -> Document | None:
    if record.type == "conversion":
        text = _decode(path, record.payload, "utf-8", skips)
        if text is None:
            return None
        text = text.replace("\r\n", "\n").strip()
        source = "wet"
    elif record.type == "response":
        if record.http_status != 200:
            skips.skip(path, f"HTTP status {record.http_status} (only 200 responses are read)")
            return None
        if not record.http_content_type.startswith(HTML_TYPES):
            skips.skip(path, "response is not HTML")
            return None
        payload = _decompress(path, record.payload, record.http_content_encoding, skips)
        html = None if payload is None else _decode(path, payload, _charset(record.http_content_type, payload), skips)
        if html is None:
            return None
        text = extract_text(html, extractor)
        source = "warc"
    else:
        skips.skip(path, f"{record.type} record ignored")
        return None
    if not text:
        skips.skip(path, f"{record.type} record has no text")
        return None
    # WARC 1.0's grammar showed the URI in angle brackets and some writers (wget) still add them.
    url = record.headers.get("WARC-Target-URI", "").strip().removeprefix("<").removesuffix(">")
    meta = {"path": str(path), "offset": record.offset, "url": url,
            "date": record.headers.get("WARC-Date", "")}
    if "WARC-Identified-Content-Language" in record.headers:
        meta["crawl_language"] = record.headers["WARC-Identified-Content-Language"]
    return Document(id=f"{path}:{record.offset}", text=text, source=source, meta=meta)


def _charset(content_type: str, html: bytes) -> str:
    """The page's character set as a browser finds it: the HTTP header's, else one a <meta> tag declares in the
    first 1024 bytes (the WHATWG prescan), else UTF-8."""
    match = CHARSET.search(content_type) or META_CHARSET.search(html[:META_PRESCAN_BYTES].decode("latin-1"))
    return match.group(1).lower() if match else "utf-8"


def _decompress(path: Path | str, payload: bytes, encodings: str, skips: SkipLog) -> bytes | None:
    """The payload with its Content-Encoding undone (RFC 9110 §8.4: listed in the order applied), or None."""
    for encoding in reversed([e.strip() for e in encodings.lower().split(",") if e.strip()]):
        if encoding == "identity":
            continue
        if encoding not in ("gzip", "x-gzip", "deflate"):
            skips.skip(path, f"unsupported Content-Encoding {encoding!r}")
            return None
        try:
            payload = _inflate(payload, encoding)
        except zlib.error:
            skips.skip(path, f"payload is not valid {encoding}")
            return None
    return payload


def _inflate(payload: bytes, encoding: str) -> bytes:
    if encoding != "deflate":
        return zlib.decompress(payload, wbits=31)  # 31: gzip header and trailer
    try:
        return zlib.decompress(payload)  # "deflate" is meant to be zlib-wrapped (RFC 9110 §8.4.1.2) ...
    except zlib.error:
        return zlib.decompress(payload, wbits=-15)  # ... but some servers send raw deflate


def _decode(path: Path | str, payload: bytes, charset: str, skips: SkipLog) -> str | None:
    try:
        return payload.decode(charset)
    except LookupError:
        skips.skip(path, f"unknown charset {charset!r}")
    except UnicodeDecodeError:
        skips.skip(path, f"payload is not valid {charset}")
    return None


# ---- records, with recovery from damage ------------------------------------------------------------------


def _records(path: Path | str, skips: SkipLog) -> Iterator[_RawRecord]:
    with open_binary(path) as file:
        if file.peek(len(GZIP_MAGIC))[:len(GZIP_MAGIC)] == GZIP_MAGIC:  # peeked: a stream need not seek back
            for member_offset, member in _gzip_members(file, path, skips):
                yield from _parse_block(path, member, skips, base_offset=member_offset, fixed_offset=True)
            return
    with _mapped(path) as data:
        yield from _parse_block(path, data, skips, base_offset=0, fixed_offset=False)


@contextmanager
def _mapped(path: Path | str) -> Iterator[mmap.mmap]:
    """The whole file mapped into memory; a remote one is copied, streamed, to a temporary file first."""
    if isinstance(path, Path):
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data
        return
    with tempfile.TemporaryFile() as copy:
        with open_binary(path) as file:
            shutil.copyfileobj(file, copy, READ_CHUNK)
        copy.flush()
        with mmap.mmap(copy.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


class _Window:
    """A file read front to back a chunk at a time, with the bytes from a given place on kept in `data`, so that a
    damaged gzip member can be searched for the next one."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.data = b""
        self.offset = 0  # where data[0] is in the file

    def read_more(self, keep_from: int) -> bool:
        """Append the next chunk, dropping the bytes before data[keep_from]; False at the end of the file."""
        chunk = self.file.read(READ_CHUNK)
        if not chunk:
            return False
        self.data = self.data[keep_from:] + chunk
        self.offset += keep_from
        return True

    def find(self, pattern: bytes, start: int) -> int:
        """Where `pattern` next occurs in data at or after `start`, reading on (and dropping what lies before) as
        needed; len(data) if the file ends first."""
        while (found := self.data.find(pattern, start)) < 0:
            keep_from = max(start, len(self.data) - len(pattern) + 1)
            if not self.read_more(keep_from):
                return len(self.data)
            start = 0
        return found


def _gzip_members(file: BinaryIO, path: Path | str, skips: SkipLog) -> Iterator[tuple[int, bytes]]:
    """(compressed offset, decompressed bytes) of each gzip member; a damaged member is counted and skipped."""
    window = _Window(file)
    start = 0  # where the next member starts in window.data
    while True:
        if start == len(window.data):
            if not window.read_more(start):
                return
            start = 0
        inflater = zlib.decompressobj(wbits=31)
        parts: list[bytes] = []
        fed = start  # window.data up to here has gone to the inflater
        try:
            while not inflater.eof:
                if fed == len(window.data):
                    if not window.read_more(start):
                        break
                    start, fed = 0, fed - start
                piece = memoryview(window.data)[fed:fed + INFLATE_PIECE]
                parts.append(inflater.decompress(piece))
                fed += len(piece)
        except zlib.error:
            skips.skip(path, "corrupt gzip member skipped")
            start = window.find(GZIP_MAGIC, start + 1)
            continue
        if not inflater.eof:
            skips.skip(path, "truncated gzip member at end of file")
            return
        yield window.offset + start, b"".join(parts)
        start = fed - len(inflater.unused_data)


def _parse_block(path: Path | str, data, skips: SkipLog, *, base_offset: int, fixed_offset: bool) -> Iterator[_RawRecord]:
    """Records in one buffer (a gzip member, or a whole plain file), resuming after a record with a bad length.

    A record is only passed on once the next header (or a clean end) confirms where it ended: FastWARC trusts
    Content-Length, so a wrong length shows up as a bad header right after the record it belongs to.
    """
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    start = 0
    while start < len(data):
        stream.seek(start)
        pending: _RawRecord | None = None
        last_start = start
        try:
            for record in ArchiveIterator(stream, parse_http=False):
                if pending is not None:
                    yield pending
                last_start = start + record.stream_pos
                pending = _read_record(record, base_offset if fixed_offset else base_offset + last_start)
                if pending is None:
                    skips.skip(path, "record shorter than its Content-Length (truncated)")
        except OSError:
            skips.skip(path, "record with a bad length or header dropped")
            match = WARC_HEADER.search(data, last_start + 1)
            start = len(data) if match is None else match.start() + (data[match.start():match.start() + 1] == b"\n")
            continue
        if pending is not None:
            yield pending
        return


def _read_record(record, offset: int) -> _RawRecord | None:
    """The record with its payload, or None when the block ends before its declared Content-Length."""
    headers = {k: v for k, v in record.headers}
    body = record.reader.read()
    declared = headers.get("Content-Length", "")
    if not (declared.isascii() and declared.isdigit()) or len(body) < int(declared):
        return None
    record_type = headers.get("WARC-Type", "unknown")
    if record_type != "response":
        return _RawRecord(offset, record_type, headers, None, "", "", body)
    status, fields, payload = _split_http(body)
    return _RawRecord(offset, record_type, headers, status, fields.get("content-type", "").lower(),
                      fields.get("content-encoding", ""), payload)


def _split_http(body: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """(status, header fields by lower-case name, payload) of a raw HTTP response; chunked transfer undone."""
    head, sep, payload = body.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, b""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isascii() and parts[1].isdigit() else None
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if "chunked" in fields.get("transfer-encoding", "").lower():
        payload = _dechunk(payload)
    return status, fields, payload


def _dechunk(payload: bytes) -> bytes:
    """The body of a chunked HTTP response (RFC 9112 §7.1); a malformed chunk ends it."""
    out, pos = [], 0
    while True:
        line_end = payload.find(b"\r\n", pos)
        size_text = payload[pos:line_end].split(b";")[0].strip() if line_end >= 0 else b""
        try:
            size = int(size_text, 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(payload[line_end + 2:line_end + 2 + size])
        pos = line_end + 2 + size + 2
    return b"".join(out)
