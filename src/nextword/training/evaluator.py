"""Held-out loss and samples of the model being trained, and the evaluator that takes them at its interval.

Bits per byte = loss in nats × tokens ÷ (UTF-8 bytes × ln 2): unlike loss per token it does not depend on the
tokenizer, so runs with different vocabularies can be compared.
"""

from __future__ import annotations

import contextlib
import math
import re
import time

import torch

from nextword.config import EvalConfig, RunConfig
from nextword.data.loader import TokenLoader
from nextword.data.shards import TokenShards
from nextword.data.tokenizer import Tokenizer
from nextword.model.sampling import sample
from nextword.training.budget import EVALS_PER_RUN
from nextword.training.distributed import World
from nextword.training.progress import Progress
from nextword.training.runlog import RunLog

EVAL_WINDOWS_SEED = 0
SAMPLE_LINES = 6  # of each sample printed at an evaluation (all of it is in the log)
# Prompts taken from the data: the first few words of a few validation documents.
PROMPT_COUNT, PROMPT_WORDS, PROMPT_TOKENS = 3, 3, 64  # PROMPT_TOKENS: read of each document, enough for the words
DEFAULT_CORPUS_PROMPTS = ["def ", "import ", "The "]  # the standard library's code and its docstrings
# A prompt ends before the first control character other than tab and line breaks: form feeds (between pages of C
# sources, mail and old texts), vertical tabs, the separators U+001C to U+001F and C1 controls are real in the data,
# but a prompt is printed and read as text, and Python splits lines at most of them.
PROMPT_ENDS_AT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, split: TokenShards, batch_size: int, context: int, batches: int,
                  device: torch.device | str, world: World | None = None) -> dict[str, float]:
    """Mean next-token loss over `batches` batches of windows drawn across the whole split: a fixed draw, so
    every evaluation scores the same windows. Under torchrun each rank scores its share of those windows and the
    mean is taken over ranks (the same windows as one process when the world size divides `batches`)."""
    rank, size = (world.rank, world.size) if world else (0, 1)
    was_training = model.training
    model.eval()
    loader = TokenLoader(split, batch_size, context, rank=rank, world_size=size, shuffle=True,
                         seed=EVAL_WINDOWS_SEED, device=device)
    own_batches = max(1, min(batches, loader.num_windows // batch_size) // size)
    total = torch.zeros((), device=device, dtype=torch.float64)
    for _ in range(own_batches):
        x, y = loader.next_batch()
        loss = model(x, y)
        total += loss.double()
    model.train(was_training)
    mean = total / own_batches
    loss = float(world.mean(mean) if world else mean)
    return figures(loss, tokens_per_byte=split.num_tokens / max(1, split.num_bytes),
                    tokens=own_batches * size * batch_size * context)


def figures(loss: float, tokens_per_byte: float, tokens: int) -> dict[str, float]:
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": loss * tokens_per_byte / math.log(2),
            "tokens": tokens}


def prompts_from(split: TokenShards, tokenizer: Tokenizer, count: int = PROMPT_COUNT,
                 words: int = PROMPT_WORDS) -> list[str]:
    """The first `words` words (with the spaces and line breaks after them) of `count` documents spread evenly over
    `split`: prompts that begin as the data's own documents do, whatever its language or kind. Each is a real
    start of its document, cut short before a control character (PROMPT_ENDS_AT)."""
    documents = [(array, start) for array, starts in zip(split.arrays, split.doc_starts) for start in starts]
    chosen = documents[::max(1, len(documents) // count)][:count]
    prompts = []
    for array, start in chosen:
        head = [int(t) for t in array[start:start + PROMPT_TOKENS]]
        head = head[:head.index(tokenizer.eos_id)] if tokenizer.eos_id in head else head
        text, *after_control = PROMPT_ENDS_AT.split(tokenizer.decode(head[len(tokenizer.document_start):]), maxsplit=1)
        word_end = r"(?:\s+|\Z)" if after_control else r"\s+"  # a control character ends the word before it too
        prompt = re.match(rf"\s*(?:\S+{word_end}){{1,{words}}}", text)
        if prompt and prompt.group(0).strip():
            prompts.append(prompt.group(0))
    return prompts


def samples(model: torch.nn.Module, tokenizer: Tokenizer, cfg: EvalConfig, seed: int) -> list[dict[str, str]]:
    """A continuation of each fixed prompt, each with its own fixed seed, so samples from one evaluation to the
    next differ only because the model changed."""
    was_training = model.training
    model.eval()
    out = []
    # Eagerly, where the blocks are compiled (FSDP compiles them in place): the cache grows by a token at each step
    # of a sample, and a compiled block would compile again for every new length.
    with torch.compiler.set_stance("force_eager"):
        for index, prompt in enumerate(cfg.prompts):
            prompt_ids = tokenizer.document_start + tokenizer.encode(prompt)  # as every document begins in training
            ids = list(sample(model, prompt_ids, cfg.sample_tokens, temperature=cfg.temperature,
                              top_k=cfg.top_k, seed=seed + index, stop_id=tokenizer.eos_id))
            out.append({"prompt": prompt, "text": tokenizer.decode(ids)})
    model.train(was_training)
    return out


class Evaluator:
    """Evaluates the model during a run: validation loss and samples at step 0, every eval.every steps (by
    default EVALS_PER_RUN times over the planned steps) and at the end, each logged and printed."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, val_split: TokenShards, cfg: RunConfig, *,
                 device: torch.device, world: World, autocast: contextlib.AbstractContextManager, log: RunLog,
                 samples_on_every_rank: bool) -> None:
        self.model, self.tokenizer, self.val_split, self.cfg = model, tokenizer, val_split, cfg
        self.device, self.world, self.autocast, self.log = device, world, autocast, log
        # FSDP's forward is a collective, so there every rank draws the (same) samples; elsewhere rank 0 alone.
        self.draws_samples = world.is_main or samples_on_every_rank
        self.seconds = 0.0  # the longest evaluation yet, which the budget's plan counts on
        self.marks_taken: int | None = None  # quarter marks of the plan evaluated at (by default)

    def due(self, progress: Progress) -> bool:
        """Every eval.every steps or, by default, at each quarter mark of the plan (each 1/EVALS_PER_RUN of it);
        never in the last half interval: the run ends with an evaluation anyway. Asked once a step.

        A time budget re-plans as it trains, which moves the quarter marks: a shrinking plan can move one behind
        the step, a growing one can move a mark already evaluated at ahead of it. So the marks are counted: an
        evaluation is due at the first step past a mark beyond those taken."""
        planned, step = progress.planned_steps, progress.step
        if self.marks_taken is None:  # asked after this process's first step: a resumed run took the marks before it
            self.marks_taken = _marks_passed(step - 1, planned) if planned else 0
        if not planned:
            return False
        if self.cfg.eval.every:
            every = self.cfg.eval.every
            return step % every == 0 and step < planned - every // 2
        passed = _marks_passed(step, planned)
        if passed <= self.marks_taken or step >= planned - planned // (2 * EVALS_PER_RUN):
            return False
        self.marks_taken = passed
        return True

    def evaluate(self, progress: Progress) -> None:
        """Validation loss and samples at the current step, logged and printed."""
        cfg = self.cfg
        began = time.monotonic()
        with self.autocast:
            result = evaluate_loss(self.model, self.val_split, cfg.train.micro_batch, cfg.model.context,
                                   cfg.eval.batches, self.device, self.world)
            texts = samples(self.model, self.tokenizer, cfg.eval, seed=cfg.train.seed) if self.draws_samples else []
        self.log.write(kind="eval", step=progress.step, tokens=progress.tokens, val_loss=result["loss"],
                       val_ppl=result["ppl"], val_bpb=result["bpb"], samples=texts)
        _print_eval(progress.step, result, texts, self.tokenizer.vocab_size)
        self.seconds = max(self.seconds, time.monotonic() - began)


def _marks_passed(step: int, planned: int) -> int:
    """How many of the plan's quarter marks (each 1/EVALS_PER_RUN of it) `step` has reached."""
    return step * EVALS_PER_RUN // planned


def _print_eval(step: int, result: dict[str, float], texts: list[dict[str, str]], vocab_size: int) -> None:
    note = f" (an untrained model guesses uniformly: ln {vocab_size} = {math.log(vocab_size):.2f})" if step == 0 else ""
    print(f"\nstep {step:,}: validation loss {result['loss']:.3f} nats, perplexity {result['ppl']:.1f}, "
          f"{result['bpb']:.3f} bits per byte{note}")
    for drawn in texts:
        lines = (drawn["prompt"] + drawn["text"]).splitlines()[:SAMPLE_LINES] or [""]
        print("\n".join(f"  │ {line[:100]}" for line in lines))
