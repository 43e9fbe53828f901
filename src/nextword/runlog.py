"""A run's log: one JSON object per line in `log.jsonl`, appended, so a resumed run continues the same file.

Each record has a `kind` ("run", "plan", "train", "eval", "stop", "summary") and a wall-clock `time`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RunLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, **record: Any) -> None:
        record.setdefault("time", time.time())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a log.jsonl (a line cut short by a crash is left out)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
