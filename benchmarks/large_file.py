"""`nextword prepare` of one large text file: its speed, and the peak memory of its largest process.

The file is written here, in the system's temporary folder, and removed at the end: English sentences of the
language reference's pydoc topics (as data_scale.py draws them), in one of three layouts, the three ways the
readers cut a large file:

    paragraphs   paragraphs of 2 to 8 sentences between blank lines (a book collection, enwik9): cut at blank lines
    stories      the same paragraphs, 1 to 4 to a story, each story followed by a line <|endoftext|> (TinyStories):
                 cut at data.doc_separator
    words        every word on one line, no punctuation (text8): cut at spaces

Each size runs `python -m nextword prepare` in a fresh process, with the default settings (a tokenizer of up to
8,192 tokens trained on the first 20 MB; the generated text's small vocabulary runs out of merges before that;
every core encoding). This process samples /proc every 50 ms for the peak RSS (VmHWM) of each process under it,
the encoding workers included, and reports the largest with its command. getrusage's RUSAGE_CHILDREN is printed
beside it as an upper bound only: Linux keeps a process's peak across exec, so it counts the size of this process
(torch imported for the header) at the fork, and it holds the largest of every child so far in this run.

    .venv/bin/python benchmarks/large_file.py                      # 1,000 MB, paragraphs
    .venv/bin/python benchmarks/large_file.py --mb 100 1000 --layout stories
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import header
from data_scale import ProcessTree, sentences

SEPARATOR = "<|endoftext|>"
WRITE_BYTES = 1 << 20  # text written at a time


def write_text_file(path: Path, size: int, layout: str, seed: int = 0) -> int:
    """Write about `size` bytes of text in `layout` to `path`; the bytes written."""
    rng = random.Random(seed)
    pool = sentences()
    written = 0
    with open(path, "w", encoding="utf-8") as file:
        while written < size:
            block = _block(rng, pool, layout)
            file.write(block)
            written += len(block.encode("utf-8"))
    return written


def _block(rng: random.Random, pool: list[str], layout: str) -> str:
    """About WRITE_BYTES of text in `layout`."""
    parts, size = [], 0
    while size < WRITE_BYTES:
        paragraph = " ".join(rng.choices(pool, k=rng.randint(2, 8)))
        if layout == "words":
            part = " ".join(word.strip(".,;:!?'\"()").lower() for word in paragraph.split()) + " "
        elif layout == "stories":
            story = "\n\n".join([paragraph] + [" ".join(rng.choices(pool, k=rng.randint(2, 8)))
                                               for _ in range(rng.randint(0, 3))])
            part = f"{story}\n{SEPARATOR}\n"
        else:
            part = paragraph + "\n\n"
        parts.append(part)
        size += len(part)
    return "".join(parts)


class NamedProcessTree(ProcessTree):
    """A ProcessTree that also keeps each process's command line, to say which one was the largest."""

    def __init__(self) -> None:
        self.commands: dict[int, str] = {}
        super().__init__()

    def sample(self) -> None:
        super().sample()
        for pid in self.peak_kb.keys() - self.commands.keys():
            try:
                self.commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
            except OSError:
                continue


def measure(path: Path, layout: str, work: Path) -> dict:
    """Prepare `path` in a fresh process; its wall time, the peak RSS of the largest process under this one and
    that process's command, and RUSAGE_CHILDREN's figure."""
    command = [sys.executable, "-m", "nextword", "prepare", "--source", str(path), "--data-dir", str(work / "data")]
    if layout == "stories":
        command += ["--doc-separator", SEPARATOR]
    env = {**os.environ, "NEXTWORD_CACHE": str(work / "cache")}
    tree = NamedProcessTree()
    started = time.perf_counter()
    child = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    tree.stop()
    if child.returncode:
        sys.exit(f"prepare failed:\n{child.stderr[-3000:]}")
    tree.peak_kb.pop(os.getpid(), None)  # this process only watches
    largest = max(tree.peak_kb, key=tree.peak_kb.get)
    summary = [line.strip() for line in child.stderr.splitlines()
               if line.strip().startswith(("documents", "tokens", "prepare: trained"))]
    return {"seconds": seconds, "peak_mb": tree.peak_kb[largest] / 1024, "processes": len(tree.peak_kb),
            "largest": tree.commands.get(largest, "?"),
            "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, nargs="+", default=[1000], help="file sizes in MB (10^6 bytes)")
    parser.add_argument("--layout", choices=("paragraphs", "stories", "words"), default="paragraphs")
    args = parser.parse_args()
    for line in header("nextword prepare of one large text file"):
        print(line, flush=True)
    print("| layout | MB | wall s | MB/s | peak RSS MB, largest process (/proc) | RUSAGE_CHILDREN MB (bound) |")
    print("|---|--:|--:|--:|--:|--:|", flush=True)
    with tempfile.TemporaryDirectory(prefix="nextword-large-file-") as tmp:
        for mb in args.mb:
            path = Path(tmp) / f"{args.layout}_{mb}mb.txt"
            size = write_text_file(path, mb * 10**6, args.layout)
            work = Path(tmp) / f"work_{mb}"
            r = measure(path, args.layout, work)
            path.unlink()
            subprocess.run(["rm", "-rf", str(work)], check=True)  # the shards of a 1 GB file take 400 MB of disk
            print(f"| {args.layout} | {size / 1e6:,.0f} | {r['seconds']:.1f} | {size / 1e6 / r['seconds']:.2f} | "
                  f"{r['peak_mb']:.0f} | {r['children_maxrss_mb']:.0f} |", flush=True)
            for line in r["summary"]:
                print(f"#   {line}", flush=True)
            print(f"#   largest process, of {r['processes']} watched: {r['largest']}", flush=True)

if __name__ == "__main__":
    main()
