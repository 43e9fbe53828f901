"""What every reader yields and counts: `Document`, one unit of text with where it came from, and `SkipLog`,
what was left out and why. The readers (sources.py, code.py, web.py) all import these from here, so none of
them needs another to describe its output.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_SKIP_EXAMPLES = 20
NAMES_PER_REASON = 3  # file names shown per reason in the summary line


@dataclass
class Document:
    """One unit of text with where it came from."""

    id: str  # stable and unique, e.g. "stdlib:json/decoder.py", "docs/a.jsonl:17"
    text: str
    source: str  # "stdlib", "pydoc", "file", "jsonl", "parquet", "warc", "wet"
    meta: dict[str, Any] = field(default_factory=dict)  # provenance: path, line or row, url where known


def _reason_category(reason: str) -> str:
    """The reason without its specifics, so that "line 3: not JSON" and "line 9: not JSON" count together."""
    category = re.sub(r"^(line|row) \d+: ", "", reason)
    category = re.sub(r" after (line|row) \d+", "", category)
    return category.split(" (")[0]


class SkipLog:
    """Counts what the readers dropped, by reason, and keeps the first few examples with their files."""

    def __init__(self) -> None:
        self.total = 0
        self.by_reason: Counter[str] = Counter()
        self.examples: list[tuple[str, str]] = []
        self._names: dict[str, list[str]] = {}  # the first few files per reason, for the summary line
        self._more_names: set[str] = set()  # reasons that were seen in more files than the summary shows

    def skip(self, path: str | Path, reason: str) -> None:  # path: a local path or a URL
        category = _reason_category(reason)
        self.total += 1
        self.by_reason[category] += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append((str(path), reason))
        names = self._names.setdefault(category, [])
        name = "/".join(Path(path).parts[-2:]) if len(Path(path).parts) > 2 else str(path)
        if name not in names:
            if len(names) < NAMES_PER_REASON:
                names.append(name)
            else:
                self._more_names.add(category)

    def unreadable(self, path: str | Path, error: OSError) -> None:
        """Count a file that could not be read, with the system's reason."""
        self.skip(path, f"unreadable ({error.strerror or error})")

    def summary_lines(self) -> list[str]:
        """e.g. ["skipped 3 files or records: 2 not valid UTF-8 (a.txt, b.txt), 1 empty (c.txt)"]; [] if none."""
        if not self.total:
            return []
        parts = []
        for category, count in self.by_reason.most_common():
            names = self._names[category]
            more = ", …" if category in self._more_names else ""
            parts.append(f"{count} {category} ({', '.join(names)}{more})")
        return [f"skipped {self.total} files or records: " + ", ".join(parts)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_reason": dict(self.by_reason),
            "examples": [{"path": path, "reason": reason} for path, reason in self.examples],
        }
