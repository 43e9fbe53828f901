"""Downstream evaluation: a trained run on the benchmarks base models are compared on (HellaSwag, ARC, LAMBADA,
PIQA, …), run by EleutherAI's lm-evaluation-harness (`pip install 'nextword[downstream]'`) on the model itself
(tools/harness.py), and kept in the run directory as downstream.json for `nextword report`.

Task names are lm-eval's (`lm-eval ls tasks` lists them); a task given as a path to a YAML file is read as a
local task, in lm-eval's task format. Each result is a row: task, metric, value, standard error, few-shot
examples, examples scored, and the checkpoint step it was measured at.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nextword.data.tokenizer import Tokenizer
from nextword.errors import ConfigError, DataError
from nextword.files import write_text_atomically
from nextword.model import GPT

RESULTS_FILE = "downstream.json"
INSTALL_HINT = "downstream tasks need lm-evaluation-harness: pip install 'nextword[downstream]'"
LOCAL_TASK_SUFFIXES = (".yaml", ".yml")
# Resamples for the standard error of a figure with no closed form (perplexity; accuracy has one). lm-eval's
# default of 100,000 took 32 s for LAMBADA's 5,153 examples on a 2-core machine, 1,000 took 0.35 s, and the two
# errors differed by 7%: enough to read which differences are noise.
BOOTSTRAP_RESAMPLES = 1000


def require_lm_eval() -> None:
    """Raise the one-line error that names the extra to install, where lm-eval is missing."""
    try:
        importlib.import_module("lm_eval")
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None


def run_tasks(model: GPT, tokenizer: Tokenizer, tasks: list[str], *, limit: int | None = None,
              num_fewshot: int | None = None, batch_size: int = 32, keep_samples: bool = False,
              progress: bool = False, verbose: bool = False) -> dict[str, Any]:
    """lm-eval's results for `tasks` on `model`: its own dictionary, with "results", "n-shot", "n-samples" and
    "configs" by task, and with `keep_samples` each example's requests and answers under "samples"."""
    require_lm_eval()
    import lm_eval

    from nextword.tools.harness import NextwordLM

    with _lm_eval_quiet(not verbose):
        manager = _task_manager(tasks)
        try:
            return lm_eval.simple_evaluate(model=NextwordLM(model, tokenizer, batch_size, progress), tasks=tasks,
                                           num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                                           log_samples=keep_samples, bootstrap_iters=BOOTSTRAP_RESAMPLES)
        except OSError as e:  # datasets' download and not-found errors (ConnectionError is an OSError)
            raise DataError(f"cannot load a task's data ({e}); lm-eval's tasks download theirs from the Hugging "
                            "Face Hub once, so connect to the network (or check the task file's data paths)") from None


def check_tasks(tasks: list[str]) -> None:
    """Refuse, in one line, tasks that cannot run: lm-eval missing, a task file missing, a name lm-eval does not
    know. A run checks its [eval] tasks before it trains, not after."""
    require_lm_eval()
    with _lm_eval_quiet(True):
        _task_manager(tasks)


def _task_manager(tasks: list[str]):
    """lm-eval's index of tasks: its own (a few seconds to build) unless every task is a local YAML file."""
    from lm_eval.tasks import TaskManager

    local = [task for task in tasks if task.endswith(LOCAL_TASK_SUFFIXES)]
    for path in map(Path, local):
        if not path.is_file():
            raise DataError(f"{path}: no such task file; give an lm-eval task YAML, or a task name")
    if len(local) == len(tasks):
        return TaskManager(include_defaults=False)
    manager = TaskManager()
    unknown = [task for task in tasks if task not in local and not manager.match_tasks([task])]
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; `lm-eval ls tasks` lists lm-eval's, or give "
                          "the path of a task YAML")
    return manager


@contextlib.contextmanager
def _lm_eval_quiet(quiet: bool) -> Iterator[None]:
    """lm-eval and datasets keep to errors while the tasks run, and what lm-eval prints (which statistic it is
    bootstrapping) stays off stdout, where the table goes (unless `quiet` is false)."""
    if not quiet:
        yield
        return
    import datasets

    logger = logging.getLogger("lm_eval")
    level, bars = logger.level, datasets.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


# ---- Results as rows -------------------------------------------------------------------------------------------

def result_rows(results: dict[str, Any], step: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """One row per task and metric: task, metric, value, stderr (None where lm-eval has none), num_fewshot,
    examples, step, limit."""
    rows = []
    for task, figures in results["results"].items():
        for key, value in figures.items():
            metric, comma, filter_name = key.partition(",")
            # Figures are "metric,filter" (the filter that picked the answer); the other keys name the task.
            if not comma or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = figures.get(f"{metric}_stderr,{filter_name}")
            examples = results.get("n-samples", {}).get(task, {}).get("effective")
            rows.append({
                "task": task, "metric": metric if filter_name == "none" else f"{metric} ({filter_name})",
                "value": float(value),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None,
                "num_fewshot": results.get("n-shot", {}).get(task), "examples": examples, "step": step,
                "limit": limit})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    header = ["task", "metric", "value", "stderr", "few-shot", "examples"]
    lines = [[r["task"], r["metric"], f"{r['value']:.4f}", "" if r["stderr"] is None else f"± {r['stderr']:.4f}",
              "" if r["num_fewshot"] is None else str(r["num_fewshot"]),
              "" if r["examples"] is None else f"{r['examples']:,}"] for r in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *lines])


# ---- The run directory's downstream.json -------------------------------------------------------------------------

def read_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows a run directory holds; [] where it has none yet."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["results"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a downstream results file ({e}); delete it and run `nextword eval "
                        f"{run_dir} --tasks ...` again") from None
    return rows


def save_results(run_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Add `rows` to the run's downstream.json, replacing earlier rows of the same task and few-shot count."""
    path = Path(run_dir) / RESULTS_FILE
    measured = {(row["task"], row["num_fewshot"]) for row in rows}
    kept = [row for row in read_results(run_dir) if (row["task"], row["num_fewshot"]) not in measured]
    write_text_atomically(path, json.dumps({"results": kept + rows}, indent=1) + "\n")
    return path


def evaluate_run(run_dir: str | Path, tasks: list[str], *, device: str = "cpu", limit: int | None = None,
                 num_fewshot: int | None = None, batch_size: int = 32, progress: bool = False,
                 verbose: bool = False) -> list[dict[str, Any]]:
    """Run `tasks` on the run's newest checkpoint, add the results to its downstream.json, and return its rows."""
    from nextword.training.checkpoint import checkpoint_step, latest_checkpoint, load_for_inference

    require_lm_eval()
    model, tokenizer, _ = load_for_inference(run_dir, device)
    step = checkpoint_step(latest_checkpoint(run_dir))
    results = run_tasks(model, tokenizer, tasks, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
                        progress=progress, verbose=verbose)
    rows = result_rows(results, step=step, limit=limit)
    save_results(run_dir, rows)
    return rows
