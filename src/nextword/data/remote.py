"""Sources named by URL: `https://`, `s3://`, `hf://datasets/…`, `memory://`, `file://`, read through fsspec.

A URL naming a file is read as that file would be, streamed; a URL naming a folder or prefix (or a `*` pattern)
is listed and read like a local folder: the same names taken, in the same sorted order. Local paths never come
here: they are read with the standard library, as fast as before.

A URL that is not there or cannot be reached is a DataError before anything is read; a remote file that fails
part way (a dropped connection, a timeout) raises RemoteReadError, an OSError, which the readers count as a skip.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nextword.errors import DataError

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
GLOB_MARK = "*"
READ_BUFFER_BYTES = 1 << 20
# fsspec's info() fields that do not change with the file's contents, left out of its fingerprint.
NAMING_FIELDS = {"name", "type", "url", "mimetype"}


class RemoteReadError(OSError):
    """A remote file that failed while being read."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    name: str  # its path under the folder the source names (its file name for a file): the id readers give it
    info: dict[str, Any]  # what fsspec's info() gives: size, and an etag or modification time where the store has one

    def fingerprint(self) -> list[str]:
        """The info fields that change when the file does (size, ETag, Last-Modified, mtime, ...), sorted."""
        return [f"{key}={value}" for key, value in sorted(self.info.items()) if key not in NAMING_FIELDS]


def is_url(source: str | Path) -> bool:
    return isinstance(source, str) and URL.match(source) is not None


def file_name(location: Path | str) -> str:
    """The last part of a local path or a URL (its query left out): what decides how the file is read."""
    if isinstance(location, Path):
        return location.name
    return location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def brief(error: BaseException) -> str:
    """An exception as a few words on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _filesystem(source: str):
    import fsspec  # here: only URL sources need it

    try:
        return fsspec.core.url_to_fs(source)
    except (ImportError, ValueError) as error:  # a scheme fsspec does not know, or one whose package is missing
        scheme = source.split("://", 1)[0]
        raise DataError(f"{source}: cannot read {scheme}:// URLs here ({brief(error)}); install the package it "
                        "names, or check the URL") from None


def _access_error(source: str, error: Exception) -> DataError:
    """The one-line error for a URL that cannot be listed: not there, or not reachable."""
    cause = error.__cause__ or error.__context__
    # fsspec's HTTP filesystem reports an unreachable host as FileNotFoundError, raised from the connection error.
    unreachable = cause if isinstance(cause, (OSError, TimeoutError)) and not isinstance(cause, FileNotFoundError) \
        else None
    if isinstance(error, FileNotFoundError) and unreachable is None:
        return DataError(f"{source}: no such file or folder there; check the URL given to --source")
    return DataError(f"{source}: cannot reach it ({brief(unreachable or error)}); check the URL and the network, "
                     "or give a local copy")


def remote_files(source: str, keep: Callable[[str], bool] = lambda name: True) -> list[RemoteFile]:
    """The files a URL names: the file itself, or those under a folder or prefix (or matching a `*` pattern) whose
    file names `keep` takes, sorted by their path under it. Hidden folders and __pycache__ are left out, as in a
    local folder. A URL ending in "/" is a folder (a web server's index page is not a file to read).

    Raises DataError, with the URL and the fix, when it is not there or cannot be reached.
    """
    fs, root = _filesystem(source)
    try:
        if GLOB_MARK in root:
            base = root[:root.index(GLOB_MARK)].rsplit("/", 1)[0]
            found = fs.glob(root, detail=True)
            prefix = source[:source.index(GLOB_MARK)].rsplit("/", 1)[0]
            if not found:
                raise DataError(f"{source}: the pattern matches no file; check the URL given to --source")
        else:
            info = fs.info(root)
            if info["type"] != "directory" and not source.endswith("/"):
                return [RemoteFile(source, file_name(source), info)]
            base, prefix = root.rstrip("/"), source.rstrip("/")
            found = fs.find(root, detail=True)
        files = []
        for path, info in found.items():
            name = _relative(path, base)
            if name and info.get("type", "file") == "file" and _visible(name) and keep(file_name(name)):
                if info.get("size") is None:  # an HTTP index lists names alone; the fingerprint needs the rest
                    info = fs.info(path)
                files.append(RemoteFile(f"{prefix}/{name}", name, info))
    except DataError:
        raise
    except Exception as error:  # fsspec's stores raise their own kinds (aiohttp, botocore, huggingface_hub)
        raise _access_error(source, error) from None
    return sorted(files, key=lambda file: file.name)


def _relative(path: str, base: str) -> str | None:
    """`path` under the folder `base` ("" for a store's top), or None when it is not under it (a web server's index
    page may link anywhere)."""
    if not base:
        return path.lstrip("/")
    return path[len(base) + 1:] if path.startswith(base + "/") else None


def _visible(name: str) -> bool:
    """Not inside a hidden folder (.git, .cache) or a bytecode cache, as a local folder walk skips them."""
    return not any(part.startswith(".") or part == "__pycache__" for part in name.split("/")[:-1])


def file_size(location: Path | str) -> int | None:
    """The size of a local file, or of a remote one as its store reports it (None where it does not)."""
    if isinstance(location, Path):
        return location.stat().st_size
    fs, path = _filesystem(location)
    return _guarded(location, lambda: fs.info(path)).get("size")


def open_binary(location: Path | str) -> io.BufferedReader:
    """A local file opened as usual, or a remote one streamed through fsspec behind a read buffer; its failures
    raise RemoteReadError."""
    if isinstance(location, Path):
        return open(location, "rb")
    fs, path = _filesystem(location)
    remote = _guarded(location, lambda: fs.open(path, "rb"))
    return io.BufferedReader(_GuardedFile(remote, location), buffer_size=READ_BUFFER_BYTES)


def _guarded(url: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except RemoteReadError:
        raise
    except Exception as error:  # a dropped connection, a timeout, a server error: whatever the store raises
        raise RemoteReadError(f"reading {url} failed: {brief(error)}") from error


class _GuardedFile(io.RawIOBase):
    """An fsspec file whose failures surface as RemoteReadError, so the readers count them as skips."""

    def __init__(self, file: Any, url: str) -> None:
        super().__init__()
        self._file, self._url = file, url

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._file.seekable()

    def readinto(self, buffer: Any) -> int:
        data = _guarded(self._url, lambda: self._file.read(len(buffer)))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return _guarded(self._url, lambda: self._file.seek(offset, whence))

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()
