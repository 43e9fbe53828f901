"""A run's config.toml holds strings from the user's own documents (the sample prompts) and paths: whatever
characters they hold, the file reads back as it was written, and a file an earlier version wrote with raw control
characters is still read."""

from __future__ import annotations

import tomllib
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextword import cli
from nextword.config import RunConfig, load, load_saved_run
from nextword.errors import ConfigError
from nextword.tools.report import read_history
from nextword.training.evaluator import PROMPT_ENDS_AT

CONTROL_CHARACTERS = "".join(map(chr, [*range(0x20), 0x7F, 0x85, 0x2028]))

# Any string a document can hold: every code point but the surrogates, control characters drawn often.
document_text = st.text(st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(CONTROL_CHARACTERS)),
                        max_size=40)


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(prompts=st.lists(document_text, max_size=4), source=document_text, run_dir=document_text)
def test_any_string_a_document_can_hold_round_trips_through_a_saved_config(tmp_path_factory, prompts, source,
                                                                           run_dir):
    cfg = RunConfig()
    cfg.eval.prompts, cfg.data.sources, cfg.train.run_dir = prompts, [source], run_dir
    path = tmp_path_factory.mktemp("config") / "config.toml"
    cfg.save(path)
    assert load(path) == cfg
    assert tomllib.loads(path.read_text(encoding="utf-8")) == cfg.to_dict()  # valid TOML to any reader, as written


# What the earlier writer made of eval.prompts = ["\x0cdef main", "a\x0bb\x1fc", "x\\\x1cy"]: it escaped only
# backslash, quote, newline, tab and carriage return.
EARLIER_FILE = '[model]\nvocab_size = 300\n\n[eval]\nprompts = ["\x0cdef main", "a\x0bb\x1fc", "x\\\\\x1cy"]\n'


def test_a_config_an_earlier_version_wrote_with_raw_control_characters_is_read_and_said_so(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(EARLIER_FILE, encoding="utf-8")
    (run_dir / "log.jsonl").write_text('{"kind": "run"}\n')
    assert load_saved_run(run_dir / "config.toml").eval.prompts == ["\x0cdef main", "a\x0bb\x1fc", "x\\\x1cy"]
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and str(run_dir / "config.toml") in note and "control characters" in note
    # The report reads it through the same loader: the ln V guide needs model.vocab_size.
    assert read_history(run_dir).vocab_size == 300


def test_a_config_with_raw_control_characters_outside_strings_is_still_refused(tmp_path):
    (tmp_path / "config.toml").write_text("[eval]\n\x0cprompts = []\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path / "config.toml")


def test_prompts_taken_from_the_data_are_real_starts_of_documents_without_control_characters():
    from nextword.data.shards import TokenShards
    from nextword.data.tokenizer import Tokenizer
    from nextword.training.evaluator import prompts_from

    documents = ["one two\x0cthree four five\n", "alpha\x0bbeta gamma delta\n", "\x1cfile separated words\n",
                 "plain words all the way\n"]
    tokenizer = Tokenizer.train(documents * 20, 300)
    ids, starts = [], []
    for text in documents:  # as a shard holds them: each document followed by end-of-text
        starts.append(len(ids))
        ids += [*tokenizer.encode(text), tokenizer.eos_id]
    split = SimpleNamespace(arrays=[ids], doc_starts=[starts])  # the two fields of TokenShards prompts_from reads
    prompts = prompts_from(split, tokenizer, count=4, words=3)
    # Cut before the form feed and the vertical tab; a document that begins with one gives no prompt.
    assert prompts == ["one two", "alpha", "plain words all "]


CONTROL_TEXT_WORDS = "page break section header value return data model token each step".split()


def control_character_corpus(folder):
    """Text as C sources, mail and old texts hold it: form feeds between pages, vertical tabs, escapes, separators."""
    folder.mkdir()
    separators = ["\x0c\n", "\x0b", "\x1c", "\x1d", "\x1e", "\x1f", "\x1b[0m", "\x7f", "\x85", "\x08", " "]
    for i in range(30):
        words = [CONTROL_TEXT_WORDS[(i * 5 + j * j) % len(CONTROL_TEXT_WORDS)] for j in range(300)]
        text = "".join(word + separators[(i + j) % len(separators)] for j, word in enumerate(words))
        (folder / f"doc_{i:02d}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


@pytest.mark.slow
def test_a_run_trained_on_text_full_of_control_characters_resumes_samples_evals_and_exports(tmp_path, monkeypatch,
                                                                                           capsys):
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    cfg = RunConfig()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context = 1, 32, 2, 32
    cfg.model.size = "fixed"
    cfg.data.sources, cfg.data.vocab_size = [str(control_character_corpus(tmp_path / "corpus"))], 300
    cfg.data.val_fraction, cfg.data.data_dir = 0.2, str(tmp_path / "data")
    cfg.train.micro_batch, cfg.train.steps, cfg.train.precision, cfg.train.compile = 4, 4, "fp32", "off"
    cfg.train.threads, cfg.eval.batches, cfg.eval.sample_tokens = 1, 2, 8
    cfg.save(tmp_path / "config.toml")
    run_dir = tmp_path / "run"

    assert cli.main(["train", "--config", str(tmp_path / "config.toml"), "--run-dir", str(run_dir),
                     "--stop-after", "2", "--quiet"]) == 0
    prompts = load(run_dir / "config.toml").eval.prompts
    assert prompts and not any(PROMPT_ENDS_AT.search(prompt) for prompt in prompts)
    # A prompt the user sets may hold any character: resuming with one writes it into the run's config.toml,
    # which every later command reads.
    own_prompt = "\x0c/* page two */\x0b"
    assert cli.main(["train", "--run-dir", str(run_dir), "--eval.prompts", own_prompt, "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert load(run_dir / "config.toml").eval.prompts == [own_prompt]

    assert cli.main(["sample", str(run_dir), "--prompt", own_prompt, "--max-tokens", "4", "--seed", "1"]) == 0
    assert cli.main(["eval", str(run_dir), "--batches", "2", "--json"]) == 0
    assert '"bpb"' in capsys.readouterr().out
    assert cli.main(["export", str(run_dir), "--hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert "control characters" not in capsys.readouterr().err  # written escaped: nothing needed repair
