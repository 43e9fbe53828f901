import contextlib
import json

import pytest
import torch

from nextword.config import RunConfig, TrainConfig
from nextword.training.batch import BatchWarmup, GlobalBatch
from nextword.training.budget import SAFETY_MARGIN, BudgetPlanner, TimeBudget
from nextword.training.distributed import World
from nextword.training.evaluator import Evaluator
from nextword.training.loop import StepTimer, train_loop
from nextword.training.metrics import Metrics
from nextword.training.progress import Progress
from nextword.training.runlog import RunLog


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
            progress.advance(tokens=1)
            budget.record_time(1, 0.1 if step < 20 else 0.5)  # slower after the plan: it must shrink
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


# --- evaluations at the quarters of a moving plan -------------------------------------------------------------


def evaluation_steps(plan_at, last_step: int, first_step: int = 1) -> list[int]:
    """The steps an evaluator evaluates at while `plan_at(step)` gives the plan in force at each step."""
    evaluator = Evaluator(None, None, None, RunConfig(), device=torch.device("cpu"), world=World(),
                          autocast=contextlib.nullcontext(), log=None, samples_on_every_rank=False)
    progress, due = Progress(step=first_step - 1), []
    while progress.step < last_step:
        progress.advance(tokens=1)
        progress.planned_steps = plan_at(progress.step)
        if evaluator.due(progress):
            due.append(progress.step)
    return due


def first_steps_past_each_quarter(plan_at, last_step: int) -> list[int]:
    return [next(step for step in range(1, last_step) if 4 * step >= quarter * plan_at(step)) for quarter in (1, 2, 3)]


@pytest.mark.parametrize("plan_at", [
    lambda step: 1400 - 3 * (step // 10),  # re-planned at every log step, shrinking: 1,400 steps down to 1,079
    lambda step: 1000 + 5 * (step // 10),  # growing: 1,000 steps up to 1,995
    lambda step: 1600 if step < 700 else 1000,  # shrunk once, past the second quarter mark (800 to 500)
], ids=["shrinking", "growing", "shrunk-once"])
def test_a_moving_plan_is_evaluated_once_at_each_quarter(plan_at):
    last = next(step for step in range(1, 10**4) if step >= plan_at(step))
    due = evaluation_steps(plan_at, last)
    assert due == first_steps_past_each_quarter(plan_at, last)


def test_a_resumed_run_does_not_evaluate_again_at_quarters_it_passed():
    assert evaluation_steps(lambda step: 1000, 1000, first_step=701) == [750]
    assert evaluation_steps(lambda step: 1000, 1000, first_step=751) == []


# --- step times on a device that runs behind the host ---------------------------------------------------------


FULL_BATCH = GlobalBatch(micro_batch=1000, context=1, accumulation=1, ranks=1)


class QueuedDevice:
    """A GPU as the host sees it: an update returns once its work is queued, after a millisecond; the work takes
    `step_seconds` for a batch of FULL_BATCH (in proportion for another), and the host waits for it only when it
    synchronises."""

    def __init__(self, step_seconds: float) -> None:
        self.now, self.done_at, self.step_seconds = 0.0, 0.0, step_seconds
        self.synchronised_at: list[int] = []  # the step of each synchronisation
        self.steps = 0

    def clock(self) -> float:
        return self.now

    def synchronize(self) -> None:
        self.synchronised_at.append(self.steps)
        self.now = max(self.now, self.done_at)

    def update(self, lr: float, batch: GlobalBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        share = batch.tokens_per_step / FULL_BATCH.tokens_per_step
        self.done_at = max(self.done_at, self.now) + self.step_seconds * share
        self.now += 0.001
        self.steps += 1
        return torch.tensor(2.0), torch.tensor(1.0), torch.tensor(0.0)


class Never:
    """An evaluator, checkpointer, spike guard and stop request that are never due: the loop's steps alone."""

    seconds = 0.0

    def due(self, *_) -> bool:
        return False

    def rolled_back(self, *_) -> bool:
        return False

    def agreed(self, *_) -> bool:
        return False

    def evaluate(self, *_) -> None:
        pass

    def save(self, *_) -> None:
        pass


def test_the_budget_and_the_metrics_time_the_devices_work_not_the_launch(tmp_path):
    device = QueuedDevice(step_seconds=0.1)
    t = TrainConfig(log_every=10)
    progress, never = Progress(), Never()
    with RunLog(tmp_path / "log.jsonl") as log:
        budget = TimeBudget(BudgetPlanner(deadline=30.0, budget=30.0, decay_frac=0.2, clock=device.clock), World(),
                            log)
        metrics = Metrics(log, t, progress, tokens_per_step=1000, flops_per_token=1.0, peak_flops=1.0, world=World(),
                          device=torch.device("cpu"), run_dir=tmp_path, start=0.0, show_bar=False)
        train_loop(progress, device.update, lambda step, planned: 1e-3, BatchWarmup(FULL_BATCH),
                   timer=StepTimer(device.synchronize, device.clock), budget=budget, metrics=metrics,
                   spike_guard=never, evaluator=never, checkpointer=never, stop=never, stop_after=None)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    plan = next(r for r in records if r["kind"] == "plan")
    assert plan["step_seconds"] == pytest.approx(0.1, rel=0.02)  # not the 1 ms the host spends queueing a step
    assert plan["planned_steps"] == pytest.approx((30 - SAFETY_MARGIN * 30) / 0.1, rel=0.03)
    assert all(r["tokens_per_s"] == pytest.approx(1000 / 0.1, rel=0.02) for r in records if r["kind"] == "train")
    assert progress.train_seconds == pytest.approx(0.1 * progress.step, rel=0.02)
    assert device.now <= 30.0  # the run kept its budget
    # Every step is timed on its own until the plan; after it, the device is waited for at log steps alone.
    after_plan = [step for step in device.synchronised_at if step > plan["step"]]
    assert after_plan and all(step % t.log_every == 0 or step == progress.step for step in after_plan)


def test_a_budget_with_batch_warmup_plans_from_full_batch_steps_and_keeps_its_deadline(tmp_path):
    device = QueuedDevice(step_seconds=0.1)  # a quarter batch takes 0.025 s
    t = TrainConfig(log_every=10, batch_warmup=0.3)
    progress, never = Progress(), Never()
    with RunLog(tmp_path / "log.jsonl") as log:
        budget = TimeBudget(BudgetPlanner(deadline=30.0, budget=30.0, decay_frac=0.2, batch_warmup=0.3,
                                          clock=device.clock), World(), log)
        metrics = Metrics(log, t, progress, tokens_per_step=1000, flops_per_token=1.0, peak_flops=1.0, world=World(),
                          device=torch.device("cpu"), run_dir=tmp_path, start=0.0, show_bar=False)
        train_loop(progress, device.update, lambda step, planned: 1e-3, BatchWarmup(FULL_BATCH, 0.3),
                   timer=StepTimer(device.synchronize, device.clock), budget=budget, metrics=metrics,
                   spike_guard=never, evaluator=never, checkpointer=never, stop=never, stop_after=None)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    first_plan = next(r for r in records if r["kind"] == "plan")
    # Timed on quarter batches, planned at what a full one takes: 4 × 0.025 s.
    assert first_plan["step_seconds"] == pytest.approx(0.1, rel=0.05)
    assert progress.batch_warmup_steps == round(0.3 * first_plan["planned_steps"])
    assert device.now <= 30.0  # the run kept its budget
    assert device.now >= 0.9 * (30 - SAFETY_MARGIN * 30)  # and used it: the plan grew as the warmup's steps ran fast
