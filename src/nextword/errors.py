"""Errors a user can act on. Each message is one line naming the file or field, and the fix."""

from pathlib import Path


class NextwordError(Exception):
    """Base of every error the CLI prints as one line (exit status 2) instead of a traceback."""


class ConfigError(NextwordError, ValueError):
    """A config that cannot work."""


class DataError(NextwordError):
    """Input that cannot be used: nothing readable in the sources, a broken tokenizer or shard index."""


class CheckpointError(NextwordError):
    """A checkpoint that is missing, damaged, or belongs to another model or tokenizer."""


def make_folder(path: Path, what: str, flag: str) -> None:
    """Make `path` and its parents, or stop with one line naming it and `flag`, the option that chose it (a file of
    that name is in the way, or the place is read-only)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{path}: cannot make the {what} folder ({e.strerror or e}); give {flag} a folder you can "
                        "write to") from None
