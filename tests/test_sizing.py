"""A model sized to its budget: the ladder, the rule, the data cap, what fixes a size, and a run that is sized."""

from __future__ import annotations

import copy
import json
import math

import pytest

from nextword import cli
from nextword.config import ModelConfig, RunConfig, apply_overrides, from_dict, load_saved_run, model_preset
from nextword.model import GPT
from nextword.training import sizing
from nextword.training.trainer import train

from test_train import make_corpus

BASE = ModelConfig(vocab_size=8192)


def test_the_ladder_widens_with_depth_and_counts_as_the_network_does():
    for n in (1, 3, 6):
        rung = sizing.rung(n, BASE)
        assert (rung.model.n_layers, rung.model.d_model, rung.model.head_dim) == (n, 64 * n, 64)
        model = GPT(rung.model)
        assert rung.weights == model.matmul_weights() and rung.flops_per_token == model.flops_per_token()
    assert sizing.rung(4, BASE).model.d_model == RunConfig().model.d_model  # the default model is a rung


def test_more_compute_never_chooses_a_smaller_model_and_the_choice_is_near_the_rule():
    plenty = 10**12  # tokens: no data cap
    layers = [sizing.size_for_compute(flops, BASE, plenty).rung.model.n_layers for flops in
              (1e12, 1e13, 1e14, 1e15, 1e16, 1e17)]
    assert layers == sorted(layers) and layers[0] < layers[-1]
    for flops in (1e14, 1e16):
        choice = sizing.size_for_compute(flops, BASE, plenty)
        neighbours = [sizing.rung(n, BASE).weights for n in (choice.rung.model.n_layers - 1,
                                                             choice.rung.model.n_layers + 1)]
        distance = abs(math.log(choice.rung.weights / choice.optimal_weights))
        assert all(distance <= abs(math.log(n / choice.optimal_weights)) for n in neighbours)
        assert choice.tokens == pytest.approx(flops / choice.rung.flops_per_token)


def test_data_that_would_be_read_too_often_moves_the_choice_up_the_ladder():
    flops = 1e15
    free = sizing.size_for_compute(flops, BASE, 10**12)
    scarce_tokens = int(free.tokens / (2 * sizing.MAX_EPOCHS))  # the free choice would read it 8 times
    scarce = sizing.size_for_compute(flops, BASE, scarce_tokens)
    assert scarce.grown_for_data and not free.grown_for_data
    assert scarce.rung.model.n_layers > free.rung.model.n_layers
    assert scarce.epochs <= sizing.MAX_EPOCHS
    assert "read fewer times" in scarce.describe() and f"{scarce.epochs:.1f} reads" in scarce.describe()
    # Data far too small for the compute: the model grows only so far, and the data is read more often.
    tiny = sizing.size_for_compute(flops, BASE, 1000)
    assert tiny.rung.weights <= sizing.MAX_GROWTH * tiny.optimal_weights < sizing.rung(
        tiny.rung.model.n_layers + 1, BASE).weights
    assert tiny.epochs > sizing.MAX_EPOCHS


def test_a_size_is_fixed_by_naming_a_shape_or_a_preset_and_not_otherwise():
    assert RunConfig().model.size == "budget"
    assert apply_overrides(RunConfig(), {"train.lr": "1e-3"}).model.size == "budget"
    assert apply_overrides(RunConfig(), {"model.n_layers": "6"}).model.size == "fixed"
    assert apply_overrides(RunConfig(), {"model.d_model": "384", "model.size": "budget"}).model.size == "budget"
    assert model_preset("small").size == "fixed"
    assert from_dict({"model": {"n_heads": 8}}).model.size == "fixed"
    assert from_dict({"model": {"qk_norm": True}}).model.size == "budget"
    # A run directory's config.toml from before the field existed names its shape: it stays that size.
    assert from_dict({"model": {"n_layers": 4, "d_model": 256, "n_heads": 4}}).model.size == "fixed"


def test_size_must_be_one_of_its_choices():
    with pytest.raises(Exception, match="model.size"):
        apply_overrides(RunConfig(), {"model.size": "huge"}).validate()


@pytest.fixture
def budgeted(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    corpus = make_corpus(tmp_path / "corpus")
    cfg = RunConfig()
    cfg.model.context = 32
    cfg.data.sources, cfg.data.vocab_size, cfg.data.val_fraction = [str(corpus)], 300, 0.2
    cfg.data.data_dir = str(tmp_path / "data")
    cfg.train.run_dir, cfg.train.micro_batch, cfg.train.budget = str(tmp_path / "run"), 4, "20s"
    cfg.train.precision, cfg.train.compile, cfg.train.threads = "fp32", "off", 1
    cfg.eval.batches, cfg.eval.sample_tokens, cfg.eval.prompts, cfg.eval.every = 2, 8, ["def "], 1000
    return cfg


def test_a_budgeted_run_that_names_no_size_is_sized_saves_it_and_resumes_at_it(budgeted, tmp_path, monkeypatch,
                                                                                capsys):
    chosen = {}

    def small_rung(flops, base, train_tokens):  # the rule at work, but kept to a rung a test trains in seconds
        chosen["flops"], chosen["train_tokens"] = flops, train_tokens
        return sizing.SizeChoice(sizing.rung(1, base), flops, 1.0, 1.0, 0.0, False)

    monkeypatch.setattr(sizing, "size_for_compute", small_rung)
    train(copy.deepcopy(budgeted), progress=False, stop_after=12)
    out = capsys.readouterr().out
    assert "model: sized to the budget: 1 layer of width 64" in out
    assert chosen["flops"] > 0 and chosen["train_tokens"] > 0
    saved = load_saved_run(tmp_path / "run" / "config.toml").model
    assert (saved.n_layers, saved.d_model, saved.n_heads, saved.size) == (1, 64, 1, "fixed")

    # Resumed under another budget, still naming no size, it keeps the size it began with and is not sized again.
    chosen.clear()
    budgeted.train.budget = "1h"
    assert budgeted.model.size == "budget"
    train(budgeted, progress=False, stop_after=14)
    assert not chosen and budgeted.model.n_layers == 1
    run = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["params"] for r in run if r["kind"] == "run"][0] == [r["params"] for r in run if r["kind"] == "run"][-1]


def test_a_budgeted_run_prints_how_many_times_it_will_read_its_data(budgeted, capsys):
    budgeted.model.size = "fixed"
    budgeted.model.n_layers, budgeted.model.d_model, budgeted.model.n_heads = 1, 32, 2
    budgeted.train.budget = "15s"
    train(budgeted, progress=False)
    out = capsys.readouterr().out
    assert "model: sized" not in out
    assert "steps fit in the budget" in out and "reads of the training split" in out


def test_a_step_count_is_not_sized_and_says_its_reads_up_front(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    corpus = make_corpus(tmp_path / "corpus")
    code = cli.main(["train", "--source", str(corpus), "--run-dir", str(tmp_path / "run"), "--steps", "3",
                     "--model.context", "32", "--data.vocab_size", "300", "--train.micro_batch", "2",
                     "--precision", "fp32", "--quiet", "--eval.batches", "1", "--eval.sample_tokens", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "sized to the budget" not in out and "reads of the training split" in out
    assert load_saved_run(tmp_path / "run" / "config.toml").model.n_layers == RunConfig().model.n_layers
