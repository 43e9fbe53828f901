"""Files written whole or not at all.

A file is written under a temporary name beside its final one, flushed to disk, then renamed over it: a crash, a
full disk or a Ctrl-C leaves either the old file or the new one, never half of one. The temporary name carries
the process id, so processes writing the same file at once (tasks of one job) do not write into each other's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


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
