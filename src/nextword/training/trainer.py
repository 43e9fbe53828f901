"""Train (or resume) a run: set it up, train it step by step with evaluations and checkpoints, and close it with a
summary. `nextword train` (cli/train.py) calls `train`, and so does every process under torchrun.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from nextword.training import distributed, precision, sharded
from nextword.training.budget import EVALS_PER_RUN, BudgetPlanner
from nextword.training.checkpoint import (
    SingleFileStorage,
    check_compatible,
    checkpoint_step,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from nextword.config import RunConfig, TrainConfig, parse_count, parse_duration
from nextword.data.loader import TokenLoader
from nextword.data.prepare import prepare
from nextword.data.shards import TokenShards, read_index
from nextword.training.distributed import World
from nextword.errors import CheckpointError, ConfigError, NextwordError
from nextword.training.evaluator import evaluate_loss, samples
from nextword.training.machine import (
    Machine,
    cpu_bf16_native,
    detect,
    peak_flops,
)
from nextword.model import GPT
from nextword.training.runlog import RunLog, read_log, short_count
from nextword.training.optimizer import build_optimizer
from nextword.training.schedule import learning_rate
from nextword.training.step import train_step

DEFAULT_BUDGET = "10m"
TIMED_WARMUP_STEPS = 3  # steps not timed: the first ones pay for allocation and lazy initialisation
TIMED_STEPS = 10  # steps timed before a budget is planned
# A spike is measured in standard deviations of the recent logged losses, but in no less than this fraction of their
# mean: on a plateau where they nearly agree, ordinary batch-to-batch noise would otherwise count as a spike.
SPIKE_MIN_SPREAD = 0.01
SAMPLE_LINES = 6  # of each sample printed at an evaluation (all of it is in the log)


@dataclass
class Progress:
    """What the loop has done: saved in every checkpoint, so a resumed run carries on exactly."""

    step: int = 0
    tokens: int = 0
    planned_steps: int = 0
    replans: int = 0
    train_seconds: float = 0.0
    nonfinite_skipped: int = 0
    loader: dict[str, Any] = field(default_factory=dict)
    # With train.spike_rollback: [step, loss] of the latest logged losses that were not spikes, the rollbacks made,
    # and the steps whose data they skipped.
    recent_losses: list[list[float]] = field(default_factory=list)
    spike_rollbacks: int = 0
    spike_skipped_steps: int = 0
    # The train split and seed the loader's position counts windows of: resuming on other data would silently read
    # a different stream from a position that means nothing there.
    data_stream: str = ""
    # The global batch the run began with: resumed at another world size without train.batch_tokens, one
    # micro-batch per rank would change it under a length and learning rate planned for it.
    tokens_per_step: int = 0


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to save and stop at the end of the current step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if signum == self.signal == signal.SIGINT:  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        # Any other second signal repeats the first while its save is under way: torchrun passes a Ctrl-C on as
        # SIGTERM, and a scheduler that ends a job (SLURM's scancel) signals every process of it, which torchrun
        # then passes on again.
        if self.signal is not None:
            return
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint, then stopping…", file=sys.stderr)

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in previous:
                signal.signal(s, self)
        except ValueError:  # not the main thread: no handlers, Ctrl-C behaves as usual
            pass
        try:
            yield self
        finally:
            with contextlib.suppress(ValueError):
                for s, handler in previous.items():
                    signal.signal(s, handler)


def train(cfg: RunConfig, *, start_time: float | None = None, stop_after: int | None = None, progress: bool = True,
          bf16_probe: Callable[[], bool] = cpu_bf16_native) -> dict[str, Any]:
    """Train (or resume) the run that `cfg` describes; return the closing summary.

    Started by torchrun, every process calls this: it joins the others, trains its share and, on rank 0 alone,
    prints, logs and writes the run's files.
    """
    world = distributed.world_from_env()
    mode = distributed.parallel_mode(cfg.train.parallel, world)
    device = distributed.device_name(cfg.train.device, world)
    joined = distributed.join(world, mode, device)
    try:
        with _quiet_unless(world.is_main):
            return _train(cfg, world, mode, device, start_time=start_time, stop_after=stop_after,
                          progress=progress and world.is_main, bf16_probe=bf16_probe)
    except BaseException as error:
        # The failed run's frames hold its model, and through it the process group, which leave() must free
        # while the interpreter is whole. Their local variables go; the traceback keeps its files and lines.
        if joined:
            traceback.clear_frames(error.__traceback__)
        raise
    finally:
        if joined:
            distributed.leave()


# Why a run directory's files (config, tokenizer, log, TensorBoard) may fail to be written: a full disk or quota,
# no permission, a read-only file system, or a file where a folder should be.
RUN_DIR_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST}


@contextlib.contextmanager
def _unwritable_run_dir_is_one_line(run_dir: Path):
    """A run directory that cannot be written stops the run with one line naming the file (or the folder: a failed
    write to an open file names none), not a traceback."""
    try:
        yield
    except OSError as error:
        if error.errno not in RUN_DIR_ERRNOS:
            raise
        raise NextwordError(f"{error.filename or run_dir}: {error.strerror}; free disk space, fix the permissions or "
                            f"choose another --run-dir than {run_dir}, then run the same command again. "
                            "Checkpoints already saved are intact") from None


@contextlib.contextmanager
def _quiet_unless(is_main: bool, *, stderr: bool = False):
    """Only rank 0 prints; the other ranks' stdout goes nowhere, and with `stderr` their stderr too (their errors
    still reach the user: as exceptions, which the command line prints)."""
    if is_main:
        yield
        return
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere), \
            (contextlib.redirect_stderr(nowhere) if stderr else contextlib.nullcontext()):
        yield


def _train(cfg: RunConfig, world: World, mode: str, device: str, *, start_time: float | None,
           stop_after: int | None, progress: bool, bf16_probe: Callable[[], bool]) -> dict[str, Any]:
    start = time.monotonic() if start_time is None else start_time
    run = _set_up(cfg, world, mode, device, progress, bf16_probe)
    state = _resume(run)
    if _finished(state):
        print(f"{run.run_dir} is a finished run ({state.step:,} steps); its model is ready for `nextword sample "
              f"{run.run_dir}`. Start another with --run-dir DIR.")
        return {"run_dir": str(run.run_dir), "steps": state.step, "finished_before": True}
    if stop_after is not None and state.step >= stop_after:
        print(f"{run.run_dir} is at step {state.step:,}, already at or past --stop-after {stop_after:,}: nothing to "
              "train. Run without --stop-after, or with a later step, to go on.")
        return {"run_dir": str(run.run_dir), "steps": state.step, "interrupted": False}
    governs, limit = _governing(cfg.train)
    _refuse_another_length(run, state, governs, limit)
    if world.size > 1:
        torch.manual_seed(distributed.rank_seed(cfg.train.seed, world, state.step))  # dropout differs between ranks
    if world.is_main:
        with _unwritable_run_dir_is_one_line(run.run_dir):
            _write_run_files(run.run_dir, cfg, run.tokenizer)
    planner = _plan_length(run, state, governs, limit, start)
    # Rank 0 alone keeps the run's log; the other ranks write theirs nowhere. The log is closed however the run
    # ends, and a log that cannot be written, TensorBoard's included, ends it in one line.
    with (_unwritable_run_dir_is_one_line(run.run_dir),
          RunLog(run.run_dir / "log.jsonl" if world.is_main else os.devnull) as log):
        _announce(run, state, log, governs, limit)
        eval_seconds = _evaluate(run, log, state) if state.step == 0 else 0.0
        loop = _Loop(run, state, log, planner, start=start, stop_after=stop_after, eval_seconds=eval_seconds)
        return loop.train(progress)


@dataclass
class _Run:
    """What a run sets up once, before its first step."""

    cfg: RunConfig
    world: World
    mode: str  # none | ddp | fsdp
    machine: Machine
    run_dir: Path
    tokenizer: Any
    val_split: TokenShards
    model: GPT
    net: torch.nn.Module  # what runs forward and backward: the model wrapped, sharded or compiled
    optimizer: torch.optim.Optimizer
    loader: TokenLoader
    accumulation: int  # micro-steps per optimizer step
    tokens_per_step: int  # over all ranks
    precision: str
    precision_reason: str
    compiled: bool
    compile_reason: str
    autocast: contextlib.AbstractContextManager  # for evaluation
    train_autocast: contextlib.AbstractContextManager
    scaler: torch.amp.GradScaler
    flops_per_token: float
    peak: float  # measured matmul FLOP/s of one device, the ceiling MFU is reported against


def _set_up(cfg: RunConfig, world: World, mode: str, device: str, progress: bool,
            bf16_probe: Callable[[], bool]) -> _Run:
    """Measure the machine, prepare the data, build the model, choose the precision and wrap the model."""
    t = cfg.train
    run_dir = Path(t.run_dir)
    with _unwritable_run_dir_is_one_line(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    machine = detect(device, distributed.cpu_threads(t.threads, world), bf16_probe)
    torch.manual_seed(t.seed)  # the same on every rank: FSDP needs every rank to start from the same weights

    pretrained = _pretrained(cfg)
    tokenizer, train_split, val_split = _prepare_data(cfg, world, progress)
    model = (pretrained or GPT(cfg.model)).to(machine.device)
    # Every rank reads its own windows of one global stream (see TokenLoader), so together they read what a
    # single process would.
    loader = TokenLoader(train_split, t.micro_batch, cfg.model.context, rank=world.rank, world_size=world.size,
                         seed=t.seed, device=machine.device)
    # The validation split must hold a window too: say so now, not after the precision race and the first steps.
    TokenLoader(val_split, 1, cfg.model.context)
    accumulation = _accumulation(t, cfg.model.context, world.size)

    chosen, precision_reason = precision.choose_precision(cfg, world, machine, model)
    autocast, scaler = precision.autocast_for(machine.device, chosen), precision.scaler_for(machine.device, chosen)
    train_autocast = autocast if distributed.autocast_needed(mode, chosen) else contextlib.nullcontext()
    flops_per_token = model.flops_per_token()
    net, compiled, compile_reason = _parallel_model(model, mode, world, chosen, cfg, machine)
    optimizer = build_optimizer(model, t)  # after FSDP has sharded the parameters it optimizes
    return _Run(cfg=cfg, world=world, mode=mode, machine=machine, run_dir=run_dir, tokenizer=tokenizer,
                val_split=val_split, model=model, net=net, optimizer=optimizer, loader=loader,
                accumulation=accumulation,
                tokens_per_step=t.micro_batch * cfg.model.context * accumulation * world.size,
                precision=chosen, precision_reason=precision_reason, compiled=compiled,
                compile_reason=compile_reason, autocast=autocast, train_autocast=train_autocast, scaler=scaler,
                flops_per_token=flops_per_token, peak=world.from_main(peak_flops, machine))


def _prepare_data(cfg: RunConfig, world: World, progress: bool) -> tuple[Any, TokenShards, TokenShards]:
    """The tokenizer and the train and validation splits; sets the model's vocabulary to the tokenizer's."""
    # Rank 0 prepares (or finds) the data and says so; the others then find it ready, without a word.
    with world.main_first(), _quiet_unless(world.is_main, stderr=True):
        prepared = prepare(cfg.data, clean=cfg.clean, progress=progress)
    tokenizer = prepared.tokenizer
    cfg.data.data_dir = str(prepared.data_dir)
    if cfg.model.vocab_size and cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size = {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{tokenizer.vocab_size}; set it to 0 to take the tokenizer's")
    cfg.model.vocab_size = cfg.model.vocab_size or tokenizer.vocab_size
    return tokenizer, TokenShards(prepared.data_dir, "train"), TokenShards(prepared.data_dir, "val")


def _resume(run: _Run) -> Progress:
    """The progress of the newest valid checkpoint, with its model, optimizer and loader state loaded; a fresh
    Progress when there is none."""
    # Rank 0 alone verifies and chooses, so every rank loads the same one and the files are hashed once.
    checkpoint = run.world.from_main(latest_checkpoint, run.run_dir)
    stream = _data_stream(run.cfg)
    if checkpoint is None:
        return Progress(data_stream=stream)
    check_compatible(checkpoint, run.cfg, run.tokenizer.hash)
    state = Progress(**_load(run, checkpoint))
    if state.data_stream and state.data_stream != stream:
        raise CheckpointError(
            f"{checkpoint}: saved while training on other data or with another train.seed than this config gives "
            f"(the train split of {run.cfg.data.data_dir}, seed {run.cfg.train.seed}); resume with the run's own "
            f"config ({run.run_dir / 'config.toml'}) or start a new --run-dir")
    state.data_stream = stream  # a checkpoint from before the stream was recorded is taken as it is
    _keep_global_batch(run, state)
    run.loader.load_state_dict(state.loader)
    if not _finished(state):
        print(f"resuming {run.run_dir} from step {state.step:,} of {state.planned_steps:,}")
    return state


def _keep_global_batch(run: _Run, state: Progress) -> None:
    """Without train.batch_tokens, a run resumed at another world size keeps the tokens per step it was saved
    with, by accumulating micro-steps where it has fewer ranks than before."""
    saved, t = state.tokens_per_step, run.cfg.train
    if not saved or saved == run.tokens_per_step or t.batch_tokens:
        return
    per_micro_step = t.micro_batch * run.cfg.model.context * run.world.size
    if saved % per_micro_step:
        raise ConfigError(f"{run.run_dir}: the run trains on {saved:,} tokens per step, which micro_batch × context "
                          f"× ranks = {t.micro_batch} × {run.cfg.model.context} × {run.world.size} = "
                          f"{per_micro_step:,} does not divide; resume with a number of processes that divides it, "
                          f"or set train.batch_tokens = {saved} and a train.micro_batch that divides it")
    run.accumulation, run.tokens_per_step = saved // per_micro_step, saved


def _data_stream(cfg: RunConfig) -> str:
    """A short hash of what decides the windows the loader reads: the train split's shards and the seed."""
    train_split = read_index(cfg.data.data_dir)["splits"]["train"]
    stream = json.dumps({"train": train_split, "seed": cfg.train.seed}, sort_keys=True)
    return hashlib.sha256(stream.encode()).hexdigest()[:16]


def _finished(state: Progress) -> bool:
    return bool(state.planned_steps) and state.step >= state.planned_steps


def _load(run: _Run, checkpoint: Path) -> dict[str, Any]:
    """Load a checkpoint of either layout into the model and optimizer; return its saved Progress fields."""
    if run.mode == "none" and not sharded.is_sharded(checkpoint):
        return load_checkpoint(checkpoint, run.model, run.optimizer, run.machine.device)
    return sharded.load_checkpoint(checkpoint, run.model, run.optimizer)


def _save(run: _Run, state: Progress) -> Path:
    state.loader = run.loader.state_dict()
    state.tokens_per_step = run.tokens_per_step
    # One process writes the single-file layout; several (or FSDP in one) each write their part.
    storage = SingleFileStorage() if run.mode == "none" else sharded.ShardedStorage()
    return save_checkpoint(run.run_dir, state.step, run.model, run.optimizer, _asdict(state), run.cfg,
                           run.tokenizer.hash, run.cfg.train.keep_last, storage, run.world)


def _plan_length(run: _Run, state: Progress, governs: str, limit: float, start: float) -> BudgetPlanner | None:
    """Set the planned steps of a step or token count; for a new budgeted run, the planner that will set them
    once it has timed a few steps (a resumed run keeps the total it planned)."""
    if not state.planned_steps:
        state.planned_steps = _steps_asked(run, governs, limit)
    if governs == "budget" and not state.planned_steps:
        return BudgetPlanner(start + limit, limit, run.cfg.train.decay_frac, run.cfg.train.ckpt_every)
    return None


def _steps_asked(run: _Run, governs: str, limit: float) -> int:
    """The steps that a step or token count comes to; 0 for a time budget, which plans them once timed."""
    if governs == "steps":
        return int(limit)
    if governs == "tokens":
        return math.ceil(limit / run.tokens_per_step)
    return 0


def _refuse_another_length(run: _Run, state: Progress, governs: str, limit: float) -> None:
    """A resumed run keeps the length it was planned for, as its learning rate is scheduled over it; a step or
    token count that asks for another would otherwise be written to config.toml and then ignored."""
    asked = _steps_asked(run, governs, limit)
    if state.planned_steps and asked and asked != state.planned_steps:
        raise ConfigError(
            f"{run.run_dir}: the run is at step {state.step:,} of the {state.planned_steps:,} it was planned for, "
            f"but train.{governs} = {getattr(run.cfg.train, governs)} asks for {asked:,} steps; a run keeps its "
            f"length once started: resume with the run's own length, or start another with --run-dir DIR")


def _announce(run: _Run, state: Progress, log: RunLog, governs: str, limit: float) -> None:
    """Log the run's record and print what is about to train, on what, how."""
    cfg, world, machine, model, t = run.cfg, run.world, run.machine, run.model, run.cfg.train
    log.write(kind="run", **machine.describe(), cpu=machine.name, precision=run.precision,
              precision_reason=run.precision_reason, compile=run.compiled, compile_reason=run.compile_reason,
              parallel=run.mode, world_size=world.size, params=model.num_params(),
              params_non_embedding=model.num_params(non_embedding=True), flops_per_token=run.flops_per_token,
              peak_flops=run.peak, tokens_per_step=run.tokens_per_step, accumulation=run.accumulation,
              governs=governs, limit=limit, resumed_from=state.step, planned_steps=state.planned_steps)
    print(f"model: {cfg.model.arch}, {model.num_params() / 1e6:.2f}M parameters "
          f"({model.num_params(non_embedding=True) / 1e6:.2f}M without embeddings), context {cfg.model.context}, "
          f"vocabulary {cfg.model.vocab_size}")
    print(f"machine: {machine.name} ({machine.capability}), {machine.threads} threads, "
          f"peak {run.peak / 1e12:.2f} TFLOP/s measured")
    print(f"precision: {run.precision} ({run.precision_reason}); torch.compile: "
          f"{'on' if run.compiled else 'off'} ({run.compile_reason})")
    if world.size > 1 or run.mode != "none":
        print(f"parallel: {run.mode} over {world.size} process{'es' if world.size > 1 else ''}")
    print(f"batch: {run.tokens_per_step:,} tokens per step ({t.micro_batch} × {cfg.model.context}"
          f"{f' × {run.accumulation} micro-steps' if run.accumulation > 1 else ''}"
          f"{f' × {world.size} ranks' if world.size > 1 else ''}); "
          f"{_describe_limit(governs, limit, state)}")


def _evaluate(run: _Run, log: RunLog, state: Progress) -> float:
    """Validation loss and samples at the current step, logged and printed; returns the seconds it took."""
    cfg, world = run.cfg, run.world
    began = time.monotonic()
    with run.autocast:
        result = evaluate_loss(run.model, run.val_split, cfg.train.micro_batch, cfg.model.context,
                               cfg.eval.batches, run.machine.device, world)
        # FSDP's forward is a collective, so every rank draws the (same) samples; elsewhere rank 0 alone.
        draws = world.is_main or run.mode == "fsdp"
        texts = samples(run.model, run.tokenizer, cfg.eval, seed=cfg.train.seed) if draws else []
    log.write(kind="eval", step=state.step, tokens=state.tokens, val_loss=result["loss"], val_ppl=result["ppl"],
              val_bpb=result["bpb"], samples=texts)
    _print_eval(state.step, result, texts, run.tokenizer.vocab_size)
    return time.monotonic() - began


class _StepResult(NamedTuple):
    loss: torch.Tensor  # on the device, not yet read back
    grad_norm: torch.Tensor
    lr: float


class _Loop:
    """The steps of a run, until its plan is done or it is asked to stop.

    Every `log_every` steps an interval ends: the numbers kept on the device are read back (the only host sync),
    logged, and the budget's plan is checked. Evaluations and checkpoints come at their own intervals.
    """

    def __init__(self, run: _Run, state: Progress, log: RunLog, planner: BudgetPlanner | None, *, start: float,
                 stop_after: int | None, eval_seconds: float) -> None:
        self.run, self.state, self.log, self.planner = run, state, log, planner
        self.start, self.stop_after = start, stop_after
        self.eval_seconds = eval_seconds
        self.ckpt_seconds = 1.0 + 4 * run.model.num_params() / 200e6  # a guess until the first save is timed
        self.stop = _StopRequest()
        self.step_times: list[float] = []
        device = run.machine.device
        self.skipped_since_log = torch.zeros((), device=device)
        self.skipped_in_a_row = torch.zeros((), device=device)  # kept on the device: no sync in the step
        self.planned_at = 0  # how many steps had been timed when the plan was first made
        self.bar: Any = None

    def train(self, progress: bool) -> dict[str, Any]:
        """Train to the end of the plan (or a stop); return the closing summary."""
        self.bar = _progress_bar(progress, self.state)
        try:
            with self.stop.installed():
                return self._train_until_done()
        finally:
            self.bar.close()

    def _train_until_done(self) -> dict[str, Any]:
        state, t = self.state, self.run.cfg.train
        while True:
            self._plan_once_timed()
            if _finished(state):
                break
            result = self._step()
            at_end = _finished(state)
            at_log_step = state.step % t.log_every == 0 or at_end
            stopping = _stop_agreed(self.stop, self.run.world, at_log_step)
            if at_log_step:
                loss = self._end_interval(result, at_end)
                if t.spike_rollback and self._rolled_back_after_spike(loss):
                    continue  # from the checkpoint before the spike, past the data trained on since
            self._evaluate_if_due()
            asked_to_stop = stopping or state.step == self.stop_after
            if at_end or (t.ckpt_every and state.step % t.ckpt_every == 0) or asked_to_stop:
                path = self._checkpoint(at_end)
                if asked_to_stop and not at_end:  # a stop asked for at the last step: the run is finished
                    return self._stopped(path, interrupted=stopping)
        return self._finish()

    def _plan_once_timed(self) -> None:
        """With a time budget, plan the run's steps once enough of them have been timed."""
        state = self.state
        if self.planner and not state.planned_steps and len(self.step_times) >= TIMED_WARMUP_STEPS + TIMED_STEPS:
            measured = statistics.median(self.step_times[TIMED_WARMUP_STEPS:])
            self.planned_at = len(self.step_times)
            state.planned_steps = self.run.world.from_main(self.planner.plan, state.step, measured,
                                                           self.eval_seconds, self.ckpt_seconds)
            self.log.write(kind="plan", step=state.step, step_seconds=measured, planned_steps=state.planned_steps)
            self.bar.total = state.planned_steps

    def _learning_rate(self) -> float:
        state, t = self.state, self.run.cfg.train
        if not state.planned_steps:  # while the budget is being measured: the warmup's floor, the same in any plan
            return t.lr * min(1.0, (state.step + 1) / max(1, t.warmup_steps))
        return learning_rate(state.step, state.planned_steps, peak=t.lr, min_ratio=t.min_lr_ratio,
                             schedule=t.schedule, warmup_steps=t.warmup_steps, warmup_frac=t.warmup_frac,
                             decay_frac=t.decay_frac)

    def _step(self) -> _StepResult:
        run, state = self.run, self.state
        lr = self._learning_rate()
        began = time.perf_counter()
        loss, grad_norm, nonfinite = train_step(run.net, run.optimizer, run.loader.next_batch, run.accumulation, lr,
                                                run.cfg.train.grad_clip, run.train_autocast, run.scaler)
        self.skipped_since_log += nonfinite
        self.skipped_in_a_row.add_(nonfinite).mul_(nonfinite)  # counts up while updates are skipped, else 0
        state.step += 1
        state.tokens += run.tokens_per_step
        elapsed = time.perf_counter() - began
        self.step_times.append(elapsed)
        state.train_seconds += elapsed
        self.bar.update(1)
        return _StepResult(loss, grad_norm, lr)

    def _end_interval(self, result: _StepResult, at_end: bool) -> float:
        """Read back what the interval's steps kept on the device, log the step, and check the budget's plan;
        return the step's loss."""
        run, state = self.run, self.state
        self._count_skipped_updates()
        recent = self.step_times[-run.cfg.train.log_every:]
        tokens_per_s = run.tokens_per_step * len(recent) / sum(recent)
        mfu = run.flops_per_token * tokens_per_s / (run.peak * run.world.size)
        loss = float(run.world.mean(result.loss))  # each rank's loss is over its own windows
        self.log.write(kind="train", step=state.step, tokens=state.tokens, loss=loss, lr=result.lr,
                       grad_norm=float(result.grad_norm), tokens_per_s=tokens_per_s, mfu=mfu,
                       elapsed_s=time.monotonic() - self.start)
        self.bar.set_postfix_str(f"loss {loss:.3f}, {tokens_per_s:,.0f} tok/s, MFU {mfu:.1%}")
        if not at_end:
            self._revise_plan()
        return loss

    def _count_skipped_updates(self) -> None:
        """Count the updates skipped for NaN or Inf since the last log step; stop the run when told to."""
        state, t = self.state, self.run.cfg.train
        skipped = int(self.skipped_since_log)  # read back only here: no host sync inside the step
        self.skipped_since_log.zero_()
        state.nonfinite_skipped += skipped
        if not skipped:
            return
        print(f"\nwarning: {skipped} update(s) skipped for a non-finite loss or gradient before step "
              f"{state.step}", file=sys.stderr)
        in_a_row = int(self.skipped_in_a_row)
        if t.on_nonfinite == "stop" or in_a_row >= t.max_nonfinite_in_a_row:
            raise NonFiniteError(f"{in_a_row or skipped} update(s) in a row had a non-finite loss or gradient by "
                                 f"step {state.step} (train.on_nonfinite = {t.on_nonfinite}); lower train.lr or "
                                 f"check the data. The last good checkpoint is untouched in "
                                 f"{self.run.run_dir / 'checkpoints'}")

    def _revise_plan(self) -> None:
        """With a time budget, re-plan from the measured speed when the steps left would not fit (or more would)."""
        state, planner = self.state, self.planner
        if not (planner and planner.step_seconds and len(self.step_times) - self.planned_at >= 10):
            return
        # The mean of the last 100 steps since the first plan: a median of a few can be optimistic.
        measured = statistics.mean(self.step_times[max(self.planned_at, len(self.step_times) - 100):])
        revised = self.run.world.from_main(planner.revise, state.step, state.planned_steps, measured,
                                           self.eval_seconds, self.ckpt_seconds)
        if revised:
            state.replans += 1
            state.planned_steps = revised
            self.log.write(kind="plan", step=state.step, step_seconds=measured, planned_steps=revised, replan=True)
            self.bar.total = revised

    def _rolled_back_after_spike(self, loss: float) -> bool:
        """Whether this logged loss was a spike that the run rolled back from; a loss that was not a spike joins
        the recent ones the next is measured against."""
        state, t = self.state, self.run.cfg.train
        if not math.isfinite(loss):  # an update skipped on the device, which train.on_nonfinite deals with
            return False
        recent = [value for _, value in state.recent_losses]
        limit = spike_limit(recent, t.spike_sigmas) if len(recent) >= t.spike_window else math.inf
        if loss <= limit:
            state.recent_losses = [*state.recent_losses, [state.step, loss]][-t.spike_window:]
            return False
        return self._roll_back(loss, limit)

    def _roll_back(self, loss: float, limit: float) -> bool:
        """Reload the newest checkpoint saved no later than the last logged loss that was not a spike (model,
        optimizer, RNG, step) and leave the loader where it is, past the data trained on since that checkpoint.
        False when there is no such checkpoint."""
        run, state, t = self.run, self.state, self.run.cfg.train
        spike_step, last_good_step = state.step, int(state.recent_losses[-1][0])
        spike = (f"loss spike at step {spike_step:,}: {loss:.3f}, above {limit:.3f} (the mean + {t.spike_sigmas:g} "
                 f"standard deviations of the last {len(state.recent_losses)} logged losses)")
        if state.spike_rollbacks >= t.max_spike_rollbacks:
            raise LossSpikeError(f"{spike} after {state.spike_rollbacks} rollback(s), as many as "
                                 f"train.max_spike_rollbacks allows; lower train.lr or check the data. The checkpoints "
                                 f"in {run.run_dir / 'checkpoints'} are kept")
        checkpoint = run.world.from_main(latest_checkpoint, run.run_dir, last_good_step)
        if checkpoint is None:
            print(f"\nwarning: {spike}; no checkpoint from before it to go back to, so training goes on",
                  file=sys.stderr)
            return False
        restored = Progress(**_load(run, checkpoint))
        if run.world.size > 1:
            torch.manual_seed(distributed.rank_seed(t.seed, run.world, restored.step))
        skipped_steps = spike_step - restored.step
        state.step, state.tokens, state.recent_losses = restored.step, restored.tokens, restored.recent_losses
        state.spike_rollbacks += 1
        state.spike_skipped_steps += skipped_steps
        self.skipped_in_a_row.zero_()
        _remove_checkpoints_after(run, restored.step)
        self.bar.n = state.step
        self.bar.refresh()
        self.log.write(kind="rollback", step=spike_step, loss=loss, limit=limit, to_step=restored.step,
                       skipped_steps=skipped_steps, skipped_tokens=skipped_steps * run.tokens_per_step,
                       rollbacks=state.spike_rollbacks)
        print(f"\n{spike}; back to {checkpoint.name}, skipping the data of the {skipped_steps} steps since it",
              file=sys.stderr)
        return True

    def _evaluate_if_due(self) -> None:
        state, cfg = self.state, self.run.cfg
        every = cfg.eval.every or max(1, (state.planned_steps or 10**9) // EVALS_PER_RUN)
        # The run ends with an evaluation anyway: none in the last half interval before it.
        if state.planned_steps and state.step % every == 0 and state.step < state.planned_steps - every // 2:
            self.eval_seconds = max(self.eval_seconds, _evaluate(self.run, self.log, state))

    def _checkpoint(self, at_end: bool) -> Path:
        """Save a checkpoint (after the final evaluation, at the end) and time it for the budget's plan."""
        if at_end:
            self.bar.close()
            self.eval_seconds = _evaluate(self.run, self.log, self.state)
        began = time.monotonic()
        path = _save(self.run, self.state)
        self.ckpt_seconds = time.monotonic() - began
        return path

    def _stopped(self, path: Path, interrupted: bool) -> dict[str, Any]:
        self.bar.close()
        again = "the same command" if interrupted else "the same command without --stop-after (or with a later step)"
        print(f"saved {path}; run {again} to resume")
        summary = {"interrupted": interrupted, "step": self.state.step, "checkpoint": str(path)}
        self.log.write(kind="stop", **summary)
        return summary

    def _finish(self) -> dict[str, Any]:
        run, state = self.run, self.state
        self.bar.close()
        if not run.world.is_main:
            return {"run_dir": str(run.run_dir), "steps": state.step, "rank": run.world.rank}
        summary = _summary(run.run_dir, state, self.start, run.precision, run.precision_reason)
        self.log.write(kind="summary", **summary)
        _print_summary(summary)
        return summary


def _pretrained(cfg: RunConfig) -> GPT | None:
    """With `model.init_from`, the Hugging Face model to continue from; its shape and tokenizer become the run's."""
    if not cfg.model.init_from:
        return None
    from nextword.model.hf import load_hf_model

    source = Path(cfg.model.init_from)
    model = load_hf_model(source)
    cfg.model = dataclasses.replace(model.cfg, init_from=str(source))
    if not cfg.data.tokenizer:
        cfg.data.tokenizer = str(source / "tokenizer.json")
    return model.train()


class NonFiniteError(NextwordError):
    """Training diverged: every recent update was skipped for NaN or Inf."""


class LossSpikeError(NextwordError):
    """The loss spiked again after train.max_spike_rollbacks rollbacks."""


def spike_limit(recent_losses: list[float], sigmas: float) -> float:
    """The loss above which a logged loss is a spike: the mean of the recent logged losses plus `sigmas` standard
    deviations of them (a deviation of at least SPIKE_MIN_SPREAD of the mean)."""
    mean = statistics.fmean(recent_losses)
    spread = max(statistics.pstdev(recent_losses, mean), SPIKE_MIN_SPREAD * mean)
    return mean + sigmas * spread


def _remove_checkpoints_after(run: _Run, step: int) -> None:
    """After a rollback to `step`: a later checkpoint may hold the start of the spike, and resuming from it would
    train on the skipped data again."""
    run.world.barrier()  # every rank has loaded the checkpoint it went back to before any is removed
    if run.world.is_main:
        for path in list_checkpoints(run.run_dir):
            if checkpoint_step(path) > step:
                shutil.rmtree(path, ignore_errors=True)


def _accumulation(t: TrainConfig, context: int, world_size: int) -> int:
    """Micro-steps per update, so that the global batch is train.batch_tokens whatever the number of ranks."""
    if not t.batch_tokens:
        return 1
    per_micro_step = t.micro_batch * context * world_size
    if world_size > 1 and t.batch_tokens % per_micro_step:
        raise ConfigError(f"train.batch_tokens = {t.batch_tokens:,} is not a multiple of micro_batch × context × "
                          f"ranks = {t.micro_batch} × {context} × {world_size} = {per_micro_step:,}; set it to a "
                          f"multiple so every world size trains on the same global batch")
    return max(1, t.batch_tokens // per_micro_step)


def _parallel_model(model: GPT, mode: str, world: World, precision: str, cfg: RunConfig,
                    machine: Machine) -> tuple[torch.nn.Module, bool, str]:
    """The module that runs forward and backward (wrapped for DDP, sharded for FSDP, maybe compiled), whether
    torch.compile is on, and why."""
    t = cfg.train
    if mode == "fsdp":
        # FSDP compiles each block on its own, so the gathers between blocks stay outside the compiled graphs.
        wanted = t.compile == "on" or (t.compile == "auto" and machine.is_cuda)
        net = distributed.wrap(model, mode, world, precision=precision,
                               activation_checkpointing=t.activation_checkpointing, compile_blocks=wanted)
        why = "each block on its own under FSDP" if wanted else f"compile = {t.compile} on {machine.device.type}"
        return net, wanted, why
    net = distributed.wrap(model, mode, world, precision=precision,
                           activation_checkpointing=t.activation_checkpointing, compile_blocks=False)
    compiled, why = _maybe_compile(net, cfg, machine)
    # Not `compiled or net`: a compiled module's truth value asks the model for its len(), which a GPT has not.
    return (net if compiled is None else compiled), compiled is not None, why


def _stop_agreed(stop: _StopRequest, world: World, at_log_step: bool) -> bool:
    """Whether to save and stop now. Ranks must stop at the same step, so over several processes a signal any
    rank caught is agreed on at log steps only (that exchange is a host synchronisation)."""
    if world.size == 1:
        return stop.signal is not None
    return at_log_step and world.any(stop.signal is not None)


def _maybe_compile(model: GPT, cfg: RunConfig, machine: Machine) -> tuple[torch.nn.Module | None, str]:
    choice = cfg.train.compile
    if choice == "off":
        return None, "off in the config"
    if choice == "auto" and not machine.is_cuda:
        return None, "on CPU the compile time does not pay back inside a short run"
    try:
        return torch.compile(model), "set in the config" if choice == "on" else "on a GPU it pays back quickly"
    except Exception as e:  # no compiler toolchain: train eagerly rather than not at all
        return None, f"unavailable here ({type(e).__name__}: {e})"


def _governing(t) -> tuple[str, float]:
    if t.steps:
        return "steps", t.steps
    if t.tokens:
        return "tokens", parse_count(t.tokens, "train.tokens")
    return "budget", parse_duration(t.budget or DEFAULT_BUDGET, "train.budget")


def _describe_limit(governs: str, limit: float, state: Progress) -> str:
    if governs == "budget" and state.step and state.planned_steps:
        # The plan was made when the run began and its learning rate is scheduled over it; a budget given now
        # would be printed but not followed.
        return (f"resuming at step {state.step:,} of the {state.planned_steps:,} steps planned when the run "
                "began (train.budget sizes new runs)")
    if governs == "budget":
        return f"budget {limit:.0f} s of wall clock (steps planned from measured speed)"
    return f"{limit:,.0f} {governs}"


def _progress_bar(enabled: bool, state: Progress):
    from tqdm import tqdm

    return tqdm(total=state.planned_steps or None, initial=state.step, unit="step", disable=not enabled,
                dynamic_ncols=True, mininterval=1.0, desc="train")


def _asdict(state: Progress) -> dict[str, Any]:
    return dict(state.__dict__)


def _write_run_files(run_dir: Path, cfg: RunConfig, tokenizer) -> None:
    cfg.save(run_dir / "config.toml")
    tokenizer.save(run_dir / "tokenizer.json")


def _print_eval(step: int, result: dict[str, float], texts: list[dict[str, str]], vocab_size: int) -> None:
    note = f" (an untrained model guesses uniformly: ln {vocab_size} = {math.log(vocab_size):.2f})" if step == 0 else ""
    print(f"\nstep {step:,}: validation loss {result['loss']:.3f} nats, perplexity {result['ppl']:.1f}, "
          f"{result['bpb']:.3f} bits per byte{note}")
    for sample in texts:
        lines = (sample["prompt"] + sample["text"]).splitlines()[:SAMPLE_LINES] or [""]
        print("\n".join(f"  │ {line[:100]}" for line in lines))


def _summary(run_dir: Path, state: Progress, start: float, precision: str, why: str) -> dict[str, Any]:
    evals = [r for r in read_log(run_dir / "log.jsonl") if r.get("kind") == "eval"]
    last = evals[-1] if evals else {}
    return {"run_dir": str(run_dir), "steps": state.step, "tokens": state.tokens, "precision": precision,
            "precision_reason": why, "val_loss": last.get("val_loss"), "val_bpb": last.get("val_bpb"),
            "wall_seconds": time.monotonic() - start, "train_seconds": state.train_seconds,
            "spike_rollbacks": state.spike_rollbacks, "spike_skipped_steps": state.spike_skipped_steps,
            "sample": (last.get("samples") or [{}])[0]}


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"\ndone: {summary['steps']:,} steps, {short_count(summary['tokens'], '.1f')} tokens in "
          f"{summary['wall_seconds']:.0f} s; validation loss {summary['val_loss']:.3f}, "
          f"{summary['val_bpb']:.3f} bits per byte")
    if summary["spike_rollbacks"]:
        print(f"loss spikes: {summary['spike_rollbacks']} rollback(s), the data of "
              f"{summary['spike_skipped_steps']:,} steps skipped")
    print(f"next: nextword sample {summary['run_dir']}   ·   nextword trace {summary['run_dir']}")
