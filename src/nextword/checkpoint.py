"""Checkpoints that a crash cannot break, and that nothing but tensors can be loaded from.

A checkpoint is a folder `checkpoints/step_NNNNNNN/` in the run directory:

    model.safetensors   the weights (safetensors: no code can hide in it)
    state.pt            optimizer state and RNG states (tensors and numbers only; read with weights_only=True)
    trainer.json        step, tokens seen, planned steps, loader position, precision
    manifest.json       every file's size and SHA-256, the step, the config and tokenizer hashes

It is written under a temporary name, fsynced, then renamed into place, and its manifest is written last: a
folder without a valid manifest is not a checkpoint. Resume takes the newest one that verifies and says why it
skipped any newer one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from nextword.config import RunConfig, load
from nextword.errors import CheckpointError
from nextword.data.tokenizer import Tokenizer

MANIFEST = "manifest.json"
STEP_PREFIX = "step_"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def config_hash(cfg: RunConfig) -> str:
    """A hash of what makes weights compatible: the model's shape (training settings may change on resume)."""
    shape = {k: v for k, v in cfg.to_dict()["model"].items() if k not in ("init_from", "dropout")}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], cfg: RunConfig, tokenizer_hash: str, keep_last: int) -> Path:
    """Write a complete checkpoint atomically, then drop all but the newest `keep_last`."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(_unwrap(model), str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, tmp / "state.pt")
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        for name in files:
            _fsync(tmp / name)
        manifest = {"step": step, "files": files, "config_hash": config_hash(cfg), "tokenizer_hash": tokenizer_hash}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync(tmp / MANIFEST)
        if final.exists():  # the same step saved again (e.g. interrupted right after a save): replace it whole
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    except (OSError, ValueError, KeyError, TypeError):
        return "no valid manifest (an unfinished write)"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its SHA-256 (damaged on disk)"
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint that verifies; each newer broken one is named in a one-line warning."""
    for path in reversed(list_checkpoints(run_dir)):
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


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load weights (and optimizer and RNG state when an optimizer is given); return the trainer state."""
    missing, unexpected = load_model(_unwrap(model), str(path / "model.safetensors"), strict=False, device=str(device))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit this model (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); the checkpoint belongs to another model shape")
    if optimizer is not None:
        state = torch.load(path / "state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    return json.loads((path / "trainer.json").read_text())


def load_for_inference(run_dir: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Tokenizer, RunConfig]:
    """The newest valid checkpoint's model (in eval mode), with the run's tokenizer and resolved config."""
    from nextword.model import GPT

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.toml); train one with `nextword train`")
    cfg = load(run_dir / "config.toml")
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
