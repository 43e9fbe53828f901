"""One training job over many processes: torchrun setup, the process group, and DDP and FSDP2 wrapping.

torchrun starts one process per GPU (or per CPU worker) and tells each, through environment variables, its RANK
(0 … WORLD_SIZE-1 over all nodes), its LOCAL_RANK on its node and where to meet the others. Every process runs
the same training loop on its own slice of each batch:

    ddp    each rank holds the whole model; after backward the gradients are averaged over ranks (all-reduce),
           so every rank takes the same optimizer step. Inner micro-steps of an accumulation skip the all-reduce.
    fsdp   FSDP2 (`fully_shard`): each rank holds 1/world of every parameter, gradient and optimizer moment;
           a block's full weights are gathered just before it runs and freed after, so a model larger than one
           GPU's memory still trains.

Everything per-rank (data stream, seed, logging) is derived from the rank, and checkpoints are written by all
ranks through torch.distributed.checkpoint in safetensors files (sharded.py), so a run can resume at another world
size.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from nextword.errors import ConfigError, NextwordError
from nextword.training.machine import usable_cores

# A collective that waits longer than this raises instead of hanging: long enough for rank 0 to prepare a
# small corpus or write a large checkpoint while the others wait, short enough that a stuck job ends.
TIMEOUT = timedelta(minutes=10)
PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job. A single process is rank 0 of a world of 1."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, logs and writes the run's files."""
        return self.rank == 0

    @property
    def joined(self) -> bool:
        """Whether a process group is up, so collectives can be called."""
        return dist.is_available() and dist.is_initialized()

    def from_main(self, compute: Callable[..., T], *args: Any) -> T:
        """`compute(*args)` run on rank 0 alone, its result sent to every rank: for decisions that must agree
        (a measured precision, a planned step count) but would differ if each rank measured for itself."""
        if not self.joined or self.size == 1:
            return compute(*args)
        box = [compute(*args) if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over all ranks (the value itself in a single process)."""
        if not self.joined or self.size == 1:
            return value
        total = value.detach().clone().float()
        dist.all_reduce(total)
        return total / self.size

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one."""
        if not self.joined or self.size == 1:
            return flag
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        votes = torch.tensor([int(flag)], device=device)
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        return bool(votes.item())

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank ([value] in a single process)."""
        if not self.joined or self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.joined and self.size > 1:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. writes a shared cache); the others run it after, finding it done."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def world_from_env() -> World:
    """This process's place, from the variables torchrun sets (a world of 1 when it was not started by torchrun)."""
    try:
        return World(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                     size=int(os.environ.get("WORLD_SIZE", "1")),
                     local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError as e:
        raise ConfigError(f"RANK, LOCAL_RANK, WORLD_SIZE or LOCAL_WORLD_SIZE is not a number ({e}); "
                          "start the job with torchrun") from None


def recording_errors(run: Callable[..., T]) -> Callable[..., T]:
    """`run` wrapped so that a rank that fails leaves torchrun's failure report why: for a NextwordError (bad
    input, a full disk) the one line the user is told, for anything else its traceback (torch's `record`)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    recorded = record(run)

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return recorded(*args, **kwargs)
        except NextwordError as error:
            _write_error_file(f"nextword: {error}")  # in place of the traceback `record` wrote
            raise

    return wrapper


def _write_error_file(message: str) -> None:
    """The error file torchrun reads for its failure report, in the layout torch's own error handler writes."""
    error = {"message": message, "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}
    with contextlib.suppress(OSError):  # the report then lacks the reason; the rank's stderr still has it
        Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text(json.dumps({"message": error}))


def parallel_mode(requested: str, world: World) -> str:
    """The data-parallel scheme the run uses: auto means DDP when started with more than one process."""
    if requested not in PARALLEL_MODES:
        raise ConfigError(f"train.parallel = {requested!r}; use one of {', '.join(PARALLEL_MODES)}")
    if requested == "auto":
        return "ddp" if world.size > 1 else "none"
    if requested == "none" and world.size > 1:
        raise ConfigError(f"train.parallel = none, but torchrun started {world.size} processes; use ddp or fsdp, "
                          "or start one process")
    if requested == "ddp" and world.size == 1:
        return "none"  # DDP over one process only adds hooks
    return requested


def device_name(requested: str, world: World) -> str:
    """Each process on a node takes the GPU numbered by its local rank."""
    wants_cuda = requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())
    if world.size == 1 or not wants_cuda:
        return requested
    if requested not in ("auto", "cuda"):
        raise ConfigError(f"train.device = {requested!r}; with torchrun use auto or cuda: each process takes the "
                          "GPU of its local rank")
    return f"cuda:{world.local_rank}"


def cpu_threads(requested: int, world: World) -> int:
    """Threads for one process: the cores are shared by the processes on this node (0: let the machine decide)."""
    if requested or world.local_size == 1:
        return requested
    return max(1, usable_cores() // world.local_size)


def join(world: World, mode: str, device: str) -> bool:
    """Join the job's process group (gloo on CPU, NCCL on GPUs); True when this call started it.

    FSDP needs a group even in one process, so a single-process FSDP run gets a private one-member group.
    """
    if dist.is_initialized() or (world.size == 1 and mode != "fsdp"):
        return False
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"rank {world.rank} needs GPU {world.local_rank}, but this machine has "
                              f"{torch.cuda.device_count()}; start at most one process per GPU")
        torch.cuda.set_device(world.local_rank)
    # gloo stays beside NCCL for the small objects and CPU tensors that checkpointing moves.
    backend = "cpu:gloo,cuda:nccl" if on_cuda else "gloo"
    # This module binds `group.WORLD` as a default argument when first imported (torch._dynamo imports it, and
    # torch.distributed.checkpoint imports torch._dynamo). Imported after the group exists, it would hold the group
    # for good: destroy_process_group could not free it, and its threads would still run while the interpreter exits.
    importlib.import_module("torch.distributed.nn.functional")
    if world.size == 1 and "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=TIMEOUT)
    else:
        dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)
    return True


def leave() -> None:
    """Destroy the process group and let go of what torch still holds of it, so that the group is freed and its
    threads (gloo's workers and socket loop) are joined now, while the interpreter is whole.

    A group that outlives destroy_process_group lives until the process exits, and its threads with it: a worker
    that drops a finished collective's tensors while the interpreter shuts down must take the GIL, is ended inside
    a C++ destructor instead, and the process aborts ("terminate called without an active exception") after a run
    that succeeded.
    """
    if not dist.is_initialized():
        return
    dist.destroy_process_group()
    _clear_dtensor_caches()
    gc.collect()  # FSDP's modules and their sharding states refer to each other: only the collector frees them


# DTensor's caches whose entries hold device meshes (a mesh holds its process groups): (module, what to call).
_MESH_HOLDING_CACHES = (
    ("torch.distributed.tensor.debug", "_clear_sharding_prop_cache"),
    ("torch.distributed.tensor._redistribute", "_gen_transform_infos.cache_clear"),
    ("torch.distributed.tensor._redistribute", "_planner_cache.clear"),
    ("torch.distributed.tensor._collective_utils", "MeshTopoInfo.build_from_mesh.cache_clear"),
)


def _clear_dtensor_caches() -> None:
    """Empty the caches of sharding and redistribution plans that FSDP filled, so that they let go of the group."""
    if "torch.distributed.tensor" not in sys.modules:
        return  # no DTensor was made, so nothing is cached
    for module_name, path in _MESH_HOLDING_CACHES:
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError:  # an older torch keeps its caches elsewhere; its group then lives until exit
            continue
        for name in path.split("."):
            target = getattr(target, name, None)
        if callable(target):
            target()


def rank_seed(seed: int, world: World, step: int) -> int:
    """A seed for this rank's random draws (dropout) from `step` on: distinct per rank, repeatable on resume."""
    return seed + 1_000_003 * world.rank + 7919 * step


def wrap(model: nn.Module, mode: str, world: World, *, precision: str) -> nn.Module:
    """The module to train: the model itself (none), a DDP wrapper around it, or the model sharded in place by
    FSDP2, one unit per transformer block plus the root (embeddings, final norm, head)."""
    if mode == "ddp":
        device_ids = [world.local_rank] if next(model.parameters()).is_cuda else None
        # The model's buffers are constant RoPE tables and each rank's own routing counts (model/moe.py): none
        # should be overwritten with rank 0's at every forward, DDP's default.
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    if mode != "fsdp":
        return model
    if precision == "fp16":
        # Not supported: the policy below knows bf16 and fp32, and GradScaler would find overflows per shard, so
        # ranks could disagree about skipping a step.
        raise ConfigError("train.precision = fp16 is not supported under train.parallel = fsdp (on a GPU without "
                          "native bf16, auto chooses fp16); set train.precision = fp32, or train.parallel = ddp")
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 weights for the matmuls, gradients reduced and master weights kept in fp32.
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision == "bf16" else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def compile_blocks(model: nn.Module, compiled: bool = True) -> None:
    """Compile each block on its own, in place (parameter names stay as they are), or undo that: how FSDP
    compiles, so that the gathers between blocks stay outside the compiled graphs. Call it before sharding."""
    for block in model.blocks:
        if compiled:
            block.compile()
        else:
            # Module.compile only sets this attribute, which Module.__call__ runs in place of the forward while it
            # is set (torch/nn/modules/module.py); unset, the block runs eagerly again.
            block._compiled_call_impl = None


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each block's activations during backward instead of keeping them: about a third more compute
    for a fraction of the activation memory. The wrapper's state-dict hooks keep parameter names unchanged."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        checkpoint_wrapper,
    )

    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block)


def autocast_needed(mode: str, precision: str) -> bool:
    """Under FSDP's bf16 policy the weights are already bf16 when they compute; autocast would only add casts."""
    return not (mode == "fsdp" and precision == "bf16")


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Let backward reduce gradients over ranks only when `enabled` (the last micro-step of an accumulation)."""
    module = getattr(module, "_orig_mod", module)  # under torch.compile
    if isinstance(module, nn.parallel.DistributedDataParallel) and not enabled:
        with module.no_sync():
            yield
        return
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(enabled)
    yield
