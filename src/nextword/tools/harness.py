"""A nextword model as a language model of EleutherAI's lm-evaluation-harness, which runs the benchmark tasks
(HellaSwag, ARC, LAMBADA, …) on it. Importing this module needs the `lm-eval` package; tools/downstream.py says
which extra to install when it is missing.

Every task asks the model one of three things: the log-likelihood of a continuation after a context (multiple
choice and last-word tasks), the log-likelihood of a whole text (perplexity tasks), or text generated until a stop
sequence. The text is tokenized as lm-eval's Hugging Face model does it, so that the figures agree with lm-eval
run on `nextword export`'s directory:

  - a context begins with the tokenizer's beginning-of-document token in families that have one, as every
    document did in training (lm-eval's model adds it with add_bos_token=True), else with nothing; an empty
    context is the one token a document follows in training (the beginning token, else end-of-text);
  - context and continuation are encoded as one string, split where the context's own tokens end (lm-eval's
    causal rule, with the context's trailing spaces moved into the continuation);
  - a context and continuation longer than the model's window keep their last `context + 1` tokens.

A text scored whole is every one of its tokens, the first predicted from the token a document follows, in windows
of the model's context whose last reaches back to a whole window (lm-eval's rolling windows); a text that fits
one window scores what `nextword eval --text` gives. Generated text is greedy (unless the task asks to sample),
the model seeing its last `context` tokens at each step, and is cut before the task's first stop string.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from nextword.data.tokenizer import Tokenizer
from nextword.errors import DataError
from nextword.model import GPT
from nextword.model.kv_cache import KVCache
from nextword.model.sampling import sample

# Generated tokens per request when the task does not say (lm-eval's Hugging Face model uses the same).
DEFAULT_GENERATED_TOKENS = 256


class NextwordLM(TemplateLM):
    """lm-eval's view of a nextword model and its tokenizer (the model in eval mode, on its device)."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, batch_size: int = 32, progress: bool = False) -> None:
        super().__init__()
        self.model, self.nextword_tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.progress = progress
        self._device = model.tok_emb.weight.device

    @property
    def eot_token_id(self) -> int:
        return self.nextword_tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.nextword_tokenizer.before_text[0]

    @property
    def max_length(self) -> int:
        return self.model.cfg.context

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        start = [] if add_special_tokens is False else self.nextword_tokenizer.document_start
        return start + self.nextword_tokenizer.encode(string)

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.nextword_tokenizer.decode(ids)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=True)  # tokenizing is quick; scoring shows progress

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              **kwargs) -> list[tuple[float, bool]]:
        return score_continuations(self.model, [(context, continuation) for _, context, continuation in requests],
                                   self.batch_size, progress=self.progress)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (string,) in enumerate(request.args for request in requests):
            for window in utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string, add_special_tokens=False), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1):
                windows.append(utils.make_disjoint_window(window))
                owners.append(index)
        totals = [0.0] * len(requests)
        scores = score_continuations(self.model, windows, self.batch_size, progress=self.progress)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self._generate(context, dict(settings)) for context, settings in (r.args for r in requests)]

    def _generate(self, context: str, settings: dict) -> str:
        """Greedy tokens after `context` (sampled at the task's temperature where it asks for sampling), as text
        cut before the first of the task's stop strings."""
        until = settings.pop("until", None) or [self.tok_decode([self.eot_token_id])]
        until = [until] if isinstance(until, str) else list(until)
        max_tokens = int(settings.pop("max_gen_toks", DEFAULT_GENERATED_TOKENS))
        temperature = float(settings.get("temperature", 0.0)) if settings.get("do_sample") else 0.0
        prompt = self.tok_encode(context) or [self.prefix_token_id]
        ids: list[int] = []
        text = ""
        for token in sample(self.model, prompt, max_tokens, temperature=temperature, seed=0,
                            stop_id=self.eot_token_id):
            ids.append(token)
            text = self.tok_decode(ids)
            if any(stop in text for stop in until):
                break
        return _cut_at_first(text, until)


def _cut_at_first(text: str, stops: Iterable[str]) -> str:
    ends = [text.find(stop) for stop in stops if stop and stop in text]
    return text[:min(ends)] if ends else text


# ---- Scoring continuations ------------------------------------------------------------------------------------

@torch.no_grad()
def score_continuations(model: GPT, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 32,
                        progress: bool = False) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): the log-probability of the continuation's tokens after the
    context, summed, and whether each of them is the model's most likely next token.

    The context is cut from the left so that context and continuation fit the model's window (context + 1
    tokens: the last one is only predicted). Requests that share a context, as the choices of a multiple-choice
    question do, read it once into a KV cache, and up to `batch_size` continuations are scored in one forward.
    """
    window = model.cfg.context
    by_context: dict[tuple[int, ...], list[int]] = {}  # each distinct (cut) context: the requests that follow it
    for index, (context, continuation) in enumerate(pairs):
        if not context or not 0 < len(continuation) <= window:
            raise DataError(f"a request with {len(context)} context and {len(continuation)} continuation tokens: "
                            f"needs a context and 1 to {window} (the model's context) continuation tokens")
        by_context.setdefault(tuple(context[-(window + 1 - len(continuation)):]), []).append(index)
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    bar = tqdm(total=len(pairs), desc="scoring", unit="request", disable=not progress, leave=False)
    for batch in _batches(by_context, batch_size):
        indices = [index for context in batch for index in by_context[context]]
        owners = [row for row, context in enumerate(batch) for _ in by_context[context]]
        scores = _score_batch(model, batch, owners, [list(pairs[index][1]) for index in indices])
        for index, score in zip(indices, scores):
            results[index] = score
        bar.update(len(indices))
    bar.close()
    return results


def _batches(by_context: dict[tuple[int, ...], list[int]], batch_size: int) -> Iterator[list[tuple[int, ...]]]:
    """The contexts, longest first (so that contexts of a batch are of about one length), with at most
    `batch_size` continuations a batch unless one context alone has more."""
    batch: list[tuple[int, ...]] = []
    rows = 0
    for context in sorted(by_context, key=len, reverse=True):
        if batch and rows + len(by_context[context]) > batch_size:
            yield batch
            batch, rows = [], 0
        batch.append(context)
        rows += len(by_context[context])
    if batch:
        yield batch


def _score_batch(model: GPT, contexts: list[tuple[int, ...]], owners: list[int],
                 continuations: list[list[int]]) -> list[tuple[float, bool]]:
    """Score each continuation after its context, contexts[owners[i]], in two forwards through a KV cache.

    The first `shortest` tokens of every context (as many as the shortest has) fill the cache together. Each
    continuation then gets its own row of the cache and runs from there: the rest of its context and all of it
    but its last token, padded on the right, where the causal mask keeps the padding from the tokens before it.
    """
    device = model.tok_emb.weight.device
    shortest = min(map(len, contexts))
    rest = [list(contexts[owner][shortest:]) + continuation[:-1] for owner, continuation in zip(owners, continuations)]
    width = max(map(len, rest))
    cache = model.new_cache(len(contexts), max_len=shortest + width)
    owner_rows = torch.tensor(owners, device=device)
    # logits[row, k] predicts the token at position shortest + k of the row's context and continuation.
    logits = model(torch.tensor([c[:shortest] for c in contexts], device=device), cache=cache)[:, -1:]
    logits = logits.index_select(0, owner_rows)
    if width:
        _repeat_rows(cache, owner_rows)
        padded = torch.tensor([r + [0] * (width - len(r)) for r in rest], device=device)
        logits = torch.cat([logits, model(padded, cache=cache)], dim=1)
    logprobs = F.log_softmax(logits.float(), dim=-1)

    # Where each continuation's tokens are predicted, as a [rows, longest continuation] table; padding masked.
    longest = max(map(len, continuations))
    first = torch.tensor([len(contexts[owner]) - shortest for owner in owners], device=device)
    positions = (first[:, None] + torch.arange(longest, device=device)).clamp(max=logprobs.shape[1] - 1)
    targets = torch.tensor([c + [0] * (longest - len(c)) for c in continuations], device=device)
    real = torch.arange(longest, device=device) < torch.tensor(list(map(len, continuations)), device=device)[:, None]
    predicted = logprobs.gather(1, positions[..., None].expand(-1, -1, logprobs.shape[-1]))
    picked = predicted.gather(2, targets[..., None])[..., 0]
    totals = (picked * real).sum(dim=1)
    greedy = ((predicted.argmax(dim=-1) == targets) | ~real).all(dim=1)
    return list(zip(totals.tolist(), greedy.tolist()))


def _repeat_rows(cache: KVCache, rows: torch.Tensor) -> None:
    """Make the cache's row i a copy of its row rows[i], for every layer's keys and values."""
    cache.k = [k.index_select(0, rows) for k in cache.k]
    cache.v = [v.index_select(0, rows) for v in cache.v]
