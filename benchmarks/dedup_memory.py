"""Peak memory and speed of `nextword data clean`'s merge (dedup and shard writing) at two corpus sizes 8× apart.

The documents are made here, so anyone can rerun it: Wikipedia-like articles of 12 to 30 sentences drawn from the
pydoc topics of the language reference, a fixed number per JSONL input. Every tenth document is an exact copy of
an earlier one (upper case, punctuation changed) and every tenth (offset by five) a near copy (1% of its words
replaced), usually from an earlier input, so the dedup has copies across inputs to find. Stage one (`clean`, as
two tasks with the text rules off: only the dedup drops documents) writes the parts; then the merge runs alone in
a fresh process, which reports its own peak RSS (see `peak_rss_mb`) and its wall time. The peak after imports,
before merging, is shown beside it: what the merge itself adds is the difference.

    .venv/bin/python benchmarks/dedup_memory.py                     # 5,000 and 40,000 documents
    .venv/bin/python benchmarks/dedup_memory.py --docs 20000 --factor 8 --docs-per-input 2000

The merge is whichever `nextword` is imported, so `PYTHONPATH=OTHER_CHECKOUT/src` times another version on the
same kind of corpus.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sentences() -> list[str]:
    """The sentences of the language reference's pydoc topics, with at least six words each."""
    from pydoc_data.topics import topics

    text = " ".join(" ".join(body.split()) for body in topics.values())
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 6]


def exact_copy(text: str) -> str:
    return text.upper().replace(".", "!")  # the same after normalisation


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


def peak_rss_mb() -> float:
    """This process's peak resident set. Linux's VmHWM where there is one: getrusage's ru_maxrss keeps the
    largest size seen across exec, so a child started by a large parent would report at least the parent's size."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1024**2)


def merge_alone(out: str) -> None:
    """Run only the merge, in this process, and print its figures as JSON (the child's side)."""
    from nextword.data.clean import merge

    before = peak_rss_mb()
    start = time.perf_counter()
    stats = merge(out)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before,
                      "docs_in": stats["dedup"]["docs_in"], "dropped": stats["dedup"]["dropped_by_reason"]}))


def measure(folder: Path, docs: int, docs_per_input: int, workers: int) -> dict:
    from nextword.config import CleanConfig
    from nextword.data.clean import clean

    sources = write_corpus(folder / "inputs", docs, docs_per_input)
    out = folder / "out"
    for task in range(2):  # two tasks: stage one only, as on a cluster; the merge is timed alone below
        clean(sources, out, CleanConfig(text_rules=[]), workers=workers, task_index=task, num_tasks=2,
              log=lambda line: None)
    child = subprocess.run([sys.executable, __file__, "--merge-only", str(out)], check=True, capture_output=True,
                           text=True)
    return json.loads(child.stdout.splitlines()[-1]) | {"inputs": len(sources)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=5000, help="documents in the smaller corpus")
    parser.add_argument("--factor", type=int, default=8, help="how many times larger the second corpus is")
    parser.add_argument("--docs-per-input", type=int, default=1000, help="documents per JSONL input (part)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for stage one")
    parser.add_argument("--merge-only", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge_only:
        merge_alone(args.merge_only)
        return
    import nextword

    print(f"# merge of `nextword data clean` ({Path(nextword.__file__).parent}), Python {sys.version.split()[0]}")
    print(f"# command: {' '.join([sys.executable] + sys.argv)}")
    print("| docs | inputs | exact dropped | near dropped | merge s | docs/s | peak RSS MB | after imports MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for docs in (args.docs, args.docs * args.factor):
            r = measure(Path(tmp) / str(docs), docs, args.docs_per_input, args.workers)
            rows.append(r)
            print(f"| {r['docs_in']} | {r['inputs']} | {r['dropped'].get('exact', 0)} | "
                  f"{r['dropped'].get('near', 0)} | {r['seconds']:.1f} | {r['docs_in'] / r['seconds']:.0f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} |", flush=True)
    small, large = rows
    print(f"# peak RSS grew {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x for {args.factor}x the documents; "
          f"merge speed {large['docs_in'] / large['seconds'] / (small['docs_in'] / small['seconds']):.2f}x")


if __name__ == "__main__":
    main()
