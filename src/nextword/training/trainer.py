"""Train a run: set it up, resume it, hand its parts to the training loop, and close it with a summary.

`train` is what `nextword train` calls, and what every process calls under torchrun. Setting up measures the
machine, prepares the data, builds the model and chooses its precision; the checkpointer resumes the run from its
directory; then the loop (loop.py) trains with the components built here, each given only what it needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from nextword.config import RunConfig, load_saved_run
from nextword.data.loader import TokenLoader
from nextword.data.prepare import prepare
from nextword.data.shards import TokenShards
from nextword.data.sources import DEFAULT_CORPUS_NAME, code_repository
from nextword.data.tokenizer import Tokenizer
from nextword.errors import ConfigError, NextwordError
from nextword.files import folder_lock
from nextword.model import GPT
from nextword.model.moe import idle_params, moe_layers, total_balance_loss
from nextword.training import distributed, precision, sizing
from nextword.training.batch import BatchWarmup, GlobalBatch, global_batch, keep_saved_batch
from nextword.training.budget import RunLength, TimeBudget, plan_length, reads
from nextword.training.checkpointer import Checkpointer
from nextword.training.distributed import World
from nextword.training.evaluator import DEFAULT_CORPUS_PROMPTS, Evaluator, prompts_from
from nextword.training.loop import StepTimer, Stopped, Update, train_loop
from nextword.training.machine import Machine, cpu_bf16_native, detect, measured_peaks
from nextword.training.metrics import Metrics
from nextword.training.optimizer import build_optimizer
from nextword.training.progress import Progress
from nextword.training.runlog import RunLog, read_log, short_count
from nextword.training.schedule import rate_for
from nextword.training.spike_guard import SpikeGuard
from nextword.training.step import train_step
from nextword.training.stop import StopRequest


def train(cfg: RunConfig, *, start_time: float | None = None, stop_after: int | None = None, progress: bool = True,
          bf16_probe: Callable[[], bool] = cpu_bf16_native) -> dict[str, Any]:
    """Train (or resume) the run that `cfg` describes; return the closing summary.

    Started by torchrun, every process calls this: it joins the others, trains its share and, on rank 0 alone,
    prints, logs and writes the run's files. `start_time` (time.monotonic()) is when a time budget began: the
    command line counts its own start-up in it.
    """
    _refuse_run_dir_inside_code(cfg)
    world = distributed.world_from_env()
    mode = distributed.parallel_mode(cfg.train.parallel, world)
    device = distributed.device_name(cfg.train.device, world)
    joined = distributed.join(world, mode, device)
    try:
        with _quiet_unless(world.is_main), _holding(Path(cfg.train.run_dir), world):
            return _train(cfg, world, mode, device, start=time.monotonic() if start_time is None else start_time,
                          stop_after=stop_after, show_progress=progress and world.is_main, bf16_probe=bf16_probe)
    except BaseException as error:
        # The failed run's frames hold its model, and through it the process group, which leave() must free
        # while the interpreter is whole. Their local variables go; the traceback keeps its files and lines.
        if joined:
            traceback.clear_frames(error.__traceback__)
        raise
    finally:
        if joined:
            distributed.leave()


@dataclasses.dataclass(frozen=True)
class _ModelSetup:
    """How the model trains on this machine: in the chosen precision, wrapped for the run's parallelism, maybe
    compiled, with its optimizer."""

    model: GPT  # the model itself (under FSDP, its parameters are sharded in place)
    net: torch.nn.Module  # what runs forward and backward: the model wrapped, sharded or compiled
    optimizer: torch.optim.Optimizer
    precision: str
    precision_reason: str
    compiled: bool
    compile_reason: str


def _train(cfg: RunConfig, world: World, mode: str, device: str, *, start: float, stop_after: int | None,
           show_progress: bool, bf16_probe: Callable[[], bool]) -> dict[str, Any]:
    """Set the run up, resume it, train it with the loop and its components, and close it."""
    # The machine, the data, the model and how it trains here.
    t, run_dir = cfg.train, Path(cfg.train.run_dir)
    machine = detect(device, distributed.cpu_threads(t.threads, world), bf16_probe)
    torch.manual_seed(t.seed)  # the same on every rank: FSDP needs every rank to start from the same weights
    pretrained, tokenizer, train_split, val_split, peak, length = _resolve_config(cfg, world, machine, start,
                                                                                  show_progress)
    model = (pretrained or GPT(cfg.model)).to(machine.device)
    # Every rank reads its own windows of one global stream (see TokenLoader), so together they read what a
    # single process would.
    loader = TokenLoader(train_split, t.micro_batch, cfg.model.context, rank=world.rank, world_size=world.size,
                         seed=t.seed, rows=t.rows, device=machine.device)
    # The validation split must hold a window too: say so now, not after the precision race and the first steps.
    # It is read as windows whatever train.rows is, so that validation losses compare across the two.
    TokenLoader(val_split, 1, cfg.model.context)
    batch = global_batch(t, cfg.model.context, world.size)
    flops_per_token = model.flops_per_token()
    length = length.for_model(flops_per_token)
    setup = _model_setup(model, cfg, world, mode, machine)

    # Where the run stands: resumed from its newest checkpoint, or new; how long it trains.
    checkpointer = Checkpointer(run_dir, cfg, tokenizer.hash, model, setup.optimizer, loader, world, machine.device,
                                parallel=mode != "none")
    progress = checkpointer.resume()
    batch = keep_saved_batch(batch, progress.tokens_per_step, t, run_dir)
    progress.tokens_per_step = batch.tokens_per_step  # saved with every checkpoint
    early_end = _nothing_to_train(run_dir, progress, stop_after)
    if early_end is not None:
        return early_end
    batches = BatchWarmup(batch, t.batch_warmup)
    length.refuse_another(progress, batches, t, run_dir)
    if world.size > 1:
        torch.manual_seed(distributed.rank_seed(t.seed, world, progress.step))  # dropout differs between ranks
    if world.is_main:
        with _unwritable_run_dir_is_one_line(run_dir):
            cfg.save(run_dir / "config.toml")
            tokenizer.save(run_dir / "tokenizer.json")
    planner = plan_length(length, progress, batches, t, start)

    # Training. Rank 0 alone keeps the run's log; the other ranks write theirs nowhere. The log is closed however the run
    # ends, and a log that cannot be written, TensorBoard's included, ends it in one line.
    with (_unwritable_run_dir_is_one_line(run_dir),
          RunLog(run_dir / "log.jsonl" if world.is_main else os.devnull) as log):
        _announce(log, cfg, world, mode, machine, setup, flops_per_token, peak, batches, length, progress,
                  train_split.num_tokens)
        evaluator = Evaluator(model, tokenizer, val_split, cfg, device=machine.device, world=world,
                              autocast=precision.autocast_for(machine.device, setup.precision), log=log,
                              samples_on_every_rank=mode == "fsdp")
        if progress.step == 0:
            evaluator.evaluate(progress)
        metrics = Metrics(log, t, progress, tokens_per_step=batch.tokens_per_step, flops_per_token=flops_per_token,
                          peak_flops=peak, world=world, device=machine.device, run_dir=run_dir, start=start,
                          show_bar=show_progress, sparse=moe_layers(setup.model))
        with contextlib.closing(metrics), StopRequest(world).installed() as stop:
            stopped = train_loop(
                progress, _update(setup, loader, cfg, mode, machine), functools.partial(rate_for, t),
                batches, timer=StepTimer.for_device(machine.device),
                budget=TimeBudget(planner, world, log, train_split.num_tokens), metrics=metrics,
                spike_guard=SpikeGuard(t, checkpointer, metrics, world, log),
                evaluator=evaluator, checkpointer=checkpointer, stop=stop, stop_after=stop_after)
        if stopped:
            return _close_stopped(stopped, progress, log)
        return _close_finished(run_dir, progress, log, world, start, setup)


class _Resolved(NamedTuple):
    """What resolving the run's config found on the way: the model continued from, the data, the device's speed."""

    pretrained: GPT | None
    tokenizer: Tokenizer
    train_split: TokenShards
    val_split: TokenShards
    peak: float  # the best matmul rate measured here, the ceiling MFU is reported against
    length: RunLength


def _resolve_config(cfg: RunConfig, world: World, machine: Machine, start: float, show_progress: bool) -> _Resolved:
    """Fill in, in this one place, every field of `cfg` that the run decides rather than the user; the run's
    config.toml then records them, so a resume or a repeat of the run decides nothing again:

        model.*, data.tokenizer    a continued model's shape and tokenizer (model.init_from)
        data.data_dir              the prepared data
        model.vocab_size           the tokenizer's, where left at 0
        model.document_end         the tokenizer's end-of-document token, for model.doc_masking
        eval.prompts               the starts of a few validation documents of the user's data
        model shape, model.size    sized to the budget, or the size the run directory's run already has
    """
    pretrained = _pretrained(cfg)
    tokenizer, train_split, val_split = _prepare_data(cfg, world, show_progress)
    if not cfg.eval.prompts:
        own_data = any(source != DEFAULT_CORPUS_NAME for source in cfg.data.sources)
        cfg.eval.prompts = prompts_from(val_split, tokenizer) if own_data else DEFAULT_CORPUS_PROMPTS
    # One device's matmul FLOP/s: as measured now, which sizes a budgeted model to the compute it will get, and the
    # best seen here, the ceiling MFU is reported against.
    peak_now, peak = world.from_main(measured_peaks, machine)
    length = RunLength.from_config(cfg.train)
    if _sized_by_budget(cfg, length, pretrained) and not _keep_saved_size(cfg):
        _size_to_budget(cfg, world, peak_now, start + length.limit - time.monotonic(), train_split.num_tokens)
    return _Resolved(pretrained, tokenizer, train_split, val_split, peak, length)


@contextlib.contextmanager
def _holding(run_dir: Path, world: World) -> Iterator[None]:
    """Make the run directory and hold its lock while the run trains: a second command on the same directory is
    refused in one line instead of training beside the first (rank 0 holds it for a torchrun job)."""
    with _unwritable_run_dir_is_one_line(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    if not world.is_main:
        yield
        return
    with folder_lock(run_dir, "the run folder", "--run-dir"):
        yield


def _nothing_to_train(run_dir: Path, progress: Progress, stop_after: int | None) -> dict[str, Any] | None:
    """Say where a resumed run stands; the summary of a run with nothing left to train, else None."""
    if progress.step and not progress.finished():
        print(f"resuming {run_dir} from step {progress.step:,} of {progress.planned_steps:,}")
    if progress.finished():
        print(f"{run_dir} is a finished run ({progress.step:,} steps); its model is ready for `nextword sample "
              f"{run_dir}`. Start another with --run-dir DIR.")
        return {"run_dir": str(run_dir), "steps": progress.step, "finished_before": True}
    if stop_after is not None and progress.step >= stop_after:
        print(f"{run_dir} is at step {progress.step:,}, already at or past --stop-after {stop_after:,}: nothing to "
              "train. Run without --stop-after, or with a later step, to go on.")
        return {"run_dir": str(run_dir), "steps": progress.step, "interrupted": False}
    return None


def _prepare_data(cfg: RunConfig, world: World, show_progress: bool) -> tuple[Tokenizer, TokenShards, TokenShards]:
    """The tokenizer and the train and validation splits; sets the model's vocabulary (and, for document-masked
    attention, its end-of-document token) to the tokenizer's."""
    # Rank 0 prepares (or finds) the data and says so; the others then find it ready, without a word.
    with world.main_first(), _quiet_unless(world.is_main, stderr=True):
        prepared = prepare(cfg.data, clean=cfg.clean, engine=cfg.engine, progress=show_progress)
    tokenizer = prepared.tokenizer
    cfg.data.data_dir = str(prepared.data_dir)
    if cfg.model.vocab_size and cfg.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size = {cfg.model.vocab_size} is smaller than the tokenizer's "
                          f"{tokenizer.vocab_size}; set it to 0 to take the tokenizer's")
    cfg.model.vocab_size = cfg.model.vocab_size or tokenizer.vocab_size
    if cfg.model.doc_masking and cfg.model.document_end < 0:
        cfg.model.document_end = tokenizer.eos_id
    return tokenizer, TokenShards(prepared.data_dir, "train"), TokenShards(prepared.data_dir, "val")


def _refuse_run_dir_inside_code(cfg: RunConfig) -> None:
    """A code repository is read whole, so a run directory inside one would feed the run's own files (its
    config.toml) into the next command's data: the data would change between runs and the run could not resume."""
    run_dir = Path(cfg.train.run_dir).resolve()
    for source in cfg.data.sources:
        repository = code_repository(source)
        if repository is not None and run_dir.is_relative_to(repository.resolve()):
            raise ConfigError(f"{cfg.train.run_dir}: the run directory is inside the source {source}, whose files "
                              "are all read, the run's own included; give --run-dir a folder outside it")


def _sized_by_budget(cfg: RunConfig, length: RunLength, pretrained: GPT | None) -> bool:
    """Whether this run's shape comes from its budget: a budgeted run that names no size (model.size = "budget"),
    of a dense model trained from scratch."""
    return cfg.model.size == "budget" and length.governs == "budget" and not pretrained and not cfg.model.n_experts


def _keep_saved_size(cfg: RunConfig) -> bool:
    """A run directory that already holds a run keeps that run's size: take it from its config.toml, and say
    whether there was one."""
    saved = Path(cfg.train.run_dir) / "config.toml"
    if not saved.is_file():
        return False
    before = load_saved_run(saved).model
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads = before.n_layers, before.d_model, before.n_heads
    cfg.model.size = "fixed"
    return True


def _size_to_budget(cfg: RunConfig, world: World, peak: float, seconds_left: float, train_tokens: int) -> None:
    """Set the model's depth and width from the compute the rest of the budget buys (training/sizing.py)."""
    flops = sizing.training_flops(seconds_left, peak, world.size)
    choice = world.from_main(sizing.size_for_compute, flops, cfg.model, train_tokens)
    cfg.model = dataclasses.replace(choice.rung.model, size="fixed")  # fixed from now on: a resume keeps it
    print(f"model: {choice.describe()}")


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


def _model_setup(model: GPT, cfg: RunConfig, world: World, mode: str, machine: Machine) -> _ModelSetup:
    """Choose the precision, wrap the model for the run's parallelism (maybe compiled), and build its optimizer."""
    chosen, why = precision.choose_precision(cfg, world, machine, model)
    net, compiled, compile_reason = _parallel_model(model, mode, world, chosen, cfg, machine)
    optimizer = build_optimizer(model, cfg.train, chosen)  # after FSDP has sharded the parameters it optimizes
    return _ModelSetup(model, net, optimizer, chosen, why, compiled, compile_reason)


def _parallel_model(model: GPT, mode: str, world: World, chosen: str, cfg: RunConfig,
                    machine: Machine) -> tuple[torch.nn.Module, bool, str]:
    """The module that runs forward and backward (wrapped for DDP, sharded for FSDP, maybe compiled), whether
    torch.compile is on, and why.

    torch.compile compiles at the first forward and backward, not when called: a missing compiler or a failing
    inductor would end the run at its first step. So a compiled model is warmed up here, and trains eagerly
    where that fails on any rank.
    """
    wanted, why = _compile_choice(cfg.train.compile, machine, mode)
    if cfg.train.activation_checkpointing:
        distributed.checkpoint_blocks(model)
    warm_up = functools.partial(_warm_up, model=model, cfg=cfg, device=machine.device,
                                autocast=_step_autocast(mode, chosen, machine))
    if mode == "fsdp":
        # Compiled and warmed up before sharding, when the blocks' forward and backward need no other rank (the
        # warm-up holds the whole model's gradients once, as DDP does at every step). Under FSDP's bf16 weights
        # the blocks compile once more at the first step, for bf16; a compiler that failed would have failed here.
        if wanted:
            distributed.compile_blocks(model)
        failure = _agreed_failure(world, warm_up(model)) if wanted else None
        if failure:
            distributed.compile_blocks(model, compiled=False)
        net = distributed.wrap(model, mode, world, precision=chosen)
    else:
        net = distributed.wrap(model, mode, world, precision=chosen)
        compiled = torch.compile(net) if wanted else None
        failure = _agreed_failure(world, warm_up(compiled)) if compiled is not None else None
        if compiled is not None and not failure:
            net = compiled
    if failure:
        print(f"torch.compile failed, training eagerly: {failure}")
        return net, False, f"failed, so eager: {failure}"
    return net, wanted, why


def _compile_choice(choice: str, machine: Machine, mode: str) -> tuple[bool, str]:
    """Whether the run compiles its model, and why."""
    if choice == "off":
        return False, "off in the config"
    if choice == "auto" and not machine.is_cuda:
        return False, "on CPU the compile time does not pay back inside a short run"
    if mode == "fsdp":
        return True, "each block on its own under FSDP"
    return True, "set in the config" if choice == "on" else "on a GPU it pays back quickly"


def _warm_up(net: torch.nn.Module, *, model: GPT, cfg: RunConfig, device: torch.device,
             autocast: contextlib.AbstractContextManager) -> str | None:
    """One forward and backward of the compiled `net` on made-up tokens of a training batch's shape, so that
    torch.compile compiles both now; why it failed, in one line, or None.

    The run is left as it was: the loader is not read, the gradients are dropped, the buffers (a mixture of
    experts' routing counts) and the random streams (dropout's) are restored, and no other rank is waited for.
    """
    shape = (cfg.train.micro_batch, cfg.model.context)
    # Random tokens, as a real batch's (all-equal tokens would route every one to the same expert), from a
    # generator of their own.
    tokens = torch.randint(0, cfg.model.vocab_size, shape, device=device,
                           generator=torch.Generator(device=device).manual_seed(0))
    buffers = [buffer.clone() for buffer in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                distributed.gradient_sync(net, False):
            with autocast:
                loss = net(tokens, tokens)
                objective = loss + total_balance_loss(moe_layers(model), cfg.model.balance_coef)
            objective.backward()
        return None
    except Exception as error:  # whatever the compiler raised: the run can still train eagerly
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)


def _agreed_failure(world: World, failure: str | None) -> str | None:
    """Why the warm-up failed on the first rank where it did (None where it failed on none), the same on every
    rank, so that all train compiled or all eagerly."""
    failures = [(rank, why) for rank, why in enumerate(world.gather(failure)) if why]
    if not failures:
        return None
    rank, why = failures[0]
    return f"{why} (on rank {rank})" if world.size > 1 else why


def _step_autocast(mode: str, chosen: str, machine: Machine) -> contextlib.AbstractContextManager:
    """The autocast a training step runs under (none where FSDP's bf16 weights already compute in bf16)."""
    if not distributed.autocast_needed(mode, chosen):
        return contextlib.nullcontext()
    return precision.autocast_for(machine.device, chosen)


def _update(setup: _ModelSetup, loader: TokenLoader, cfg: RunConfig, mode: str, machine: Machine) -> Update:
    """One optimizer update of this run at a given learning rate, on a given global batch: train_step with
    everything else bound."""
    step = functools.partial(train_step, setup.net, setup.optimizer, grad_clip=cfg.train.grad_clip,
                             autocast=_step_autocast(mode, setup.precision, machine),
                             scaler=precision.scaler_for(machine.device, setup.precision),
                             balance_coef=cfg.model.balance_coef)
    # Partials of module-level functions, not a closure: a failed step's traceback keeps each frame's function,
    # and a closure over the model would keep the model (and its process group) alive past train's clear_frames.
    return functools.partial(_step_on, step=step, loader=loader)


def _step_on(lr: float, batch: GlobalBatch, *, step: Callable[..., tuple], loader: TokenLoader) -> tuple:
    """One update on `batch`; the loader moves on by the windows taken (a batch warmup's are fewer)."""
    return step(functools.partial(loader.next_batch, batch.micro_batch), batch.accumulation, lr)


def _sparsity(model: GPT, cfg: RunConfig) -> dict[str, Any]:
    """What the run record adds for a mixture of experts: the parameters a token uses, and the balance weight."""
    if not cfg.model.n_experts:
        return {}
    return {"params_active": model.num_params() - idle_params(model), "balance_coef": cfg.model.balance_coef}


def _announce(log: RunLog, cfg: RunConfig, world: World, mode: str, machine: Machine, setup: _ModelSetup,
              flops_per_token: float, peak: float, batches: BatchWarmup, length: RunLength, progress: Progress,
              train_tokens: int) -> None:
    """Log the run's record and print what is about to train, on what, how."""
    model, batch = setup.model, batches.full
    log.write(kind="run", **machine.describe(), cpu=machine.name, precision=setup.precision,
              precision_reason=setup.precision_reason, compile=setup.compiled,
              compile_reason=setup.compile_reason, parallel=mode, world_size=world.size,
              params=model.num_params(), params_non_embedding=model.num_params(non_embedding=True),
              flops_per_token=flops_per_token, peak_flops=peak, tokens_per_step=batch.tokens_per_step,
              accumulation=batch.accumulation, optimizer=cfg.train.optimizer, governs=length.governs,
              limit=length.limit, resumed_from=progress.step, planned_steps=progress.planned_steps,
              **_sparsity(model, cfg))
    print(f"model: {cfg.model.arch}, {model.num_params() / 1e6:.2f}M parameters "
          f"({model.num_params(non_embedding=True) / 1e6:.2f}M without embeddings), context {cfg.model.context}, "
          f"vocabulary {cfg.model.vocab_size}")
    if cfg.model.n_experts:
        m = cfg.model
        print(f"mixture of experts: {m.experts_per_token} of {m.n_experts} experts + {m.shared_experts} shared in "
              f"every {'' if m.moe_every == 1 else f'{m.moe_every}th '}block; "
              f"{(model.num_params() - idle_params(model)) / 1e6:.2f}M parameters active per token (MFU counts "
              f"these); balance loss × {m.balance_coef}")
    print(f"machine: {machine.name} ({machine.capability}), {machine.threads} threads, "
          f"peak {peak / 1e12:.2f} TFLOP/s measured")
    print(f"precision: {setup.precision} ({setup.precision_reason}); torch.compile: "
          f"{'on' if setup.compiled else 'off'} ({setup.compile_reason})")
    if world.size > 1 or mode != "none":
        print(f"parallel: {mode} over {world.size} process{'es' if world.size > 1 else ''}")
    planned = f" ({reads(batches.tokens_in(progress.planned_steps), train_tokens)})" if progress.planned_steps else ""
    # A run resumed from before it had a batch warmup keeps its full batch (Progress.batch_warmup_steps is 0).
    warming = batches.fraction and (progress.batch_warmup_steps or not progress.planned_steps)
    growing = f", from a quarter, then a half over the first {batches.fraction:.0%} of the steps" if warming else ""
    print(f"batch: {batch.tokens_per_step:,} tokens per step ({batch.describe()}){growing}; "
          f"{length.describe(progress)}{planned}")
    if cfg.train.optimizer == "muon":
        print(f"optimizer: Muon at lr {cfg.train.muon_lr:g} for the blocks' {len(model.hidden_matrices())} weight "
              f"matrices, AdamW at lr {cfg.train.lr:g} for the rest")


def _close_stopped(stopped: Stopped, progress: Progress, log: RunLog) -> dict[str, Any]:
    """Say how to go on from the checkpoint a stop saved; the stop's record."""
    again = ("the same command" if stopped.interrupted
             else "the same command without --stop-after (or with a later step)")
    print(f"saved {stopped.checkpoint}; run {again} to resume")
    summary = {"interrupted": stopped.interrupted, "step": progress.step, "checkpoint": str(stopped.checkpoint)}
    log.write(kind="stop", **summary)
    return summary


def _close_finished(run_dir: Path, progress: Progress, log: RunLog, world: World, start: float,
                    setup: _ModelSetup) -> dict[str, Any]:
    """The closing summary: logged and printed on rank 0; the other ranks return their step."""
    if not world.is_main:
        return {"run_dir": str(run_dir), "steps": progress.step, "rank": world.rank}
    evals = [r for r in read_log(run_dir / "log.jsonl") if r.get("kind") == "eval"]
    last = evals[-1] if evals else {}
    summary = {"run_dir": str(run_dir), "steps": progress.step, "tokens": progress.tokens,
               "precision": setup.precision, "precision_reason": setup.precision_reason,
               "val_loss": last.get("val_loss"), "val_bpb": last.get("val_bpb"),
               "wall_seconds": time.monotonic() - start, "train_seconds": progress.train_seconds,
               "spike_rollbacks": progress.spike_rollbacks, "spike_skipped_steps": progress.spike_skipped_steps,
               "sample": (last.get("samples") or [{}])[0]}
    log.write(kind="summary", **summary)
    print(f"\ndone: {summary['steps']:,} steps, {short_count(summary['tokens'], '.1f')} tokens in "
          f"{summary['wall_seconds']:.0f} s; validation loss {summary['val_loss']:.3f}, "
          f"{summary['val_bpb']:.3f} bits per byte")
    if summary["spike_rollbacks"]:
        print(f"loss spikes: {summary['spike_rollbacks']} rollback(s), the data of "
              f"{summary['spike_skipped_steps']:,} steps skipped")
    print(f"next: nextword sample {summary['run_dir']}   ·   nextword trace {summary['run_dir']}")
    return summary


# Why a run directory's files (config, tokenizer, log, TensorBoard) may fail to be written: a full disk or quota,
# no permission, a read-only file system, or a file where a folder should be.
RUN_DIR_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST}


@contextlib.contextmanager
def _unwritable_run_dir_is_one_line(run_dir: Path) -> Iterator[None]:
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
def _quiet_unless(is_main: bool, *, stderr: bool = False) -> Iterator[None]:
    """Only rank 0 prints; the other ranks' stdout goes nowhere, and with `stderr` their stderr too (their errors
    still reach the user: as exceptions, which the command line prints)."""
    if is_main:
        yield
        return
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere), \
            (contextlib.redirect_stderr(nowhere) if stderr else contextlib.nullcontext()):
        yield
