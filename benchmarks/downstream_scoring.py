"""Scoring downstream requests: nextword's harness (contexts shared by a question's choices read once into the KV
cache, batches of mixed lengths) against the plain way lm-eval's Hugging Face model takes (every context and
continuation whole, right-padded batches of 32, longest first), on the `small` preset's shape, untrained.

    .venv/bin/python benchmarks/downstream_scoring.py [--repeats 3] [--device cpu|cuda]

Two workloads of random token ids in the shape of two benchmarks: HellaSwag-like (a context of 60–120 tokens and
4 endings of 15–35 tokens, 100 questions) and LAMBADA-like (400 contexts of 50–150 tokens, 1–3 token last
words). Runs alternate; the table gives the median seconds, the forwards each needs, and the largest difference
between the two ways' log-likelihoods.
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch
import torch.nn.functional as F

from common import header, interleaved, markdown_table
from nextword.config import MODEL_PRESETS, ModelConfig
from nextword.model import GPT
from nextword.tools.harness import score_continuations

VOCAB = 8192
BATCH = 32


def workloads(seed: int = 0) -> dict[str, list[tuple[list[int], list[int]]]]:
    rng = random.Random(seed)

    def ids(low: int, high: int) -> list[int]:
        return [rng.randrange(VOCAB) for _ in range(rng.randint(low, high))]

    choices = []
    for _ in range(100):
        context = ids(60, 120)
        choices += [(context, ids(15, 35)) for _ in range(4)]
    last_words = [(ids(50, 150), ids(1, 3)) for _ in range(400)]
    return {"HellaSwag-like (400 requests)": choices, "LAMBADA-like (400 requests)": last_words}


@torch.no_grad()
def score_whole(model: GPT, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
    """lm-eval's Hugging Face way: each context + continuation through the model whole, right-padded batches."""
    window = model.cfg.context
    device = model.tok_emb.weight.device
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    scores = [0.0] * len(pairs)
    for start in range(0, len(order), BATCH):
        chunk = order[start:start + BATCH]
        inputs = [(pairs[i][0] + pairs[i][1])[-(window + 1):][:-1] for i in chunk]
        width = max(map(len, inputs))
        logits = model(torch.tensor([x + [0] * (width - len(x)) for x in inputs], device=device))
        logprobs = F.log_softmax(logits.float(), dim=-1)
        for row, i in enumerate(chunk):
            continuation = torch.tensor(pairs[i][1], device=device)
            end = len(inputs[row])
            scores[i] = float(logprobs[row, end - len(continuation):end].gather(1, continuation[:, None]).sum())
    return scores


def counting_forwards(model: GPT, run):
    """What `run()` returns, and how many forwards through `model` it made."""
    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        return run(), len(forwards)
    finally:
        hook.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MODEL_PRESETS["small"], vocab_size=VOCAB)).to(args.device).eval()
    print("\n".join(header("Downstream scoring", [f"model: small preset, vocabulary {VOCAB}, on {args.device}"])))
    rows = []
    for name, pairs in workloads().items():
        ours, harness_forwards = counting_forwards(model, lambda: score_continuations(model, pairs, BATCH))
        theirs, whole_forwards = counting_forwards(model, lambda: score_whole(model, pairs))
        difference = max(abs(a - b) for (a, _), b in zip(ours, theirs))
        timings = interleaved({"harness": lambda: score_continuations(model, pairs, BATCH),
                               "whole": lambda: score_whole(model, pairs)}, args.repeats)
        harness, whole = (statistics.median(timings[k].wall) for k in ("harness", "whole"))
        rows.append([name, f"{harness:.2f}", harness_forwards, f"{whole:.2f}", whole_forwards,
                     f"{whole / harness:.2f}×", f"{difference:.1e}"])
    print("\n".join(markdown_table(["workload", "harness s", "forwards", "whole texts s", "forwards", "speed-up",
                                    "largest |Δ log p|"], rows)))


if __name__ == "__main__":
    main()
