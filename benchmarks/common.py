"""What every benchmark prints above its table, and the interleaved timing they share.

A number from a benchmark means little without the machine, library versions, date and command that gave it, so
each benchmark starts with `header(...)`. The machine is often shared, so rivals are timed in turns (A, B, A, B…)
and compared by their medians: a burst of load from another process then slows both alike.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nextword.training.machine import cpu_model, usable_cores


def header(title: str, extra: Sequence[str] = ()) -> list[str]:
    """Comment lines naming the benchmark, date, command, CPU, torch and threads (plus `extra` lines)."""
    now = datetime.datetime.now().astimezone()
    command = " ".join([os.path.relpath(sys.executable)] + sys.argv)
    lines = [
        f"# {title}, {now:%Y-%m-%d %H:%M %Z}",
        f"# command: {command}",
        f"# cpu: {cpu_model()}, {usable_cores()} usable cores, torch capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} torch threads",
        f"# torch {torch.__version__}, Python {sys.version.split()[0]}",
    ]
    return lines + [f"# {line}" for line in extra]


@dataclass
class Timings:
    """Seconds per call: by the wall clock, and of CPU time used by this process (all its threads). On a busy
    machine the wall clock also counts waiting for a core; the CPU time counts only the work (and spinning)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def interleaved(runs: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, Timings]:
    """Time each run `repeats` times, the runs taking turns, after `warmup` untimed turns."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    timings = {name: Timings() for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            timings[name].wall.append(time.perf_counter() - wall)
            timings[name].cpu.append(time.process_time() - cpu)
    return timings


@contextlib.contextmanager
def empty_nextword_cache() -> Iterator[None]:
    """Point nextword's per-machine cache at an empty folder: measurements such as the precision race then run
    afresh instead of reusing an earlier verdict, and a verdict timed on a busy machine is not kept for real runs."""
    previous = os.environ.get("NEXTWORD_CACHE")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["NEXTWORD_CACHE"] = folder
        try:
            yield
        finally:
            if previous is None:
                del os.environ["NEXTWORD_CACHE"]
            else:
                os.environ["NEXTWORD_CACHE"] = previous


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """The fastest and slowest time relative to the median, e.g. "-3%/+12%": how noisy the machine was."""
    mid = median(values)
    return f"{min(values) / mid - 1:+.0%}/{max(values) / mid - 1:+.0%}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(columns[i]), *(len(row[i]) for row in cells)) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                 for i, (v, w) in enumerate(zip(values, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return [line(columns), rule, *(line(row) for row in cells)]


class HFModel(nn.Module):
    """A transformers causal LM behind nextword's interface: forward(idx, targets) → the fp32 mean loss,
    and the same two AdamW parameter groups (matrices decay; norms, biases and embeddings do not)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        logits = self.hf(input_ids=idx, use_cache=False).logits
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    def optimizer_groups(self, weight_decay: float, decay_embeddings: bool) -> list[dict]:
        embeddings = {id(m.weight) for m in self.hf.modules() if isinstance(m, nn.Embedding)}
        decay, no_decay = [], []
        for p in self.parameters():
            is_matrix = p.dim() >= 2 and (decay_embeddings or id(p) not in embeddings)
            (decay if is_matrix else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
