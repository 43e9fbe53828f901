"""Run the data path's stages as datatrove jobs: on this machine, on a Slurm cluster or on a Ray cluster.

A stage is a number of tasks of one step (`Step`: an object with a `name` and `run_task(rank, world_size)` that
returns its counts). Each stage becomes one datatrove executor (the engine FineWeb was built with), so the same
stages run under `LocalPipelineExecutor`, `SlurmPipelineExecutor` and `RayPipelineExecutor`:

- local and ray: the stages run one after another from this process, and a stage whose tasks did not all finish
  stops the job with an error naming its logs (datatrove's `depends=` would wait for them forever).
- slurm: every stage is submitted at once, each an array job that starts when the one before it has finished
  (datatrove's `depends=`); this process returns once they are queued.

A task's work must be safe to run again (a task that died is rerun whole): every step here writes its output
under a temporary name, renamed when whole, and skips what is already there.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import multiprocess
from datatrove.executor import LocalPipelineExecutor
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from nextword.config import EngineConfig
from nextword.errors import DataError

QUIET_LOGS = "NEXTWORD_DATATROVE_QUIET"  # set: datatrove's per-task log lines are left out
if os.environ.get(QUIET_LOGS):  # a local worker's server, started inside _quiet_when_local: quiet from the start
    logger.disable("datatrove")
# What local workers need, imported once by the server they are forked from (a module that cannot be imported,
# an extra not installed, is skipped).
WORKER_PRELOAD = ["nextword.data.engine", "nextword.data.clean", "nextword.data.encode", "nextword.data.web",
                  "nextword.data.code"]


class Step(Protocol):
    name: str

    def run_task(self, rank: int, world_size: int) -> dict[str, int]:
        """Do task `rank` of `world_size`; return its counts (shown in datatrove's stats)."""


@dataclass
class Stage:
    step: Step
    tasks: int


class _DatatroveStep(PipelineStep):
    """A nextword step as a datatrove pipeline step: datatrove hands it its task, and records its counts."""

    type = "nextword"

    def __init__(self, step: Step) -> None:
        super().__init__()
        self.step = step
        self.name = step.name

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> None:
        if os.environ.get(QUIET_LOGS):
            logger.disable("datatrove")
        for label, value in self.step.run_task(rank, world_size).items():
            self.stat_update(label, value=int(value))


def run_stages(stages: list[Stage], engine: EngineConfig, logs: str | Path, log: Callable[[str], None] = print
               ) -> bool:
    """Run the stages in order under engine.executor, their logs under `logs` (a folder or a URL, as datatrove
    takes it); True when they have finished here, False when they were submitted to Slurm to run later."""
    engine.validate()
    if engine.executor == "slurm":
        _submit_to_slurm(stages, engine, str(logs), log)
        return False
    if engine.executor == "ray":
        _start_ray(engine)
    for stage in stages:
        folder = f"{logs}/{stage.step.name}"
        _remove_completions(folder)  # each task's own files say what is done
        executor = _executor(stage, engine, folder)
        with _quiet_when_local(engine):
            executor.run()
        failed = executor.get_incomplete_ranks(skip_completed=True)
        if failed:
            raise DataError(f"{stage.step.name}: {len(failed)} of {stage.tasks} task(s) failed (first: task "
                            f"{failed[0]}); see {folder}/logs, fix the cause and run the same command again")
    return True


def _remove_completions(folder: str) -> None:
    logs = get_datafolder(folder)
    if logs.exists("completions"):
        logs.rm("completions", recursive=True)


def _executor(stage: Stage, engine: EngineConfig, folder: str):
    pipeline = [_DatatroveStep(stage.step)]
    if engine.executor == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        return RayPipelineExecutor(pipeline, tasks=stage.tasks, workers=engine.workers or -1,
                                   logging_dir=folder, skip_completed=False,
                                   cpus_per_task=engine.ray_cpus_per_task)
    workers = min(engine.workers or len(os.sched_getaffinity(0)), stage.tasks)
    # Workers start from datatrove's default forkserver, not by forking this process: a fork of a process with
    # threads (Ray's, a progress bar's) can copy a lock some thread held and hang forever. The server imports the
    # steps' modules once, so that each stage's workers, forked from it, start without importing them again.
    multiprocess.set_forkserver_preload(WORKER_PRELOAD)
    return LocalPipelineExecutor(pipeline, tasks=stage.tasks, workers=workers, logging_dir=folder,
                                 skip_completed=False)


@contextmanager
def _quiet_when_local(engine: EngineConfig) -> Iterator[None]:
    """On this machine, nextword's own lines say what each task did, and datatrove's per-task lines (pipeline,
    stats) are left out. On a cluster they are what the user reads, so they stay."""
    if engine.executor != "local":
        yield
        return
    os.environ[QUIET_LOGS] = "1"  # read by the steps in the worker processes
    logger.disable("datatrove")
    try:
        yield
    finally:
        os.environ.pop(QUIET_LOGS, None)
        logger.enable("datatrove")


def _start_ray(engine: EngineConfig) -> None:
    try:
        import ray
    except ImportError:
        raise DataError("engine.executor = ray needs Ray: pip install 'nextword[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=engine.ray_address or None, num_cpus=None if engine.ray_address else engine.workers or None,
                 log_to_driver=False)


def _submit_to_slurm(stages: list[Stage], engine: EngineConfig, logs: str, log: Callable[[str], None]) -> None:
    from datatrove.executor.slurm import SlurmPipelineExecutor

    previous = None
    for stage in stages:
        previous = SlurmPipelineExecutor(
            [_DatatroveStep(stage.step)], tasks=stage.tasks, workers=engine.workers or -1,
            time=engine.slurm_time, partition=engine.slurm_partition, cpus_per_task=engine.slurm_cpus_per_task,
            mem_per_cpu_gb=engine.slurm_mem_per_cpu_gb, job_name=f"nextword-{stage.step.name}",
            env_command=engine.slurm_env_command or None, logging_dir=f"{logs}/{stage.step.name}",
            depends=previous, skip_completed=True, mail_type="NONE")
    previous.run()  # submits the stages before it first, each depending on the one before
    log(f"submitted {len(stages)} Slurm job(s), one per stage ({', '.join(s.step.name for s in stages)}); "
        f"each stage's sbatch script and logs are in {logs}/STAGE/")
