"""Readers that turn sources into documents: text and code folders, JSONL, parquet, WARC/WET, and the default corpus.

Every reader yields `Document`s in a deterministic order and never drops input silently: whatever it cannot use
(a binary file, a line that is not JSON, a truncated archive) is counted in a `SkipLog` with the file and the
reason, so the prepare summary can say what was left out and why.

The default corpus is the Python standard library of the running interpreter: its code, comments and docstrings,
plus the English prose of the `pydoc` help topics. Every machine with Python has it, and it is the same text on
every machine with the same Python version.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import itertools
import json
import os
import sys
import sysconfig
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO

from nextword.data.code import listed_files, read_code_repo
from nextword.data.documents import Document, SkipLog
from nextword.data.listing import Listing, count_links_outside, walk_files
from nextword.data.remote import RemoteReadError, file_name, file_size, is_url, open_binary, remote_files
from nextword.errors import DataError

CODE_PREFIX = "code:"  # a source spec naming a code repository: code:PATH

# A text file up to this size is one document; a larger one (enwik9, TinyStories, text8, books in one .txt) is read
# streaming, as documents cut from it, and so is any text file when data.doc_separator is set. Tokenizing one
# document takes about 100 bytes of memory per byte of its text (measured: a 10 MB document peaked at 0.9 GB in an
# encoding worker), so this bound keeps a worker near 400 MB whatever the files are.
MAX_FILE_BYTES = 4 * 1024 * 1024
# A large file without a separator is cut at blank lines into documents of at most this size: small enough that a
# sample of the corpus holds hundreds of them, so whole ones are held out by hash (split.py); large enough that an
# end-of-document token every few thousand tokens barely interrupts the text.
CUT_DOCUMENT_BYTES = 64 * 1024
BINARY_SNIFF_BYTES = 8192  # a NUL byte this early marks a file as binary
READ_CHUNK_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 1024

# Bump when a reader changes what it yields, so prepared data made by the old readers is not reused.
READER_VERSION = 5  # 4: a text file over MAX_FILE_BYTES is read in documents, not skipped; 5: that bound is 4 MiB

# Dolma and C4 name their compressed JSON-lines files .json.gz; a plain .json may be one JSON document, not lines.
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")
WEB_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".warc.wet.gz")
PARQUET_SUFFIX = ".parquet"
# A folder contributes these whatever data.extensions says: a downloaded dataset is a folder of such files.
DATA_FORMAT_SUFFIXES = (*JSONL_SUFFIXES, *WEB_SUFFIXES, PARQUET_SUFFIX)
DEFAULT_CORPUS_NAME = "stdlib"

# Folders of the standard library that are not library code: installed packages, bytecode, and test suites.
STDLIB_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__", "idle_test"}
PYDOC_TOPICS = Path("pydoc_data") / "topics.py"


# --- the default corpus: Python's standard library -------------------------------------------------------


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_stdlib_code_dir(name: str) -> bool:
    return name not in STDLIB_EXCLUDED_DIRS and not name.startswith("test")


def _stdlib_files(root: Path) -> list[Path]:
    """The standard library's own .py files, sorted by relative path, without tests and the pydoc topics table."""
    files = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if _is_stdlib_code_dir(name)]
        files.extend(Path(folder, name) for name in filenames if name.endswith(".py"))
    topics = root / PYDOC_TOPICS
    return sorted((path for path in files if path != topics), key=lambda path: path.relative_to(root).as_posix())


def _pydoc_topics(root: Path) -> dict[str, str]:
    """The `topics` dict of pydoc_data/topics.py, read as data with `ast`, never imported or executed."""
    path = root / PYDOC_TOPICS
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            topics = ast.literal_eval(node.value)
            return {str(name): text for name, text in topics.items() if isinstance(text, str)}
    return {}


GENERATED_CODEC_MARK = "with gencodec.py"


def default_corpus(skips: SkipLog | None = None) -> Iterator[Document]:
    """The standard library's code, then one document per pydoc help topic."""
    skips = skips if skips is not None else SkipLog()
    root = _stdlib_root()
    for path in _stdlib_files(root):
        text = _read_text_file(path, skips)
        if text is not None and GENERATED_CODEC_MARK in text[:1000]:
            # The charmap codecs are tables written by a generator: 12% of the library's bytes, and they teach
            # neither Python nor English.
            skips.skip(path, "generated by gencodec.py")
        elif text is not None:
            relative = path.relative_to(root).as_posix()
            yield Document(id=f"stdlib:{relative}", text=text, source="stdlib", meta={"path": str(path)})
    topics_path = root / PYDOC_TOPICS
    topics = _pydoc_topics(root)
    if not topics:
        skips.skip(topics_path, "no pydoc topics found")
    for name in sorted(topics):
        text = topics[name]
        if text.strip():
            yield Document(id=f"pydoc:{name}", text=text, source="pydoc", meta={"path": str(topics_path)})


# --- plain text and code files ---------------------------------------------------------------------------


def _read_text_file(path: Path | str, skips: SkipLog) -> str | None:
    """The file's text (a local path or a URL), or None after counting why it cannot be used."""
    try:
        size = file_size(path)
        if size is None or size <= MAX_FILE_BYTES:
            data = path.read_bytes() if isinstance(path, Path) else _read_remote(path)
            size = len(data)
        if size > MAX_FILE_BYTES:
            skips.skip(path, f"too large ({size / 2**20:.1f} MiB, cap {MAX_FILE_BYTES // 2**20} MiB)")
            return None
    except OSError as error:
        skips.unreadable(path, error)
        return None
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        skips.skip(path, "binary (NUL byte in the first 8 KB)")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        skips.skip(path, f"not valid UTF-8 (byte {error.start})")
        return None
    if not text.strip():
        skips.skip(path, "empty")
        return None
    return text


def _read_remote(url: str) -> bytes:
    """A remote file's bytes, one past the cap at most: a store that gives no size up front is capped too."""
    with open_binary(url) as file:
        return file.read(MAX_FILE_BYTES + 1)


# --- text files cut into documents: large ones, and any with a document separator ------------------------------

BLANK_LINES = (b"\n\n", b"\n\r\n")
WHITESPACE = (b" ", b"\n", b"\t", b"\r")


def _read_text(path: Path | str, display: str, skips: SkipLog, doc_separator: str) -> Iterator[Document]:
    """A text file as one document; or, when `doc_separator` is given or the file is larger than MAX_FILE_BYTES
    (or of a size its store does not report), as the documents cut from it (_cut_text_file)."""
    if doc_separator or _maybe_over_cap(path):
        yield from _cut_text_file(path, display, skips, doc_separator)
        return
    text = _read_text_file(path, skips)
    if text is not None:
        yield Document(id=display, text=text, source="file", meta={"path": str(path)})


def _maybe_over_cap(path: Path | str) -> bool:
    """True for a file over MAX_FILE_BYTES or of unknown size; False where its size cannot be read, so that the
    whole-file reader counts it as unreadable."""
    try:
        size = file_size(path)
    except OSError:
        return False
    return size is None or size > MAX_FILE_BYTES


def _cut_text_file(path: Path | str, display: str, skips: SkipLog, doc_separator: str) -> Iterator[Document]:
    """The documents of a text file, read a chunk at a time and never whole: with `doc_separator`, the text between
    separators without the whitespace around them (one over MAX_FILE_BYTES cut as below); without, groups of whole
    paragraphs of at most CUT_DOCUMENT_BYTES, a longer paragraph cut at a space, text without one at the bound.

    Document N of the file is FILE:N. The file is cut as bytes: a blank line, a space, or a separator in valid UTF-8
    never starts inside a character, so each cut falls between characters and each piece is decoded alone; one
    that is not UTF-8 is counted and left out, and the rest of the file is still read.
    """
    try:
        file = open_binary(path)
    except OSError as error:
        skips.unreadable(path, error)
        return
    with file:
        try:
            head = file.read(BINARY_SNIFF_BYTES)
        except OSError as error:
            skips.unreadable(path, error)
            return
        if b"\0" in head:
            skips.skip(path, "binary (NUL byte in the first 8 KB)")
            return
        chunks = itertools.chain([head], iter(lambda: file.read(READ_CHUNK_BYTES), b""))
        if doc_separator:
            pieces = _separated_pieces(chunks, doc_separator.encode("utf-8"), MAX_FILE_BYTES)
        else:
            pieces = _paragraph_groups(chunks, CUT_DOCUMENT_BYTES)
        yield from _piece_documents(pieces, path, display, skips)


def _piece_documents(pieces: Iterator[tuple[int, bytes]], path: Path | str, display: str,
                     skips: SkipLog) -> Iterator[Document]:
    """A document from each (offset in the file, bytes) piece that is UTF-8 and not blank; a file that gives none,
    and had nothing else counted, is counted as empty."""
    number = 0
    read_to = 0  # the bytes of the file cut into pieces so far
    skipped_before = skips.total
    found_text = False
    while True:
        try:
            offset, piece = next(pieces)
        except StopIteration:
            break
        except OSError as error:  # RemoteReadError included: a dropped connection part way
            skips.skip(path, f"read failed after byte {read_to} ({error.strerror or error})")
            return
        number += 1
        read_to = offset + len(piece)
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError as error:
            skips.skip(path, f"not valid UTF-8 (byte {offset + error.start})")
            continue
        if text.strip():
            found_text = True
            yield Document(id=f"{display}:{number}", text=text, source="file",
                           meta={"path": str(path), "byte": offset})
    if not found_text and skips.total == skipped_before:
        skips.skip(path, "empty")


def _paragraph_groups(chunks: Iterable[bytes], limit: int) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of consecutive pieces of at most `limit` bytes that together make up `chunks`, each cut at
    the last blank line that fits, else the last whitespace, else at the limit (see _cut_point)."""
    pending = b""
    offset = 0  # where `pending` starts in the file
    for chunk in chunks:
        pending += chunk
        start = 0
        while len(pending) - start > limit:
            end = _cut_point(pending, start, start + limit)
            yield offset + start, pending[start:end]
            start = end
        pending = pending[start:]
        offset += start
    if pending:
        yield offset, pending


def _separated_pieces(chunks: Iterable[bytes], separator: bytes, limit: int) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) of the text between separators, stripped of the whitespace at both ends (a separator usually
    has a line of its own), blank ones left out; text that runs past `limit` bytes without a separator is cut
    there as _cut_point says, so memory stays bounded whatever the file holds."""
    pending = b""
    offset = 0  # where `pending` starts in the file
    searched = 0  # `pending` holds no separator that starts before this
    for chunk in chunks:
        pending += chunk
        start = 0
        while (at := pending.find(separator, searched)) >= 0:
            yield from _stripped(offset + start, pending[start:at])
            start = searched = at + len(separator)
        while len(pending) - start > limit:
            end = _cut_point(pending, start, start + limit)
            yield from _stripped(offset + start, pending[start:end])
            start = end
        pending = pending[start:]
        offset += start
        searched = max(0, len(pending) - len(separator) + 1)  # a separator may begin in this chunk's last bytes
    yield from _stripped(offset, pending)


def _stripped(offset: int, piece: bytes) -> Iterator[tuple[int, bytes]]:
    text = piece.strip()
    if text:
        yield offset + len(piece) - len(piece.lstrip()), text


def _cut_point(data: bytes, start: int, end: int) -> int:
    """Where a piece that starts at `start` ends, at `end` at the latest: just after the last blank line, else the
    last whitespace, else at `end` moved back to the first byte of a UTF-8 character."""
    for marks in (BLANK_LINES, WHITESPACE):
        found = [at + len(mark) for mark in marks if (at := data.rfind(mark, start, end)) >= 0]
        if found:
            return max(found)
    cut = end
    while cut > start + 1 and data[cut] & 0xC0 == 0x80:  # 10xxxxxx: a byte inside a character
        cut -= 1
    return cut


# --- JSONL, plain or compressed --------------------------------------------------------------------------


def _zstd_chunks(file: BinaryIO, path: Path | str) -> Iterator[bytes]:
    """Decompressed bytes of a .zst file (open as `file`), frame after frame.

    zstandard's stream reader ends quietly at a truncated frame, so this checks that the last frame was
    complete and raises EOFError if it was not.
    """
    try:  # here, not at the top: only .zst inputs need it, an optional extra
        import zstandard
    except ImportError:
        raise DataError(f"{path}: reading .zst files needs the zstandard package: "
                        "pip install 'nextword[zstd]'") from None

    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    frame_has_input = False
    while chunk := file.read(READ_CHUNK_BYTES):
        while chunk:
            frame_has_input = True
            try:
                decompressed = frame.decompress(chunk)
            except zstandard.ZstdError as error:
                raise EOFError(f"corrupt zstd frame ({error})") from error
            yield decompressed
            if not frame.eof:
                break
            chunk = frame.unused_data
            frame = decompressor.decompressobj()
            frame_has_input = False
    if frame_has_input:
        raise EOFError("zstd stream ends inside a frame")


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def _raw_lines(path: Path | str, file: BinaryIO) -> tuple[str, Iterator[bytes]]:
    """(what the file is, for messages; the lines of `file`, opened from `path`, as bytes)."""
    name = file_name(path).lower()
    if name.endswith(".gz"):
        return "gzip", iter(gzip.GzipFile(fileobj=file, mode="rb"))
    if name.endswith(".zst"):
        return "zstd", _split_lines(_zstd_chunks(file, path))
    return "file", iter(file)


def _read_jsonl(path: Path | str, display: str, skips: SkipLog) -> Iterator[Document]:
    """One document per line with a string `text` (FineWeb and Dolma records); other fields go in meta."""
    try:
        file = open_binary(path)
    except OSError as error:
        skips.unreadable(path, error)
        return
    with file:
        kind, lines = _raw_lines(path, file)
        line_number = 0
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except RemoteReadError as error:
                skips.skip(path, f"read failed after line {line_number} ({error})")
                return
            except (EOFError, OSError, zlib.error):
                skips.skip(path, f"corrupt {kind} after line {line_number}")
                return
            line_number += 1
            if not raw.strip():
                continue  # a blank line holds no record
            document = _jsonl_document(raw, line_number, path, display, skips)
            if document is not None:
                yield document


def _jsonl_document(raw: bytes, line_number: int, path: Path | str, display: str, skips: SkipLog) -> Document | None:
    try:
        # utf-8-sig on the first line: a file saved by a Windows editor starts with a byte-order mark.
        record = json.loads(raw.decode("utf-8-sig" if line_number == 1 else "utf-8"))
    except UnicodeDecodeError:
        skips.skip(path, f"line {line_number}: not valid UTF-8")
        return None
    except json.JSONDecodeError:
        skips.skip(path, f"line {line_number}: not JSON")
        return None
    except RecursionError:
        skips.skip(path, f"line {line_number}: JSON nested too deeply")
        return None
    return _record_document(record, "jsonl", "line", line_number, path, display, skips)


def _record_document(
    record: Any, source: str, unit: str, number: int, path: Path | str, display: str, skips: SkipLog
) -> Document | None:
    """A document from one JSONL line or parquet row, or None after counting why not."""
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        skips.skip(path, f"{unit} {number}: no string text field")
        return None
    text = record.pop("text")
    if not text.strip():
        skips.skip(path, f"{unit} {number}: empty text")
        return None
    record_id = record.pop("id", None)
    document_id = str(record_id) if record_id is not None else f"{display}:{number}"
    meta = {**record, "path": str(path), unit: number}
    return Document(id=document_id, text=text, source=source, meta=meta)


# --- parquet ---------------------------------------------------------------------------------------------


def _read_parquet(path: Path | str, display: str, skips: SkipLog) -> Iterator[Document]:
    """One document per row, streamed a batch at a time so memory stays bounded. A remote file is read through a
    file object, which fetches the footer and then each row group as it is needed."""
    import pyarrow.parquet as pq  # imported here: pyarrow takes a while to load and most runs read no parquet

    with ExitStack() as stack:
        try:
            parquet = pq.ParquetFile(path if isinstance(path, Path) else stack.enter_context(open_binary(path)))
        except Exception as error:  # pyarrow raises several kinds (ArrowInvalid, OSError) for a damaged file
            skips.skip(path, f"unreadable parquet ({error})")
            return
        yield from _parquet_rows(parquet, path, display, skips)


def _parquet_rows(parquet: Any, path: Path | str, display: str, skips: SkipLog) -> Iterator[Document]:
    columns = parquet.schema_arrow.names
    if "text" not in columns:
        skips.skip(path, f"no text column (has: {', '.join(columns)})")
        return
    row_number = 0
    batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as error:
            skips.skip(path, f"unreadable parquet after row {row_number} ({error})")
            return
        try:
            records = batch.to_pylist()
        except UnicodeDecodeError as error:  # a damaged page can decode into bytes that are not UTF-8
            skips.skip(path, f"unreadable parquet after row {row_number} ({error})")
            return
        for record in records:
            row_number += 1
            document = _record_document(record, "parquet", "row", row_number, path, display, skips)
            if document is not None:
                yield document


# --- routing ---------------------------------------------------------------------------------------------


def _read_file(path: Path | str, display: str, skips: SkipLog, doc_separator: str = "") -> Iterator[Document]:
    """Route one file (a local path or a URL) to its reader by the end of its name; anything else is read as text,
    cut into documents at `doc_separator` where one is given."""
    name = file_name(path).lower()
    if name.endswith(WEB_SUFFIXES):
        from nextword.data.web import read_web  # imported here: the web readers pull in HTML extraction

        yield from read_web(path, skips)
    elif name.endswith(JSONL_SUFFIXES):
        if _is_empty(path, skips):
            return
        yield from _read_jsonl(path, display, skips)
    elif name.endswith(PARQUET_SUFFIX):
        yield from _read_parquet(path, display, skips)
    else:
        yield from _read_text(path, display, skips, doc_separator)


def _is_empty(path: Path | str, skips: SkipLog) -> bool:
    """True after counting the file as empty or unreadable (a broken link, a link loop, a URL gone)."""
    try:
        size = file_size(path)
    except OSError as error:
        skips.unreadable(path, error)
        return True
    if size == 0:
        skips.skip(path, "empty")
        return True
    return False


def _matches(name: str, extensions: list[str]) -> bool:
    lowered = name.lower()
    return lowered.endswith(DATA_FORMAT_SUFFIXES) or any(lowered.endswith(ext.lower()) for ext in extensions)


def _folder_files(root: Path, extensions: list[str]) -> Listing:
    """Files under `root` in a data format (JSONL, parquet, WARC/WET) or whose names end with one of
    `extensions` (which text and code files to take), sorted by relative path; links that lead out of `root`
    set apart (listing.py).

    Hidden folders (.git, .venv) and bytecode caches are not walked: they hold tooling, not the user's text.
    """
    return walk_files(root, keep_folder=lambda name: not name.startswith(".") and name != "__pycache__",
                      keep_file=lambda name: _matches(name, extensions))


def code_repository(source: str) -> Path | None:
    """The folder a `code:PATH` source names (a repository or git checkout); None for any other source."""
    if not source.startswith(CODE_PREFIX):
        return None
    path = Path(source[len(CODE_PREFIX):]).expanduser()
    if not path.is_dir():
        raise DataError(f"{source}: not a folder; `code:` takes a repository folder or git checkout")
    return path


def _existing_path(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"{source}: no such file or folder; pass a folder, .txt, .jsonl[.gz|.zst], .parquet or WARC/WET file"
        )
    return path


def _source_files(source: str, extensions: list[str]) -> tuple[list[tuple[Path | str, str]], list[Path]]:
    """(file, the name its documents' ids use) for each file a folder, file or URL names, in reading order; and
    the links in a folder that lead out of it, which are not read.

    Raises DataError for a path that does not exist or a URL that is not there or cannot be reached.
    """
    if is_url(source):
        return [(file.url, file.name) for file in remote_files(source, lambda name: _matches(name, extensions))], []
    path = _existing_path(source)
    if path.is_dir():
        listing = _folder_files(path, extensions)
        return [(file, file.relative_to(path).as_posix()) for file in listing.files], listing.links_outside
    return [(path, path.name)], []


def read_sources(sources: list[str], extensions: list[str], skips: SkipLog,
                 doc_separator: str = "") -> Iterator[Document]:
    """Documents from each source in order: "stdlib" (also what [] means) is the default corpus; `code:PATH` a
    code repository, one document per source file; a folder is read recursively for JSONL, parquet and WARC/WET
    files and for files ending with one of `extensions`; a single file is read whatever its extension. A URL
    (https://, s3://, hf://, memory://, file://) is read as the file or folder it names. A text file is one
    document, or, when it is larger than MAX_FILE_BYTES or `doc_separator` is given, the documents cut from it
    (see _read_text).

    Raises DataError for a source that does not exist, before reading anything.
    """
    if not sources:
        yield from default_corpus(skips)
        return
    repositories = [code_repository(source) for source in sources]
    files = [None if source == DEFAULT_CORPUS_NAME or repository else _source_files(source, extensions)
             for source, repository in zip(sources, repositories)]
    for listed, repository in zip(files, repositories):
        if repository is not None:
            yield from read_code_repo(repository, skips)
        elif listed is None:
            yield from default_corpus(skips)
        else:
            source_files, links_outside = listed
            count_links_outside(links_outside, skips)
            for file, display in source_files:
                yield from _read_file(file, display, skips, doc_separator)


# --- fingerprint -----------------------------------------------------------------------------------------


def sources_fingerprint(sources: list[str], extensions: list[str]) -> str:
    """A hex digest of what the inputs are, from names and file stats only (no file is read), so prepared data
    can be reused while the inputs stay the same and redone when one changes. A remote file counts by what its
    store reports: size, and ETag or modification time where it has them."""
    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        digest.update(("\t".join(str(part) for part in parts) + "\n").encode())

    add("readers", READER_VERSION, "max_file_bytes", MAX_FILE_BYTES)
    add("extensions", *sorted(extension.lower() for extension in extensions))
    for source in sources or [DEFAULT_CORPUS_NAME]:
        if source == DEFAULT_CORPUS_NAME:
            root = _stdlib_root()
            files = _stdlib_files(root)
            files.append(root / PYDOC_TOPICS)
            add("stdlib", sys.version, root, len(files), sum(path.stat().st_size for path in files if path.exists()))
            continue
        if is_url(source):
            for remote in remote_files(source, lambda name: _matches(name, extensions)):
                add(remote.url, *remote.fingerprint())
            continue
        repository = code_repository(source)
        if repository is not None:
            listing = listed_files(repository)
            files = [repository.resolve() / path.relative_to(repository) for path in listing.files]
        else:
            path = _existing_path(source).resolve()
            listing = _folder_files(path, extensions) if path.is_dir() else Listing([path])
            files = listing.files
        for link in listing.links_outside:  # not read, but counted: the report would change with them
            add(link, "link outside")
        for file in files:
            try:
                stat = file.stat()
            except OSError:  # a broken link: the readers count it as unreadable, the key notes that it is
                add(file, "unreadable")
                continue
            add(file, stat.st_size, stat.st_mtime_ns)
    return digest.hexdigest()
