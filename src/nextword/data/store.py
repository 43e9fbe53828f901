"""Output folders that tasks share: a local path, or any fsspec URL a store can be written at (s3://, hf://,
file://, memory://), the way datatrove writes FineWeb to S3.

A local path is written as before, with the standard library (files.py: a temporary name, fsynced, renamed). A
URL goes through datatrove's DataFolder (an fsspec filesystem rooted at the URL): each file is written under a
temporary name of its own and moved to its final name when whole, so a name that exists is always a whole file,
and a task that finds it may skip the work. Only tasks' shared files come here; their scratch stays on local disk.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow.parquet as pq

from nextword.data.remote import brief, is_url, open_binary
from nextword.errors import DataError, make_folder
from nextword.files import atomic_write, write_text_atomically

# Sorted record files: every INDEX_STRIDE-th record's sort field is written beside them (NAME.index, 8 bytes per
# 4096 records), so that a task finds its range in a remote file with two reads of one window each.
INDEX_STRIDE = 4096
READ_CHUNK_RECORDS = 1 << 16  # a remote range is read this many records at a time
# Schemes fsspec reads but cannot write: an output there would fail only in its first task.
READ_ONLY_SCHEMES = {"http", "https", "github", "zip", "tar", "libarchive"}


class Folder:
    """A folder on this machine (or a filesystem it mounts). Names are relative paths inside it ("parts/00000")."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def location(self, name: str) -> str:
        """Where `name` is, as a reader takes it: a local path, or a URL."""
        return str(self.path / name)

    def local_path(self, name: str) -> Path | None:
        """The file as a local path (which numpy can map), or None for a remote one."""
        return self.path / name

    def make(self, flag: str) -> None:
        make_folder(self.path, "output", flag)

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def read_text(self, name: str) -> str:
        return (self.path / name).read_text(encoding="utf-8")

    def write_text(self, name: str, text: str) -> None:
        """Write `name` whole or not at all."""
        (self.path / name).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.path / name, text)

    def write_bytes(self, name: str, data: bytes | np.ndarray) -> None:
        """Write `name` whole or not at all."""
        with self.writing(name) as f:
            f.write(data.tobytes() if isinstance(data, np.ndarray) else data)

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[BinaryIO]:
        """A binary file to write `name`'s contents to; once the block ends they replace `name` whole, and if it
        fails nothing is left under `name`."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            yield f

    def names(self, pattern: str) -> list[str]:
        """The names of the files in the folder matching a glob pattern, sorted."""
        return sorted(path.name for path in self.path.glob(pattern))

    def remove(self, name: str) -> None:
        """Remove a folder in this one, and everything in it, if it is there."""
        shutil.rmtree(self.path / name, ignore_errors=True)


class RemoteFolder(Folder):
    """A folder at an fsspec URL, read and written through datatrove's DataFolder."""

    def __init__(self, url: str) -> None:  # no local path: every method of Folder that uses one is replaced here
        self.url = url.rstrip("/")
        self.fs = _data_folder(self.url)

    def __str__(self) -> str:
        return self.url

    def __reduce__(self) -> tuple[Any, ...]:
        return RemoteFolder, (self.url,)  # tasks in other processes open the store again, with its own settings

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"

    def local_path(self, name: str) -> Path | None:
        return None

    def make(self, flag: str) -> None:
        try:
            self.fs.makedirs("", exist_ok=True)
        except Exception as error:  # whatever the store raises: no such bucket, no credentials, a file in the way
            raise DataError(f"{self.url}: cannot make the output folder ({brief(error)}); check the URL and your "
                            f"credentials, or give {flag} a local folder") from None

    def exists(self, name: str) -> bool:
        return self.fs.exists(name)

    def size(self, name: str) -> int:
        return self.fs.size(name)

    def read_text(self, name: str) -> str:
        return self.fs.cat_file(name).decode("utf-8")

    def read_bytes(self, name: str, start: int, stop: int) -> bytes:
        """Bytes start … stop - 1 of `name`: one range request."""
        return self.fs.cat_file(name, start=start, end=stop)

    def write_text(self, name: str, text: str) -> None:
        with self.writing(name) as f:
            f.write(text.encode("utf-8"))

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[BinaryIO]:
        # A name of its own per writer: tasks rerun on other machines may write the same file at once.
        tmp = f"{name}.tmp{uuid.uuid4().hex[:12]}"
        try:
            with self.fs.open(tmp, "wb") as f:
                yield f
            self.fs.mv(tmp, name)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise

    def names(self, pattern: str) -> list[str]:
        self.fs.invalidate_cache()  # a listing cached here would miss what tasks in other processes wrote since
        return sorted(path.rsplit("/", 1)[-1] for path in self.fs.glob(pattern))

    def remove(self, name: str) -> None:
        if self.fs.exists(name):
            self.fs.rm(name, recursive=True)


def open_folder(location: str | Path, flag: str = "--out", write: bool = True) -> Folder:
    """The folder at a local path or a URL; with `write`, a URL whose store cannot be written is a DataError
    naming `flag`, the option that gave it."""
    if not is_url(location):
        return Folder(Path(location).expanduser())
    scheme = str(location).split("://", 1)[0].lower()
    if write and scheme in READ_ONLY_SCHEMES:
        raise DataError(f"{location}: {scheme}:// URLs can be read but not written; give {flag} a local folder or "
                        "a URL of a store you can write to (s3://BUCKET/PATH, hf://datasets/USER/NAME/PATH)")
    return RemoteFolder(str(location))


def _data_folder(url: str):
    from datatrove.io import DataFolder  # here: datatrove is needed only for URLs

    try:
        return DataFolder(url)
    except (ImportError, ValueError) as error:  # a scheme fsspec does not know, or one whose package is missing
        scheme = url.split("://", 1)[0]
        raise DataError(f"{url}: cannot write {scheme}:// URLs here ({brief(error)}); install the package it "
                        "names, or give a local folder") from None


def open_parquet(location: str | Path) -> pq.ParquetFile:
    """A parquet file at a local path or a URL; a remote one is read in ranges (its footer, then the row groups
    asked for), not downloaded whole."""
    return pq.ParquetFile(open_binary(str(location)) if is_url(location) else location)


# ---- files of records sorted on one field, read by range ---------------------------------------------------


def index_name(name: str) -> str:
    return f"{name}.index"


def write_sorted(folder: Folder, name: str, blocks: Iterator[np.ndarray], key: str) -> int:
    """Write consecutive sorted blocks of records as `name`, with its index (`key` of every INDEX_STRIDE-th record)
    written before the records reach their final name; the number of records."""
    marks, count = [], 0
    with folder.writing(name) as f:
        for block in blocks:
            marks.append(block[key][(-count) % INDEX_STRIDE::INDEX_STRIDE])
            f.write(block.tobytes())
            count += len(block)
        folder.write_bytes(index_name(name), np.concatenate(marks or [np.empty(0, np.uint64)]).astype("<u8"))
    return count


def sorted_range(folder: Folder, name: str, dtype: np.dtype, key: str, low: int, high: int | None
                 ) -> Iterator[np.ndarray]:
    """The records of a write_sorted file whose `key` lies in [low, high) (high None: no upper bound), in blocks.

    A local file is mapped and numpy's binary search finds the range. A remote one is read in ranges: the index
    narrows each end to one window of INDEX_STRIDE records, and the records between are read READ_CHUNK_RECORDS at
    a time, so a task holds one chunk, never the file.
    """
    local = folder.local_path(name)
    if local is not None:
        if not local.stat().st_size:
            return
        records = np.memmap(local, dtype=dtype, mode="r")
        first = np.searchsorted(records[key], low)
        last = len(records) if high is None else np.searchsorted(records[key], high)
        yield np.array(records[first:last])
        return
    yield from _remote_range(folder, name, dtype, key, low, high)


def _remote_range(folder: RemoteFolder, name: str, dtype: np.dtype, key: str, low: int, high: int | None
                  ) -> Iterator[np.ndarray]:
    count = folder.size(name) // dtype.itemsize
    index = np.frombuffer(folder.read_bytes(index_name(name), 0, folder.size(index_name(name))) if count else b"",
                          dtype="<u8")
    first = _position(folder, name, dtype, key, index, count, low)
    last = count if high is None else _position(folder, name, dtype, key, index, count, high)
    for start in range(first, last, READ_CHUNK_RECORDS):
        yield _records(folder, name, dtype, start, min(start + READ_CHUNK_RECORDS, last))


def _position(folder: RemoteFolder, name: str, dtype: np.dtype, key: str, index: np.ndarray, count: int,
              value: int) -> int:
    """The first record whose `key` is >= value, found in the one window of records the index points to."""
    below = int(np.searchsorted(index, value))  # marks < value: every record before mark `below - 1` is < value
    if below == 0:
        return 0
    start = (below - 1) * INDEX_STRIDE  # and mark `below`, if there is one, is >= value
    window = _records(folder, name, dtype, start, min(start + INDEX_STRIDE, count))
    return start + int(np.searchsorted(window[key], value))


def _records(folder: RemoteFolder, name: str, dtype: np.dtype, first: int, stop: int) -> np.ndarray:
    data = folder.read_bytes(name, first * dtype.itemsize, stop * dtype.itemsize)
    return np.frombuffer(data, dtype=dtype)
