"""Checkpoints that a crash cannot break, and that nothing but tensors can be loaded from.

A checkpoint is a folder `checkpoints/step_NNNNNNN/` in the run directory:

    model.safetensors   the weights (safetensors: no code can hide in it)
    state.pt            optimizer state and RNG states (tensors and numbers only; read with weights_only=True)
    trainer.json        step, tokens seen, planned steps, loader position, precision
    manifest.json       every file's size and SHA-256, the step, the config and tokenizer hashes

That is the single-file layout, which one process writes. A run over several processes writes the sharded layout
instead (sharded.py): each rank's part of the weights and optimizer state in shard-*.safetensors, beside the
whole model.safetensors and trainer.json. Both are saved by the one path here, save_checkpoint, with the layout's
storage writing the weights and optimizer state.

It is written under a temporary name, fsynced, then renamed into place, and its manifest is written last: a
folder without a valid manifest is not a checkpoint. Resume takes the newest one that verifies and says why it
skipped any newer one. A save that fails (a full disk, no permission) removes its own temporary folder, leaves
every earlier checkpoint as it was and raises CheckpointError; a model with NaN or Inf weights is never saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from nextword.config import ADDED_FIELDS, RunConfig, load_saved_run
from nextword.data.tokenizer import Tokenizer
from nextword.errors import CheckpointError
from nextword.training.distributed import World

MANIFEST = "manifest.json"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
# What a failed write raises: torch.save reports a full disk as a RuntimeError, safetensors as a SafetensorError.
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)
# Seconds to pause inside every save, after the files are written and before the manifest: lets the fault tests
# kill a training process in the middle of a checkpoint write. Unset in normal use.
SAVE_DELAY_ENV = "NEXTWORD_TEST_SAVE_DELAY"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


SPARSE_FIELDS = ("n_experts", "experts_per_token", "shared_experts", "moe_every", "d_expert")
# Fields that do not change which weights fit: where training starts from, and how it goes.
NOT_SHAPE = ("size", "init_from", "dropout", "balance_coef", "zero_init_projections", "zero_init_head", "document_end")
# Options added after checkpoints existed, left out while off, so a model without them hashes as it did before.
OFF_VALUES = {"mlp_activation": "", "logit_softcap": 0.0,
              **{key: value for (section, key), value in ADDED_FIELDS.items()
                 if section == "model" and key not in NOT_SHAPE}}


def config_hash(cfg: RunConfig) -> str:
    """A hash of what makes weights compatible: the model's shape (training settings may change on resume)."""
    shape = {k: v for k, v in cfg.to_dict()["model"].items()
             if k not in NOT_SHAPE and not (k in OFF_VALUES and v == OFF_VALUES[k])}
    if not cfg.model.n_experts:  # a dense model hashes as it did before mixtures of experts were added
        for key in SPARSE_FIELDS:
            del shape[key]
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


class Storage(Protocol):
    """How a checkpoint's weights and optimizer state are written. The rest of a checkpoint (trainer.json, the
    manifest, the temporary folder and its rename, pruning) is the same in every layout: save_checkpoint."""

    def layout(self, world: World) -> dict[str, Any]:
        """What the manifest records of the layout, beside the step, the files and the hashes."""
        ...

    def write(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              world: World) -> str | None:
        """Write into `folder` (every rank calls it); None when done, else why it failed, the same on every rank."""
        ...


class SingleFileStorage:
    """One process writes it all: the weights in model.safetensors, optimizer and RNG state in state.pt."""

    def layout(self, world: World) -> dict[str, Any]:
        return {}

    def write(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              world: World) -> str | None:
        return attempt_on_main(world, _write_whole_state, folder, model, optimizer)


def _write_whole_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    save_model(_unwrap(model), str(folder / "model.safetensors"))
    _save_state({"optimizer": optimizer.state_dict(), "rng": rng_state()}, folder / "state.pt")


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], cfg: RunConfig, tokenizer_hash: str, keep_last: int,
                    storage: Storage = SingleFileStorage(), world: World = World()) -> Path:
    """Write a complete checkpoint atomically in `storage`'s layout, then drop all but the newest `keep_last`.

    Over several processes every rank calls it (a collective): each writes its part through `storage`, and rank 0
    the rest. Raises CheckpointError, on every rank alike and with every earlier checkpoint untouched, when the
    state is not finite or a write fails.
    """
    root = checkpoints_dir(run_dir)
    final = root / f"{STEP_PREFIX}{step:07d}"
    if world.any(not all_finite(model, optimizer)):
        raise CheckpointError(
            f"{final}: not saved, the model or optimizer state holds NaN or Inf; the last good checkpoint in "
            f"{root} stays the newest. Lower train.lr or check the data, then resume")
    # Named after rank 0's process, so that a folder left by a crash is seen as abandoned.
    tmp = root / f"{TMP_PREFIX}{final.name}-{world.from_main(os.getpid)}"
    manifest = {"step": step, **storage.layout(world), "files": {},  # "files": filled in once they are written
                "config_hash": config_hash(cfg), "tokenizer_hash": tokenizer_hash, "optimizer": cfg.train.optimizer}
    try:
        failure = attempt_on_main(world, _fresh_folder, tmp)
        if failure is None:
            failure = storage.write(tmp, model, optimizer, world)
        if failure is None:
            failure = attempt_on_main(world, _seal, tmp, final, trainer_state, manifest)
    except BaseException:  # an interrupt: nothing half-written stays behind
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if failure is not None:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        world.barrier()  # no rank stops (and gets the job torn down) before rank 0 has cleaned up
        raise CheckpointError(write_failure_message(final, failure))
    if world.is_main:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()  # no rank goes on (and may save again) before the checkpoint is in place
    return final


def attempt_on_main(world: World, write: Callable[..., None], *args: Any) -> str | None:
    """Run `write(*args)` on rank 0 alone; every rank learns why it failed (None when it did not)."""
    def attempt() -> str | None:
        try:
            write(*args)
        except WRITE_ERRORS as e:
            return failure_reason(e)
        return None

    return world.from_main(attempt)


def all_finite(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether this process's part of the weights and optimizer moments is free of NaN and Inf: one in a
    checkpoint would poison every run resumed from it. Read back once per save, never per step."""
    tensors = list(model.parameters())
    tensors += [v for state in optimizer.state.values() for v in state.values()
                if torch.is_tensor(v) and v.is_floating_point()]
    local = (t.to_local() if hasattr(t, "to_local") else t for t in tensors)  # FSDP's shards are DTensors
    return all(bool(torch.isfinite(t).all()) for t in local)


def _fresh_folder(tmp: Path) -> None:
    """An empty temporary folder for a checkpoint, after removing any that crashed saves left."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_writes(tmp.parent)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()


def _seal(tmp: Path, final: Path, trainer_state: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Write trainer.json, hash and fsync every file, write the manifest last, then rename the folder into place."""
    (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    for name in files:
        _fsync(tmp / name)
    time.sleep(float(os.environ.get(SAVE_DELAY_ENV) or 0))
    (tmp / MANIFEST).write_text(json.dumps({**manifest, "files": files}, indent=1))
    _fsync(tmp / MANIFEST)
    move_into_place(tmp, final)


class _WriteErrorKeeper:
    """A file for torch.save that keeps the OSError of a failed write: torch reports that as a RuntimeError about
    zip positions ("unexpected pos 452928 vs 452880"), which says nothing of a full disk."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def _save_state(state: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as file:
        keeper = _WriteErrorKeeper(file)
        try:
            torch.save(state, keeper)
        except RuntimeError:
            if keeper.error is not None:
                raise keeper.error from None
            raise


def move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder to its final name. A folder already there for this step (saved again after a
    resume) is moved aside first and deleted only once the new one is in place."""
    aside = final.with_name(f"{TMP_PREFIX}old-{final.name}-{os.getpid()}")
    if final.exists():
        final.rename(aside)
    tmp.rename(final)
    _fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def remove_abandoned_writes(root: Path) -> None:
    """Temporary folders left by a process that died while saving: never checkpoints, only wasted space."""
    for path in root.glob(f"{TMP_PREFIX}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and not (pid.isdigit() and _process_alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing anything yet: whatever it left is from an earlier failure
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def failure_reason(error: BaseException) -> str:
    """Why a write failed, in a few words ("No space left on device")."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def write_failure_message(final: Path, reason: str) -> str:
    try:
        free = f"{shutil.disk_usage(final.parent).free / 2**20:,.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    return (f"{final}: checkpoint not written ({reason}; {free}); the earlier checkpoints are intact. Free disk "
            f"space or fix the folder's permissions, then run the same command to resume")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders by step, oldest first (whether or not they verify)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX))


def verify(path: Path) -> str | None:
    """None when the checkpoint is complete and intact, else what is wrong with it."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError
        for expected in files.values():
            int(expected["bytes"]), str(expected["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no valid manifest (an unfinished write)"
    for name, expected in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            return f"the manifest names {name!r}, which is not a file of this folder"
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != int(expected["bytes"]):
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its SHA-256 (damaged on disk)"
    return None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder was saved at, from its name."""
    return int(path.name.removeprefix(STEP_PREFIX))


def latest_checkpoint(run_dir: str | Path, at_most: int | None = None) -> Path | None:
    """The newest checkpoint that verifies (saved at step `at_most` or before, when given); each newer broken one
    is named in a one-line warning."""
    for path in reversed(list_checkpoints(run_dir)):
        if at_most is not None and checkpoint_step(path) > at_most:
            continue
        problem = verify(path)
        if problem is None:
            return path
        print(f"warning: skipping checkpoint {path}: {problem}", file=sys.stderr)
    return None


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())


def check_compatible(path: Path, cfg: RunConfig, tokenizer_hash: str) -> None:
    """Refuse a checkpoint made for another model shape or another tokenizer."""
    manifest = read_manifest(path)
    if manifest["tokenizer_hash"] != tokenizer_hash:
        raise CheckpointError(
            f"{path}: trained with tokenizer {manifest['tokenizer_hash'][:12]}, but this run's data uses "
            f"{tokenizer_hash[:12]}; use the run's own data (its config.toml) or start a new --train.run_dir")
    if manifest["config_hash"] != config_hash(cfg):
        raise CheckpointError(
            f"{path}: saved for another model shape than the config asks for; keep [model] as in "
            f"{Path(path).parents[1] / 'config.toml'} or start a new --train.run_dir")


def check_same_optimizer(path: Path, cfg: RunConfig) -> None:
    """Refuse to resume under another train.optimizer: the saved state is another optimizer's (AdamW's moments
    are not Muon's momentum). A checkpoint from before the manifest named it was saved by AdamW."""
    saved = read_manifest(path).get("optimizer", "adamw")
    if saved != cfg.train.optimizer:
        raise CheckpointError(
            f"{path}: saved with train.optimizer = {saved}, but this run asks for {cfg.train.optimizer}; resume with "
            f"train.optimizer = {saved}, or start a new --train.run_dir (model.init_from takes exported weights)")


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load weights (and optimizer and RNG state when an optimizer is given); return the trainer state."""
    try:
        missing, unexpected = load_model(_unwrap(model), str(path / "model.safetensors"), strict=False,
                                         device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / 'model.safetensors'}: unreadable weights ({e}); delete {path} to resume "
                              "from the checkpoint before it") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit this model (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); the checkpoint belongs to another model shape")
    if optimizer is not None:
        state = load_state(path / "state.pt", device)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    try:
        return json.loads((path / "trainer.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / 'trainer.json'}: unreadable ({e}); delete {path} to resume from the one "
                              "before it") from None


def load_state(path: Path, device: torch.device | str) -> dict[str, Any]:
    """Optimizer and RNG state, unpickled with weights_only=True: tensors, numbers and containers only, so a
    crafted file cannot run code; anything else in it is refused before it is built. A file nextword did not write
    is one line, whatever reads it: one process, or every rank of a sharded model."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused, it is not optimizer state nextword wrote ({first_line}); "
                              f"delete {path.parent} to resume from the checkpoint before it") from None
    if not isinstance(state, dict) or not {"optimizer", "rng"} <= state.keys():
        raise CheckpointError(f"{path}: not optimizer state nextword wrote; delete {path.parent} to resume from "
                              "the checkpoint before it")
    return state


def load_for_inference(run_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Tokenizer, RunConfig]:
    """The newest valid checkpoint's model (in eval mode), with the run's tokenizer and resolved config."""
    from nextword.model import GPT

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.toml); train one with `nextword train`")
    cfg = load_saved_run(run_dir / "config.toml")
    tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
    path = latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir}: no valid checkpoint yet; run `nextword train --train.run_dir {run_dir}`")
    check_compatible(path, cfg, tokenizer.hash)
    model = GPT(cfg.model).to(device)
    load_checkpoint(path, model, device=device)
    return model.eval(), tokenizer, cfg


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile or DDP wrappers, so weight names stay the same."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
