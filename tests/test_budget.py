import pytest

from nextword.training.budget import SAFETY_MARGIN, BudgetPlanner, TimeBudget
from nextword.training.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def planner(budget=100.0, clock=None):
    return BudgetPlanner(deadline=budget, budget=budget, decay_frac=0.2, clock=clock or Clock())


def test_the_plan_fills_the_budget_after_evaluations_saves_and_margin():
    p = planner()
    steps = p.plan(step=0, step_seconds=0.1, eval_seconds=2.0, ckpt_seconds=1.0)
    left = 100 - SAFETY_MARGIN * 100 - 4 * 2.0 - 1.0  # four evaluations to come, one save
    assert steps == int(left / 0.1)


def test_a_slower_machine_replans_fewer_steps_and_a_steady_one_keeps_its_plan():
    clock = Clock()
    p = planner(clock=clock)
    planned = p.plan(0, 0.1, 0.0, 0.0)
    clock.now = 10.0
    assert p.revise(100, planned, 0.1, 0.0, 0.0) is None  # on time: the plan stands
    faster = p.revise(100, planned, 0.09, 0.0, 0.0)  # 10% faster before annealing: more steps fit
    assert faster is not None and faster > planned
    slightly_slower = p.revise(100, planned, 0.11, 0.0, 0.0)  # within 20%, but it would overrun: shrink
    assert slightly_slower is not None and slightly_slower < planned
    revised = p.revise(100, planned, 0.2, 0.0, 0.0)
    assert revised is not None and 100 < revised < planned
    assert revised == pytest.approx(100 + (100 - 3 - 10) / 0.2, abs=1)


def test_while_annealing_the_plan_only_shrinks():
    clock = Clock()
    p = planner(clock=clock)
    planned = p.plan(0, 0.1, 0.0, 0.0)
    clock.now = 85.0
    step = int(planned * 0.9)  # in the last 20%: the learning rate is annealing
    assert p.revise(step, planned, 0.05, 0.0, 0.0) is None  # faster: finish as planned, early
    shrunk = p.revise(step, planned, 0.5, 0.0, 0.0)  # much slower: would overrun
    assert shrunk is not None and step < shrunk < planned


class TwoRanks:
    """One rank of a two-process job whose broadcasts are recorded: rank 0 computes each decision, rank 1 only
    receives it, as World.from_main does under torchrun."""

    def __init__(self, rank: int, decisions: list) -> None:
        self.rank, self.size, self.decisions, self.calls = rank, 2, decisions, 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def from_main(self, compute, *args):
        if self.is_main:
            self.decisions.append(compute(*args))
        self.calls += 1
        return self.decisions[self.calls - 1]


class NoLog:
    def write(self, **record) -> None:
        pass


def test_every_rank_takes_part_in_each_revision_of_a_budgets_plan():
    """A revision is a broadcast from rank 0: a rank that skipped one would leave rank 0 waiting in it for good."""
    decisions: list = []
    ranks = [TwoRanks(rank, decisions) for rank in (0, 1)]
    budgets = [TimeBudget(planner(budget=1000.0), world, NoLog()) for world in ranks]
    runs = [Progress(), Progress()]
    for step in range(1, 61):
        for budget, progress in zip(budgets, runs):
            budget.plan_once_timed(progress, eval_seconds=0.0, ckpt_seconds=0.0)
            progress.advance(tokens=1, seconds=0.1)
            budget.record_step(0.1 if step < 20 else 0.5)  # slower after the plan: it must shrink
            if step % 10 == 0:
                budget.revise_if_due(progress, eval_seconds=0.0, ckpt_seconds=0.0)
    assert ranks[0].calls == ranks[1].calls >= 2
    assert runs[0].planned_steps == runs[1].planned_steps and runs[0].replans == runs[1].replans >= 1


def test_a_flops_count_trains_the_tokens_it_buys_at_the_models_flops_per_token():
    from nextword.config import TrainConfig
    from nextword.training.budget import RunLength

    length = RunLength.from_config(TrainConfig(flops="1e12")).for_model(flops_per_token=2_000_000)
    assert length.governs == "flops"
    assert length.steps(tokens_per_step=1000) == 500  # 1e12 / 2e6 = 500,000 tokens, 1,000 a step
    assert length.steps(tokens_per_step=3000) == 166  # never more compute than the count: rounded down
    assert "500,000 tokens" in length.describe(Progress())
