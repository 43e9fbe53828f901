"""The sharded checkpoint layout: over several processes, every rank writes its own part of the state through
torch.distributed.checkpoint (DCP) in safetensors files.

Every rank writes the parameters and optimizer moments it holds (replicated tensors are written once), and
records where its slice sits in the full tensor; loading reads whatever slices the new layout needs, so the
world size may change between save and load. DCP's default format pickles its metadata; the safetensors
storage used here keeps both data and layout in safetensors headers, so nothing is unpickled on load.
Only tensors are saved: optimizer hyperparameters come from the config of the resumed run.

Beside the shards (shard-*.safetensors), rank 0 writes the whole model, gathered from every rank, as
model.safetensors, so that `nextword sample` and `export` read it as they read any checkpoint. The rest of the
folder (trainer.json, the manifest, the temporary name and the rename) is written as in every layout, by
checkpoint.save_checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from nextword.training.checkpoint import attempt_on_main, failure_reason, load_state, read_manifest
from nextword.training.distributed import World

SHARDED = "sharded"  # manifest "layout" of a checkpoint written by several processes


class ShardedStorage:
    """Each rank writes its part of the weights and optimizer state; rank 0 the whole model besides."""

    def layout(self, world: World) -> dict[str, Any]:
        return {"layout": SHARDED, "world_size": world.size}

    def write(self, folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, world: World) -> str | None:
        failure = _save_shards(folder, model, optimizer)
        if failure is None:
            weights = full_model_state(model)  # a collective: every rank takes part, rank 0 receives
            failure = attempt_on_main(world, save_file, weights, str(folder / "model.safetensors"))
        return failure


def _save_shards(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """save_sharded, returning why it failed on the first rank that did (None when none did)."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        save_sharded(folder, model, optimizer)
    except CheckpointException as e:  # DCP gathers every rank's failure and raises them on all ranks
        rank = min(e.failures)
        error, _ = e.failures[rank]
        return f"{failure_reason(error)} on rank {rank}"
    return None


def is_sharded(path: Path) -> bool:
    return read_manifest(path).get("layout") == SHARDED


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a checkpoint of either layout into a model of any parallel kind; return the trainer state.

    A sharded checkpoint is read slice by slice, at whatever world size it was written; a single-file one
    is read whole on every rank and sharded as the model is.
    """
    if is_sharded(path):
        load_sharded(path, model, optimizer)
    else:
        from safetensors.torch import load_file

        weights = load_file(str(path / "model.safetensors"))
        state = load_state(path / "state.pt", "cpu")
        load_full(model, optimizer, weights, state["optimizer"])
    return json.loads((path / "trainer.json").read_text())


def _state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer)


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write this rank's part of the model and optimizer state into `folder` (a collective: every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    model_state, optim_state = _state_dicts(model, optimizer)
    with _single_process_allowed():
        dcp.save({"model": model_state, "optimizer": optim_state["state"]},
                 storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True),
                 no_dist=not dist.is_initialized())


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Fill the model and optimizer from a sharded checkpoint written at any world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_state_dict

    model_state, optim_state = _state_dicts(model, optimizer)
    saved = {"model": model_state, "optimizer": optim_state["state"]}
    with _single_process_allowed():
        dcp.load(saved, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=saved["model"],
                   optim_state_dict={"state": saved["optimizer"], "param_groups": optim_state["param_groups"]})


@contextlib.contextmanager
def _single_process_allowed() -> Iterator[None]:
    """DCP warns whenever it runs without a process group; here that is intended (a resume in one process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU, gathered from every rank (a collective; empty on other ranks)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {name: t.contiguous() for name, t in get_model_state_dict(model, options=options).items()}


def full_optimizer_state_for(model: nn.Module, optimizer: torch.optim.Optimizer,
                             saved: dict[str, Any]) -> dict[str, Any]:
    """A single-process optimizer state dict (moments keyed by parameter number) keyed by parameter name
    instead, so it can be loaded into a sharded model whose optimizer numbers its parameters the same way."""
    names = {id(p): name for name, p in _plain_named_parameters(model)}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    _, current = _state_dicts(model, optimizer)
    return {"state": {order[int(i)]: s for i, s in saved["state"].items()}, "param_groups": current["param_groups"]}


def load_full(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
              optimizer_state: dict[str, Any]) -> None:
    """Load a single-process checkpoint's full weights and optimizer state into a (possibly sharded) model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=weights,
                   optim_state_dict=full_optimizer_state_for(model, optimizer, optimizer_state),
                   options=StateDictOptions(full_state_dict=True))


def _plain_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Parameter names without the prefixes that wrappers (activation checkpointing, compile) add."""
    for name, p in model.named_parameters():
        yield name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", ""), p
