"""Batch-size warmup (train.batch_warmup): the first steps train on a quarter of the batch, then a half, then all."""

import copy

import pytest
import torch

from nextword.data.loader import TokenLoader
from nextword.training.batch import BatchWarmup, GlobalBatch, warmup_divisor
from nextword.training.budget import RunLength
from nextword.training.progress import Progress
from nextword.training.trainer import train

from test_loader import make_shards
from test_train import read_log, tiny  # noqa: F401  (tiny is a fixture)


def test_the_batch_grows_in_three_equal_stages_of_the_warmup():
    assert [warmup_divisor(step, 9) for step in range(12)] == [4, 4, 4, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert [warmup_divisor(step, 4) for step in range(5)] == [4, 4, 2, 1, 1]  # thirds of 4 steps: 2, 1, 1
    assert [warmup_divisor(step, 0) for step in range(3)] == [1, 1, 1]  # off


def test_a_smaller_batch_takes_fewer_micro_steps_where_it_accumulates_else_fewer_windows():
    accumulating = GlobalBatch(micro_batch=4, context=8, accumulation=8, ranks=2)
    assert [accumulating.divided(d).accumulation for d in (4, 2, 1)] == [2, 4, 8]
    assert {accumulating.divided(d).micro_batch for d in (4, 2, 1)} == {4}
    one_micro_step = GlobalBatch(micro_batch=8, context=8, accumulation=1, ranks=2)
    assert [one_micro_step.divided(d).micro_batch for d in (4, 2, 1)] == [2, 4, 8]
    assert GlobalBatch(micro_batch=2, context=8, accumulation=1, ranks=1).divided(4).micro_batch == 1  # never 0
    # Micro-steps that do not divide: fewer windows in the one micro-step left, as 2 ranks of 1 micro-step would.
    two_micro_steps = GlobalBatch(micro_batch=4, context=8, accumulation=2, ranks=1).divided(4)
    two_ranks = GlobalBatch(micro_batch=4, context=8, accumulation=1, ranks=2).divided(4)
    assert (two_micro_steps.accumulation, two_micro_steps.micro_batch) == (1, 2)
    assert two_micro_steps.tokens_per_step == two_ranks.tokens_per_step == 4 * 8 * 2 // 4
    three = GlobalBatch(micro_batch=4, context=8, accumulation=3, ranks=1).divided(2)
    assert (three.accumulation, three.micro_batch) == (2, 3)  # 6 of 12 windows, none more per micro-step than 4


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6, 0.9])
def test_a_token_count_takes_the_fewest_steps_that_train_it(fraction):
    warmup = BatchWarmup(GlobalBatch(micro_batch=16, context=64, accumulation=1, ranks=1), fraction)
    full = warmup.full.tokens_per_step
    for tokens in (10 * full, 1_000 * full + 17, 12_345 * full):
        steps = warmup.steps_for(tokens, at_least=True)
        assert warmup.tokens_in(steps - 1) < tokens <= warmup.tokens_in(steps)
        # The closed form: a fraction w of S steps, a third each at 1/4, 1/2 and 1 of the batch, trains
        # S·B·(1 − 5w/12) tokens.
        assert steps == pytest.approx(tokens / (full * (1 - 5 * fraction / 12)), abs=2)
        most = warmup.steps_for(tokens, at_least=False)  # a FLOPs count: never more than it
        assert warmup.tokens_in(most) <= tokens < warmup.tokens_in(most + 1)


def test_without_warmup_the_steps_of_a_count_are_as_before():
    batch = GlobalBatch(micro_batch=4, context=250, accumulation=1, ranks=1)
    for governs, limit in (("tokens", 1e6 + 1), ("flops", 3e9)):
        length = RunLength(governs, limit, flops_per_token=2_000.0)
        assert length.steps(1000, BatchWarmup(batch, 0.0)) == length.steps(1000)
    assert RunLength("tokens", 1e6).steps(1000, BatchWarmup(batch, 0.25)) == 1_117  # 1000 / (1 − 5/48), rounded up
    assert RunLength("steps", 300).steps(1000, BatchWarmup(batch, 0.25)) == 300  # a step count stays as given


def test_a_time_budget_trains_on_a_quarter_until_it_is_planned_then_by_the_plan():
    warmup = BatchWarmup(GlobalBatch(micro_batch=8, context=4, accumulation=1, ranks=1), 0.3)
    assert warmup.batch_at(Progress(step=5)).micro_batch == 2
    assert warmup.batch_at(Progress(step=5, planned_steps=100, batch_warmup_steps=30)).micro_batch == 2
    assert warmup.batch_at(Progress(step=15, planned_steps=100, batch_warmup_steps=30)).micro_batch == 4
    assert warmup.batch_at(Progress(step=15, planned_steps=200, batch_warmup_steps=30)).micro_batch == 4  # re-planned
    assert warmup.batch_at(Progress(step=30, planned_steps=100, batch_warmup_steps=30)).micro_batch == 8


def test_the_loader_moves_on_by_the_rows_taken(tmp_path):
    shards = make_shards(tmp_path)
    whole = TokenLoader(shards, batch_size=4, context=8, seed=3)
    in_parts = TokenLoader(shards, batch_size=4, context=8, seed=3)
    expected = torch.cat([whole.next_batch()[0] for _ in range(2)])
    parts = torch.cat([in_parts.next_batch(rows)[0] for rows in (1, 1, 2, 4)])
    assert torch.equal(parts, expected)  # no window skipped, none read twice
    assert in_parts.state_dict() == whole.state_dict()


def test_a_token_count_with_batch_warmup_trains_its_tokens_in_more_steps(tiny, tmp_path):
    tokens_per_step = tiny.train.micro_batch * tiny.model.context
    tiny.train.tokens, tiny.eval.every = str(30 * tokens_per_step), 1000
    without = copy.deepcopy(tiny)
    without.train.run_dir = str(tmp_path / "without")
    plain = train(without, progress=False)
    tiny.train.batch_warmup = 0.5
    summary = train(tiny, progress=False)

    assert plain["steps"] == 30 and plain["tokens"] == 30 * tokens_per_step
    assert summary["steps"] > plain["steps"]
    assert 30 * tokens_per_step <= summary["tokens"] < 31 * tokens_per_step
    records = read_log(tmp_path / "run", "train")
    assert records[-1]["tokens"] == summary["tokens"]
    # The train records name the tokens per step where they change: a quarter, a half, then the whole batch.
    changes = [(r["step"], r["tokens_per_step"]) for r in records if "tokens_per_step" in r]
    assert [tokens for _, tokens in changes] == [tokens_per_step // 4, tokens_per_step // 2, tokens_per_step]
    assert all("tokens_per_step" not in r for r in read_log(tmp_path / "without", "train"))


@pytest.mark.parametrize("batch", ["rows", "micro-steps"])
def test_resuming_inside_the_warmup_gives_the_same_losses_as_an_uninterrupted_run(tiny, tmp_path, batch):
    tiny.train.steps, tiny.train.batch_warmup, tiny.eval.every = 12, 0.5, 1000  # stages: steps 0-1, 2-3, 4-11
    if batch == "micro-steps":
        tiny.train.micro_batch, tiny.train.batch_tokens = 1, 4 * tiny.model.context  # 4 micro-steps of 1 window
    straight = copy.deepcopy(tiny)
    train(straight, progress=False)
    records = read_log(tmp_path / "run", "train")

    resumed = copy.deepcopy(tiny)
    resumed.train.run_dir = str(tmp_path / "resumed")
    assert train(resumed, progress=False, stop_after=3)["step"] == 3  # in the middle of the half-batch stage
    train(resumed, progress=False)
    records_resumed = read_log(tmp_path / "resumed", "train")

    full = 4 * tiny.model.context
    assert [r["tokens"] for r in records] == [r["tokens"] for r in records_resumed] == [
        full // 4, full // 2, full, 3 * full // 2, *(3 * full // 2 + k * full for k in range(1, 9))]
    assert [r["loss"] for r in records_resumed] == pytest.approx([r["loss"] for r in records], abs=1e-6)
