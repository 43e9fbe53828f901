"""Files written whole or not at all, and folders that one process writes at a time.

A file is written under a temporary name beside its final one, flushed to disk, then renamed over it: a crash, a
full disk or a Ctrl-C leaves either the old file or the new one, never half of one. The temporary name carries
the process id, so processes writing the same file at once (tasks of one job) do not write into each other's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from nextword.errors import NextwordError

LOCK_NAME = ".lock"


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def remove_temporary_files(folder: Path) -> None:
    """Remove what writers killed mid-write left in `folder` (files named as temporary_name names them). Only for a
    folder whose lock this process holds: another writer's files would be removed too."""
    for path in folder.glob("*.tmp*"):
        if path.is_file() and path.name.rpartition(".tmp")[2].isdigit():
            path.unlink()


def replace_atomically(tmp: Path, final: Path) -> None:
    """Flush the finished file `tmp` to disk, then rename it to `final` in one step."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s contents to; once the block ends they replace `path` whole. If the
    block fails, the temporary file is removed and `path` stays as it was."""
    final = Path(path)
    tmp = temporary_name(final)
    try:
        yield tmp
        replace_atomically(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write `text` as UTF-8 to `path`, whole or not at all."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


class FolderInUse(NextwordError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str, flag: str) -> Iterator[None]:
    """Hold `folder`'s lock (the file .lock in it) while the block runs, or stop with one line naming the process
    that holds it and `flag`, the option that chose the folder.

    The lock is the operating system's (flock): it goes with the process that held it, so one left by a killed
    process never blocks the next command. The lock file says which process holds it, for that one line.
    """
    path = Path(folder) / LOCK_NAME
    try:
        file = open(path, "a+", encoding="utf-8")
    except OSError as e:  # a read-only folder, one of another user's
        raise NextwordError(f"{path}: cannot write {what}'s lock file ({e.strerror or e}); give {flag} a folder "
                            "you can write to") from None
    with file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            raise FolderInUse(f"{folder}: {what} in use by {_holder(file.read())}; wait for it to finish or stop "
                              f"it, or give {flag} another folder") from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": _command()}))
        file.flush()
        try:
            yield
        finally:
            file.truncate(0)  # held by no one: the folder's contents are the same whoever wrote them last
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _command() -> str:
    """This process's command line, as a person would recognise it ("nextword train --run-dir r")."""
    arguments = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    if arguments[0] in ("__main__.py", "-m") or arguments[0].startswith("python"):
        arguments[0] = "nextword"
    return " ".join(arguments)


def _holder(record: str) -> str:
    try:
        holder = json.loads(record)
        where = "" if holder["host"] == socket.gethostname() else f" on {holder['host']}"
        return f"process {holder['pid']}{where} ({holder['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
