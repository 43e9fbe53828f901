"""A run's log: one JSON object per line in `log.jsonl`, appended, so a resumed run continues the same file.

Each record has a `kind` ("run", "plan", "train", "eval", "stop", "summary") and a wall-clock `time`.

Where the `tensorboard` package is installed, the same numbers also go to TensorBoard event files under the run's
`tensorboard/` folder (`tensorboard --logdir RUN/tensorboard`): training and validation scalars against the step
in `step/`, the losses against tokens seen in `tokens/`, and each evaluation's samples as text. Without it, the
log is JSONL only and the run record says so.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

# record field: TensorBoard tag. Training and validation loss share the "loss" section, so they sit side by side.
STEP_TAGS = {
    "train": {"loss": "loss/train", "lr": "train/lr", "grad_norm": "train/grad_norm",
              "tokens_per_s": "speed/tokens_per_s", "mfu": "speed/mfu"},
    "eval": {"val_loss": "loss/val", "val_bpb": "val/bits_per_byte", "val_ppl": "val/perplexity"},
}
# Against tokens seen as well: runs with different batch sizes compare fairly only on that axis.
TOKEN_TAGS = {
    "train": {"loss": "by_tokens/train_loss"},
    "eval": {"val_loss": "by_tokens/val_loss", "val_bpb": "by_tokens/val_bits_per_byte"},
}
FLUSH_SECONDS = 10  # a live `tensorboard --logdir` sees new points this soon (the library's default is 120)
# An event file's name: events.out.tfevents.SECOND.HOST.PID.COUNTER (tensorboard's event_file_writer).
EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")


class RunLog:
    """Appends records to `log.jsonl` and mirrors the numbers to TensorBoard where it is installed.

    TensorBoard's files open with the first record and close with the run's last one ("summary" or "stop");
    call `close()` (or use the log as a context manager) so that a run that ends any other way, such as by an
    exception, still gets its last points written.
    """

    def __init__(self, path: str | Path, *, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.tensorboard_dir = self.path.parent / "tensorboard"
        # A log written to the null device (as by the ranks of a distributed run that do not keep the log) has no
        # run folder to put TensorBoard files in.
        self._want_board = tensorboard and self.path != Path(os.devnull)
        self._board: TensorBoard | None = None

    def write(self, **record: Any) -> None:
        record.setdefault("time", time.time())
        if self._want_board and self._board is None:
            self._board = self._open_board(record)
        if record.get("kind") == "run":
            record["tensorboard"] = str(self.tensorboard_dir) if self._board else None
        line = (json.dumps(record) + "\n").encode("utf-8")
        with open(self.path, "ab+") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # the last line was cut short by a crash: start this record on its own
                    line = b"\n" + line
            f.write(line)
        if self._board is not None:
            self._board.write(record)
            if record.get("kind") in ("stop", "summary"):
                self.close()

    def close(self) -> None:
        """Write what TensorBoard still holds and close its files; a later `write` opens new ones."""
        if self._board is not None:
            self._board.close()
            self._board = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _open_board(self, first: dict[str, Any]) -> TensorBoard | None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra: JSONL only
            self._want_board = False
            return None
        return TensorBoard(self.tensorboard_dir, SummaryWriter, resumed=bool(first.get("resumed_from")))


class TensorBoard:
    """Two TensorBoard runs of one training run: `step/` (x = optimizer step) and `tokens/` (x = tokens seen).

    Each axis needs its own event files, because a resumed run hides what an interrupted one logged after its
    checkpoint with `purge_step`, which drops every point at or past that x in the whole file.
    """

    def __init__(self, folder: Path, writer_class: type, *, resumed: bool) -> None:
        self.folder, self.writer_class, self.resumed = folder, writer_class, resumed
        self.by_step: Any = None  # SummaryWriters, opened at their first point (where purge_step is known)
        self.by_tokens: Any = None

    def write(self, record: dict[str, Any]) -> None:
        kind, step, walltime = record.get("kind"), record.get("step"), record["time"]
        if kind == "run":
            start = record.get("resumed_from") or 0
            self._step_writer(start + 1).add_text("run", _markdown_table(record), global_step=start,
                                                  walltime=walltime)
        if kind not in ("train", "eval") or step is None:
            return
        for name, tag in STEP_TAGS[kind].items():
            if record.get(name) is not None:
                self._step_writer(step).add_scalar(tag, record[name], global_step=step, walltime=walltime)
        tokens = record.get("tokens")
        for name, tag in TOKEN_TAGS[kind].items():
            if record.get(name) is not None and tokens is not None:
                self._token_writer(tokens).add_scalar(tag, record[name], global_step=tokens, walltime=walltime)
        if kind == "eval":
            if record.get("samples"):
                self._step_writer(step).add_text("samples", _samples_markdown(record["samples"]), global_step=step,
                                                 walltime=walltime)
            self.flush()  # evaluations are rare and worth seeing at once

    def flush(self) -> None:
        for writer in (self.by_step, self.by_tokens):
            if writer is not None:
                writer.flush()

    def close(self) -> None:
        for writer in (self.by_step, self.by_tokens):
            if writer is not None:
                writer.close()

    def _step_writer(self, first_step: int) -> Any:
        if self.by_step is None:
            self.by_step = self._open("step", first_step)
        return self.by_step

    def _token_writer(self, first_tokens: int) -> Any:
        if self.by_tokens is None:
            self.by_tokens = self._open("tokens", first_tokens)
        return self.by_tokens

    def _open(self, axis: str, first_x: int) -> Any:
        # A resumed run's first point comes just after its checkpoint: points an interrupted run logged from there
        # on are hidden, so TensorBoard does not draw two lines over the same steps.
        folder = self.folder / axis
        purge = None
        if self.resumed:
            purge = first_x
            _wait_past_the_newest_event_file(folder)
        return self.writer_class(str(folder), purge_step=purge, flush_secs=FLUSH_SECONDS)


def _wait_past_the_newest_event_file(folder: Path) -> None:
    """Wait, for at most a second, until the clock has passed the second the newest event file was opened in.

    TensorBoard reads a folder's event files in the order of their names, compared as text: the second each was
    opened, then the host, the process id and a per-process counter ("...10" sorts before "...9"). A resumed run's
    file must be read after the interrupted run's, or its purge of the steps past the checkpoint comes first and
    hides nothing. Opened in a later second, it always sorts last; only a resume within the same second as the
    interrupted run's start (a program that trains twice in a row) ever waits.
    """
    seconds = [int(match.group(1)) for path in folder.glob("events.out.tfevents.*")
               if (match := EVENT_FILE.match(path.name))]
    delay = max(seconds, default=0) + 1 - time.time()
    if 0 < delay <= 1:
        time.sleep(delay)


def _samples_markdown(samples: list[dict[str, str]]) -> str:
    """Each sample as a code block (indented four spaces), so code and stray markdown in it show as typed."""
    blocks = []
    for sample in samples:
        text = sample.get("prompt", "") + sample.get("text", "")
        blocks.append("\n".join("    " + line for line in text.splitlines() or [""]))
    return "\n\n".join(blocks)


def _markdown_table(record: dict[str, Any]) -> str:
    # a "|" inside a value would end its table cell early
    rows = [f"| {key} | {str(value).replace('|', '/')} |" for key, value in record.items()
            if key not in ("kind", "time")]
    return "\n".join(["| field | value |", "|---|---|", *rows])


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a log.jsonl (a line cut short by a crash is left out)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def short_count(count: float, spec: str = ".3g") -> str:
    """A count of tokens as people write it: 3.38M, 20.5k, 768 (`spec` formats the number before the unit)."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:{spec}}{unit}"
    return f"{count:,.0f}"
