"""The checkpointer: when a run saves, what it resumes from, and where a loss-spike rollback goes back to.

It saves every train.ckpt_every steps, at the end and on a stop, in the layout the run needs (one process: the
single-file layout of checkpoint.py; several, or FSDP: the sharded one of sharded.py), and times each save for
the budget's plan. At the start it resumes from the newest checkpoint that verifies, refusing one made for
another model shape, tokenizer or stream of training data.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch

from nextword.config import RunConfig
from nextword.data.loader import TokenLoader
from nextword.data.shards import read_index
from nextword.errors import CheckpointError
from nextword.training import sharded
from nextword.training.checkpoint import (
    SingleFileStorage,
    check_compatible,
    check_same_optimizer,
    checkpoint_step,
    checkpoints_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from nextword.training.distributed import World
from nextword.training.progress import Progress


class Checkpointer:
    """Saves and loads the run's model, optimizer, loader position and progress in its run directory."""

    def __init__(self, run_dir: Path, cfg: RunConfig, tokenizer_hash: str, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, loader: TokenLoader, world: World, device: torch.device, *,
                 parallel: bool) -> None:
        self.run_dir, self.cfg, self.tokenizer_hash = run_dir, cfg, tokenizer_hash
        self.model, self.optimizer, self.loader, self.world, self.device = model, optimizer, loader, world, device
        self.parallel = parallel  # DDP or FSDP: every rank writes its part
        self.storage = sharded.ShardedStorage() if parallel else SingleFileStorage()
        self.seconds = 1.0 + 4 * model.num_params() / 200e6  # a guess until the first save is timed

    @property
    def folder(self) -> Path:
        return checkpoints_dir(self.run_dir)

    def due(self, step: int) -> bool:
        """At its interval; the loop saves at the end and on a stop besides."""
        every = self.cfg.train.ckpt_every
        return bool(every) and step % every == 0

    def save(self, progress: Progress) -> Path:
        began = time.monotonic()
        progress.loader = self.loader.state_dict()
        path = save_checkpoint(self.run_dir, progress.step, self.model, self.optimizer, progress.to_dict(), self.cfg,
                               self.tokenizer_hash, self.cfg.train.keep_last, self.storage, self.world)
        self.seconds = time.monotonic() - began
        return path

    def resume(self) -> Progress:
        """The progress of the newest valid checkpoint, with its model, optimizer and loader state loaded; a fresh
        Progress when there is none."""
        cfg = self.cfg
        checkpoint = self.latest()
        stream = data_stream(cfg)
        if checkpoint is None:
            return Progress(data_stream=stream)
        check_compatible(checkpoint, cfg, self.tokenizer_hash)
        check_same_optimizer(checkpoint, cfg)
        progress = self.load(checkpoint)
        if progress.data_stream and progress.data_stream != stream:
            raise CheckpointError(
                f"{checkpoint}: saved while training on other data or with another train.seed or train.rows than "
                f"this config gives (the train split of {cfg.data.data_dir}, seed {cfg.train.seed}, rows "
                f"{cfg.train.rows}); resume with the run's own config ({self.run_dir / 'config.toml'}) or start a new "
                "--run-dir")
        progress.data_stream = stream  # a checkpoint from before the stream was recorded is taken as it is
        self.loader.load_state_dict(progress.loader)
        return progress

    def latest(self, at_most: int | None = None) -> Path | None:
        """The newest checkpoint that verifies (saved at step `at_most` or before, when given)."""
        # Rank 0 alone verifies and chooses, so every rank loads the same one and the files are hashed once.
        return self.world.from_main(latest_checkpoint, self.run_dir, at_most)

    def load(self, path: Path) -> Progress:
        """Load a checkpoint of either layout into the model and optimizer; return its saved progress."""
        if self.parallel or sharded.is_sharded(path):
            return Progress(**sharded.load_checkpoint(path, self.model, self.optimizer))
        return Progress(**load_checkpoint(path, self.model, self.optimizer, self.device))

    def remove_after(self, step: int) -> None:
        """Delete the checkpoints saved after `step` (the run went back to it)."""
        self.world.barrier()  # every rank has loaded the checkpoint it went back to before any is removed
        if self.world.is_main:
            for path in list_checkpoints(self.run_dir):
                if checkpoint_step(path) > step:
                    shutil.rmtree(path, ignore_errors=True)


def data_stream(cfg: RunConfig) -> str:
    """A short hash of what decides the rows the loader reads: the train split's shards, the seed and, where it is
    not the default windows (so that the hash of a run saved before it existed stays the same), train.rows."""
    train_split = read_index(cfg.data.data_dir)["splits"]["train"]
    what = {"train": train_split, "seed": cfg.train.seed}
    if cfg.train.rows != "windows":
        what["rows"] = cfg.train.rows
    stream = json.dumps(what, sort_keys=True)
    return hashlib.sha256(stream.encode()).hexdigest()[:16]
