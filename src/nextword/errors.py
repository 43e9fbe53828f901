"""Errors a user can act on. Each message is one line naming the file or field, and the fix."""


class NextwordError(Exception):
    """Base of every error the CLI prints as one line (exit status 2) instead of a traceback."""


class ConfigError(NextwordError, ValueError):
    """A config that cannot work."""


class DataError(NextwordError):
    """Input that cannot be used: nothing readable in the sources, a broken tokenizer or shard index."""


class CheckpointError(NextwordError):
    """A checkpoint that is missing, damaged, or belongs to another model or tokenizer."""
