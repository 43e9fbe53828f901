"""Encoding throughput on the default corpus: one worker, every worker, and `tokenizers`' own thread pool.

    .venv/bin/python benchmarks/tokenize_throughput.py [--vocab-size 8192] [--tokenizer tokenizer.json] [--repeats 3]

The corpus is read into memory first, so only encoding is timed. Each row is the best of --repeats runs;
MB/s and tokens/s are from the wall clock.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import time

import torch

from nextword.data.prepare import encode_in_order, text_chunks
from nextword.data.sources import SkipLog, default_corpus
from nextword.data.tokenizer import Tokenizer


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the pool's workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def best_time(run, repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the fastest of `repeats` runs. On a shared machine the CPU time shows
    the work done even when other processes slow the wall clock."""
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), cpu_seconds()
        run()
        times.append((time.perf_counter() - wall, cpu_seconds() - cpu))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--tokenizer", help="a tokenizer.json to use instead of training one on the corpus")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    texts = [d.text for d in default_corpus(SkipLog())]
    corpus_bytes = sum(len(t.encode("utf-8")) for t in texts)
    tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else Tokenizer.train(texts, args.vocab_size)
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    cores = len(os.sched_getaffinity(0))
    labelled = [("train", t) for t in texts]

    def pool(workers: int):
        return lambda: sum(1 for _ in encode_in_order(text_chunks(labelled), tokenizer, workers))

    def library_threads():
        for chunk in text_chunks(labelled):
            tokenizer.encode_batch([text for _, text in chunk])

    rows = [("process pool, 1 worker", pool(1)), (f"process pool, {cores} workers", pool(cores)),
            (f"tokenizers encode_batch, {cores} threads", library_threads)]

    print(f"# tokenize benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"# cpu: {cpu_model()}, {cores} cores, torch capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"# corpus: default (Python {platform.python_version()} stdlib), {len(texts)} documents, "
          f"{corpus_bytes / 1e6:.1f} MB, {tokens:,} tokens; tokenizer vocab {tokenizer.vocab_size:,}; "
          f"best of {args.repeats}")
    print()
    print(f"| {'encoder':<36} | {'wall s':>7} | {'CPU s':>6} | {'MB/s':>6} | {'tokens/s':>10} |")
    print(f"|{'-' * 38}|{'-' * 8}:|{'-' * 7}:|{'-' * 7}:|{'-' * 11}:|")
    for name, run in rows:
        wall, cpu = best_time(run, args.repeats)
        print(f"| {name:<36} | {wall:>7.2f} | {cpu:>6.2f} | {corpus_bytes / 1e6 / wall:>6.2f} | "
              f"{tokens / wall:>10,.0f} |")


if __name__ == "__main__":
    main()
