"""Words as FineWeb's quality rules count them: punctuation marks are words of their own.

FineWeb's rules (datatrove's Gopher and FineWeb filters) count words with spaCy's English tokenizer
(datatrove/utils/word_tokenizers.py, SpaCyTokenizer), which makes most punctuation a word of its own: "Hello,
world." is four words, two of them without a letter, and the Gopher rules count them so (the share of words with
a letter, hashes per word, repeated n-grams). `split_words` follows the parts of that tokenizer which decide these
counts (spacy/lang/punctuation.py and spaCy's English tokenizer exceptions), without spaCy and about 25 times
faster:
- marks that open a word are split off its start one by one, and marks that close it off its end; a run of
  periods ("...") is one word, as are "''" and the emoticons that code is full of ("):" after "def f(x");
  "%", "+" and currency signs are split off the end of a number ("10%"), while "+" stays on the start of one
  ("+1") and an apostrophe on "'s", "'d" and "'em";
- a final period is split off after a lower-case letter, a digit, "%", "-", "+" or two capitals only, so "NaN."
  and "I/O." keep theirs, as do abbreviations made of single letters ("e.g.", "U.S.", "x.");
- hyphens, dashes and "/ : = < >" between a letter or digit and a letter split a word ("well-known" is three
  words), as do "," between letters, "." between a lower-case and an upper-case letter, and "- + * ^" between
  digits ("iso-8859-1" is five words);
- "'s" ends a word as a word of its own, as do "'re", "'ve", "'ll", "'d", "'m" and "n't" after a letter, and
  contractions written without an apostrophe are split too ("cannot", "dont", "id");
- URLs and what looks like a host or file name ("example.com", "setup.py", "os.path.join"), and the
  abbreviations spaCy knows ("Mr.", "Inc.", "Jan.", "and/or"), stay whole.
What is left out is rare in text: most emoticons, symbols such as box-drawing characters, "'ll've".
"""

from __future__ import annotations

import re
from functools import lru_cache

OPENING_MARKS = "!\"#$%&'()*+,:;<=>?[]_`{}«»“”‘’„…—–·¡¿‚〈⟦〉⟧´§£¥€₹©®™°"
CLOSING_MARKS = "!\"#&'()*,.:;<>?[]_`{}«»“”‘’„…—–·¡¿‚〈⟦〉⟧´©®™°"
NUMBER_SUFFIXES = "%+$£¥€₹"
APOSTROPHES = ("'", "’")
APOSTROPHE_WORDS = frozenset(["s", "S", "d", "ll", "re", "em", "bout", "nuff", "cause", "Cause", "cos", "Cos", "coz",
                              "Coz", "cuz", "Cuz"])  # "'s", "'em", "'cause": words that begin with an apostrophe
MARKS = re.compile(r"\.{2,}|''|\):|:\)|\(:|:\(|\[:|:\]|.", re.DOTALL)  # "..." is one word, as are emoticons
INFIX_CHARACTERS = frozenset(".…-–—~:<>=/,+*^")
INFIX = re.compile(r"(\.{2,}|…|(?<=[^\W_])(?:-{1,3}|[–—~:<>=/])(?=[^\W\d_])|(?<=[^\W\d_]),(?=[^\W\d_])"
                   r"|(?<=[a-z])\.(?=[A-Z])|(?<=[0-9])[-+*^](?=[0-9-]))")
CONTRACTION = re.compile(r"(?<=.)(?=['’]s$)|(?<=[^\W\d_])(?=(?:['’](?:re|ve|ll|d|m)|n['’]t)$)", re.IGNORECASE)
ABBREVIATION = re.compile(r"(?:[^\W\d_]\.)+")
URL = re.compile(r"[\w+.-]{2,}://\S+|(?:[^\W_](?:[\w-]{0,62}[^\W_])?\.)+[a-z]{2,63}(?::\d{2,5})?(?:[/?#]\S*)?")
# spaCy's English exceptions that keep marks inside one word.
WHOLE_WORDS = frozenset("""and/or w/o vs. co. Ph.D. Mr. Mrs. Ms. Messrs. Dr. Prof. Rev. Gen. Gov. Sen. Rep. Adm. Jr. St.
    Mt. Inc. Ltd. Co. Corp. Bros. Jan. Feb. Mar. Apr. Jun. Jul. Aug. Sep. Sept. Oct. Nov. Dec. Ak. Ala. Ariz. Ark.
    Calif. Colo. Conn. Del. Fla. Ga. Ia. Id. Ill. Ind. Kan. Kans. Ky. La. Md. Mass. Mich. Minn. Miss. Mo. Mont. Neb.
    Nebr. Nev. Okla. Ore. Pa. Tenn. Va. Wash. Wis.""".split())


def _bare_contractions() -> dict[str, tuple[str, ...]]:
    """Contractions written without an apostrophe, split as spaCy's English exceptions split them: "dont" is "do"
    and "nt", "id" is "i" and "d", "cannot" is "can" and "not"; words such as "ill", "shed" and "well" stay whole."""
    forms = [("can", "not"), ("gon", "na"), ("got", "ta"), ("i", "m"), ("i", "m", "a")]
    for pronoun in ("i", "you", "he", "she", "it", "we", "they"):
        forms += [(pronoun, "ll"), (pronoun, "ll", "ve"), (pronoun, "d"), (pronoun, "d", "ve")]
    forms += [(pronoun, "ve") for pronoun in ("i", "you", "we", "they")]
    forms += [(pronoun, "re") for pronoun in ("you", "we", "they")] + [("he", "s"), ("she", "s")]
    for word in ("who", "what", "when", "where", "why", "how", "there", "that", "this", "these", "those"):
        forms += [(word, "d"), (word, "d", "ve"), (word, "ll"), (word, "ll", "ve")]
        forms += [(word, "s")] if word not in ("these", "those") else []
        forms += [(word, "re"), (word, "ve")] if word not in ("that", "this") else []
    forms += [(verb, "nt") for verb in ("ai", "are", "dare", "has", "have", "is", "was", "were")]
    for verb in ("ca", "could", "did", "does", "do", "had", "may", "might", "must", "need", "ought", "sha", "should",
                 "wo", "would"):
        forms += [(verb, "nt"), (verb, "nt", "ve")]
    forms += [(verb, "ve") for verb in ("could", "might", "must", "should", "would", "not")]
    words = {"".join(parts): parts for parts in forms
             if "".join(parts) not in ("ill", "hell", "shell", "shed", "well", "were", "whore")}
    capitalised = {word.capitalize(): (parts[0].capitalize(), *parts[1:]) for word, parts in words.items()}
    return words | capitalised | {"yall": ("y", "all")}


BARE_CONTRACTIONS = _bare_contractions()


@lru_cache(maxsize=4)
def words_of(text: str) -> tuple[str, ...]:
    """`split_words`, cached: the Gopher rules and the FineWeb rule all count the words of the same document."""
    return tuple(split_words(text))


def split_words(text: str) -> list[str]:
    """The words of `text` as FineWeb's rules count them, punctuation marks included."""
    words: list[str] = []
    for chunk in text.split():
        if chunk.isalnum() and chunk not in BARE_CONTRACTIONS:
            words.append(chunk)
        else:
            words.extend(_split_chunk(chunk))
    return words


@lru_cache(maxsize=1 << 16)
def _split_chunk(chunk: str) -> tuple[str, ...]:
    """The words of one whitespace-separated chunk; cached, since pages repeat "the," and "it." a lot."""
    rest = chunk.lstrip(OPENING_MARKS)
    # Some marks stay on the word after them: "+" on a number, an apostrophe on "'s" and "'em".
    start = len(chunk) - len(rest)
    mark_before = chunk[start - 1] if start else ""
    if (mark_before == "+" and rest[:1].isdigit()) or \
            (mark_before in APOSTROPHES and rest.rstrip(CLOSING_MARKS) in APOSTROPHE_WORDS):
        rest = mark_before + rest
    opening = MARKS.findall(chunk[:len(chunk) - len(rest)])
    core = rest.rstrip(CLOSING_MARKS)
    if not core:
        return tuple(opening + MARKS.findall(rest))
    closing = rest[len(core):]
    if closing.startswith(".") and not closing.startswith("..") and _keeps_final_period(core):
        core, closing = core + ".", closing[1:]
    while len(core) > 1 and core[-1] in NUMBER_SUFFIXES and core[-2].isdigit():
        core, closing = core[:-1], core[-1] + closing
    return tuple(opening + _split_core(core) + MARKS.findall(closing))


def _keeps_final_period(core: str) -> bool:
    last = core[-1]
    splits = last.islower() or last.isdigit() or last in "%²-+" or (last.isupper() and core[-2:-1].isupper())
    return not splits or core + "." in WHOLE_WORDS or bool(ABBREVIATION.fullmatch(core + "."))


def _split_core(core: str) -> list[str]:
    """A chunk without its opening and closing marks: split at infixes and before contractions."""
    if core in WHOLE_WORDS or URL.fullmatch(core):
        return [core]
    if core in BARE_CONTRACTIONS:
        return list(BARE_CONTRACTIONS[core])
    pieces = [core] if INFIX_CHARACTERS.isdisjoint(core) else [piece for piece in INFIX.split(core) if piece]
    if "'" in pieces[-1] or "’" in pieces[-1]:
        pieces[-1:] = [piece for piece in CONTRACTION.split(pieces[-1]) if piece]
    return pieces
