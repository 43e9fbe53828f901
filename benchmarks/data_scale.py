"""The whole clean path (read → filter → dedup → shards) on datatrove's local executor: speed at 1 and 2 workers,
and the peak memory of its largest process at two corpus sizes 8× apart.

The documents are made here, so anyone can rerun it: Wikipedia-like English articles of 12 to 30 sentences drawn
from the pydoc topics of the language reference, a fixed number per JSONL input. Every tenth document is an
exact copy of an earlier one (spaces and punctuation changed) and every tenth (offset by five) a near copy (1%
of its words replaced), usually from an earlier input, so the dedup has copies across inputs to find. The
default [clean] rules run (language id, Gopher repetition and quality).

Each measurement runs `clean` in a fresh process, which reports its wall time, the CPU seconds of itself and
every process under it, and the peak RSS of the largest of them (sampled from /proc: Linux only).

    .venv/bin/python benchmarks/data_scale.py                          # 5,000 and 40,000 documents
    .venv/bin/python benchmarks/data_scale.py --baseline /path/to/older/checkout/src

--baseline times another checkout's `clean` on the same corpus (its `workers=` API, from before the engine),
side by side in this run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def sentences() -> list[str]:
    """The prose sentences of the language reference's pydoc topics: at least six words, nearly all of them plain
    words (tables and code would fail the Gopher rules, which are meant to drop such text)."""
    from pydoc_data.topics import topics

    text = " ".join(" ".join(body.split()) for body in topics.values())
    word = re.compile(r"[A-Za-z][A-Za-z'-]*[.,;:]?")
    return [s for s in re.split(r"(?<=[.!?])\s+", text)
            if len(s.split()) >= 6 and sum(bool(word.fullmatch(w)) for w in s.split()) >= 0.95 * len(s.split())]


def exact_copy(text: str) -> str:
    return "  " + text.replace(".", "!")  # the same after normalisation (spaces and punctuation differ)


def near_copy(text: str, rng: random.Random) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, len(words) // 100)):
        words[i] = "changed"
    return " ".join(words)


def write_corpus(folder: Path, docs: int, docs_per_input: int, seed: int = 0) -> list[str]:
    """JSONL inputs holding `docs` documents in all, one in ten of them an exact copy and one in ten a near copy
    of an earlier document; the input paths."""
    rng = random.Random(seed)
    pool = sentences()
    folder.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    sources = []
    for start in range(0, docs, docs_per_input):
        path = folder / f"input_{start // docs_per_input:05d}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for n in range(start, min(start + docs_per_input, docs)):
                if n % 10 == 0 and made:
                    text = exact_copy(rng.choice(made))
                elif n % 10 == 5 and made:
                    text = near_copy(rng.choice(made), rng)
                else:
                    text = f"Article {n}. " + " ".join(rng.choices(pool, k=rng.randint(12, 30)))
                    made.append(text)
                f.write(json.dumps({"id": f"doc{n}", "text": text}) + "\n")
        sources.append(str(path))
    return sources


class ProcessTree:
    """The peak RSS of the largest process, and the CPU seconds of all, of this process and its descendants
    (datatrove's workers are forked from a server process, so getrusage's children figures miss them). Linux's
    /proc is read every 50 ms: VmHWM is a process's own peak, so a sample before it exits sees its largest size."""

    def __init__(self) -> None:
        self.peak_kb: dict[int, int] = {}
        self.cpu_ticks: dict[int, int] = {}
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while self.running:
            self.sample()
            time.sleep(0.05)

    def sample(self) -> None:
        parents = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                parents[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
            except (OSError, IndexError, ValueError):
                continue
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in parents.items():
            children.setdefault(ppid, []).append(pid)
        mine, todo = set(), [os.getpid()]
        while todo:
            pid = todo.pop()
            mine.add(pid)
            todo += children.get(pid, [])
        for pid in mine & parents.keys():
            self.cpu_ticks[pid] = max(self.cpu_ticks.get(pid, 0), parents[pid][1])
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
                self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), hwm)
            except (OSError, StopIteration):
                continue

    def stop(self) -> tuple[float, float]:
        """(peak RSS MB of the largest process, CPU seconds of all)."""
        self.running = False
        self.thread.join()
        self.sample()
        return max(self.peak_kb.values()) / 1024, sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")


def run_one(out: str, sources: list[str], workers: int) -> None:
    """Clean the sources in this process with `workers` at once, and print the figures as JSON (the child)."""
    from nextword.config import CleanConfig
    from nextword.data.clean import clean

    tree = ProcessTree()
    start = time.perf_counter()
    if "engine" in inspect.signature(clean).parameters:
        from nextword.config import EngineConfig

        stats = clean(sources, out, CleanConfig(), engine=EngineConfig(tasks=workers, workers=workers),
                      log=lambda line: None)
    else:  # a checkout from before the engine
        stats = clean(sources, out, CleanConfig(), workers=workers, log=lambda line: None)
    seconds = time.perf_counter() - start
    peak, cpu = tree.stop()
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak,
                      "docs_read": sum(p["docs_read"] for p in stats["inputs"]), "docs_final": stats["docs_final"],
                      "dropped": stats["dedup"]["dropped_by_reason"]}))


def measure(sources: list[str], out: Path, workers: int, src: str | None = None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    args = [sys.executable, __file__, "--run-one", str(out), "--workers", str(workers), "--sources", *sources]
    child = subprocess.run(args, check=True, capture_output=True, text=True, env=env)
    return json.loads(child.stdout.splitlines()[-1])


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch CPU capability " \
           f"{torch.backends.cpu.get_cpu_capability()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=5000, help="documents in the smaller corpus")
    parser.add_argument("--factor", type=int, default=8, help="how many times larger the second corpus is")
    parser.add_argument("--docs-per-input", type=int, default=1000, help="documents per JSONL input")
    parser.add_argument("--baseline", metavar="SRC", help="another checkout's src folder, timed on the same corpus")
    parser.add_argument("--run-one", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--sources", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_one(args.run_one, args.sources, args.workers)
        return
    import nextword

    print(f"# `nextword data clean` ({Path(nextword.__file__).parent}) on {machine()}, Python "
          f"{sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}")
    print(f"# command: {' '.join([sys.executable] + sys.argv)}")
    print("| code | docs | workers | kept | exact dropped | near dropped | wall s | docs/s | docs per CPU-s "
          "| peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for docs in (args.docs, args.docs * args.factor):
            sources = write_corpus(Path(tmp) / f"in{docs}", docs, args.docs_per_input)
            runs = [("this", None, 1), ("this", None, 2)]
            if args.baseline:
                runs.append(("baseline", args.baseline, 2))
            for name, src, workers in runs:
                r = measure(sources, Path(tmp) / f"out_{name}_{docs}_{workers}", workers, src)
                results[name, docs, workers] = r
                print(f"| {name} | {r['docs_read']} | {workers} | {r['docs_final']} | "
                      f"{r['dropped'].get('exact', 0)} | {r['dropped'].get('near', 0)} | {r['seconds']:.1f} | "
                      f"{r['docs_read'] / r['seconds']:.0f} | {r['docs_read'] / r['cpu_seconds']:.0f} | "
                      f"{r['peak_rss_mb']:.0f} |", flush=True)
    small, large = args.docs, args.docs * args.factor
    speed = {key: r["docs_read"] / r["seconds"] for key, r in results.items()}
    print(f"# 2 workers against 1: {speed['this', large, 2] / speed['this', large, 1]:.2f}x at {large} documents, "
          f"{speed['this', small, 2] / speed['this', small, 1]:.2f}x at {small}")
    print(f"# peak RSS at {large} against {small} documents (2 workers): "
          f"{results['this', large, 2]['peak_rss_mb'] / results['this', small, 2]['peak_rss_mb']:.2f}x")
    if args.baseline:
        print(f"# this against the baseline, 2 workers: {speed['this', large, 2] / speed['baseline', large, 2]:.2f}x "
              f"at {large} documents, {speed['this', small, 2] / speed['baseline', small, 2]:.2f}x at {small}")


if __name__ == "__main__":
    main()
