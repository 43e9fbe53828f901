"""Compare variants of the data or the recipe as FineWeb and DCLM chose their filters: train a small model on each
variant with several seeds at one budget, score every run on the same held-out texts, and say how sure each
difference to the baseline is.

A spec is a TOML file:

    [compare]
    baseline = "clean"
    budget = "tokens:2M"       # or "flops:1e14" or "time:120s"
    seeds = 3
    eval = ["held_out/news.txt", "held_out/code/"]
    [model]                    # settings every variant shares: any run config section (optional)
    n_layers = 2
    [variant.clean]            # each variant: overrides of the run config, as dotted keys
    data.sources = ["crawl/"]
    data.clean = true

`data.clean = true` under `[variant.clean]` is plain TOML for the table {"data": {"clean": true}}, the shape of a
config file, so a variant is read by config.from_dict: every value goes through the one override coercion, and
an unknown field is the same one-line error as in a config file.

What makes the runs comparable:
- one model shape: the spec's (or the default one), fixed for every run, never sized to a run's own budget;
- one budget, counted in tokens, FLOPs or seconds, and one precision (fp32 on a CPU, bf16 on a GPU that has
  it), so no run's arithmetic depends on a timing race that parallel runs disturb;
- seed s sets the same initial weights for every variant (train.seed + s), so the seeds pair;
- every evaluation text is kept out of every variant's training data by the same rule (data.decontaminate:
  training documents sharing a 13-gram of words with one are dropped), and the counts are reported.

Each distinct data setting is prepared once, before any run, and shared by the variants and seeds that use it.
Each run lives in OUT/runs/KEY, KEY a hash of its resolved config, its seed and its prepared data's key: a run
whose scores are there is kept, so a killed compare resumes, and after the spec changes only what changed runs
again. The runs are the tasks of one stage of the data engine (data/engine.py): datatrove's local executor runs
them in parallel processes sized to the machine (one at a time under a time budget, or on a GPU), and Slurm or
Ray run each as a task on a cluster.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import html
import json
import math
import re
import statistics
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch

from nextword.config import (SECTIONS, RunConfig, from_dict, parse_count, parse_duration, read_toml,
                             without_added_fields)
from nextword.data.decontaminate import eval_files, read_text
from nextword.data.engine import Stage, run_stages
from nextword.data.prepare import Prepared, prepare
from nextword.errors import ConfigError, NextwordError
from nextword.files import folder_lock, write_text_atomically
from nextword.tools.evaluate import evaluate_text
from nextword.tools.stats import paired_t_test, summarize
from nextword.training.machine import resolve_device, usable_cores
from nextword.training.runlog import read_log, short_count
from nextword.training.trainer import train

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RESULT_FILE = "compare.json"
SCORES_FILE = "scores.json"  # in a run's folder: its scores; written last, so a run with one is finished
STARTED_FILE = "started"  # in a run's folder: touched when a task takes the run up
OUTPUT_FILE = "output.txt"  # in a run's folder: what training printed
SPEC_KEYS = ("baseline", "budget", "seeds", "eval", "tasks", "task_limit")
BUDGET_FIELDS = {"tokens": "tokens", "flops": "flops", "time": "budget"}  # the spec's word: the train field it sets
# Set by the compare itself for every run: a spec that sets them would make the runs differ in more than it says.
SET_BY_COMPARE = {("train", "steps"): "the budget", ("train", "tokens"): "the budget",
                  ("train", "flops"): "the budget", ("train", "budget"): "the budget",
                  ("train", "run_dir"): "--out", ("data", "data_dir"): "the prepare cache",
                  ("data", "decontaminate"): "[compare] eval"}
VARIANT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
POLL_SECONDS = 1.0
CAPTION_WIDTH = 116


# ---- The spec ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    kind: str  # tokens, flops or time
    amount: str  # as written: 2M, 1e14, 120s

    @classmethod
    def parse(cls, text: Any, where: str) -> Budget:
        kind, _, amount = str(text).partition(":")
        if kind not in BUDGET_FIELDS or not amount:
            raise ConfigError(f"{where}: [compare] budget = {text!r}; write tokens:2M, flops:1e14 or time:120s")
        if kind == "time":
            parse_duration(amount, f"{where}: [compare] budget")
        else:
            parse_count(amount, f"{where}: [compare] budget")
        return cls(kind, amount.strip())

    def apply(self, cfg: RunConfig) -> None:
        setattr(cfg.train, BUDGET_FIELDS[self.kind], self.amount)

    def describe(self) -> str:
        if self.kind == "time":
            return f"{parse_duration(self.amount):g} s of wall clock"
        return f"{self.amount} {'tokens' if self.kind == 'tokens' else 'FLOPs'}"


@dataclass
class Spec:
    path: Path
    text: str
    baseline: str
    budget: Budget
    seeds: int
    evals: dict[str, str]  # metric ("bpb:news.txt"): the file or folder it scores, as an absolute path
    tasks: list[str]
    task_limit: int
    variants: dict[str, RunConfig]  # resolved, but for the seed, the run folder and the prepared data


def load_spec(path: str | Path) -> Spec:
    """Read and check a compare spec; each variant's run config is resolved from the shared sections and its own
    overrides."""
    path = Path(path)
    where = str(path)
    raw = read_toml(path)
    settings = raw.pop("compare", None)
    variants = raw.pop("variant", None)
    if not isinstance(settings, dict):
        raise ConfigError(f"{where}: no [compare] table; start the spec with [compare] baseline, budget, seeds, eval")
    if not isinstance(variants, dict) or len(variants) < 2:
        raise ConfigError(f"{where}: a compare needs two or more [variant.NAME] tables")
    unknown = sorted(set(settings) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown [compare] key(s) {', '.join(unknown)}; keys are {', '.join(SPEC_KEYS)}")
    budget = Budget.parse(settings.get("budget", ""), where)
    seeds = _whole_number(settings.get("seeds", 3), "seeds", where, least=2)
    baseline = settings.get("baseline")
    if baseline not in variants:
        raise ConfigError(f"{where}: [compare] baseline = {baseline!r} must name a variant: "
                          f"{', '.join(variants)}")
    evals = _evals(settings.get("eval"), where)
    tasks = settings.get("tasks", [])
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ConfigError(f"{where}: [compare] tasks must be a list of lm-eval task names or task YAML files")
    task_limit = _whole_number(settings.get("task_limit", 0), "task_limit", where, least=0)
    _refuse_fields_set_by_compare(raw, where, "the shared sections")
    resolved = {}
    for name, overrides in variants.items():
        if not VARIANT_NAME.fullmatch(name) or not isinstance(overrides, dict):
            raise ConfigError(f"{where}: [variant.{name}]: a variant is a table named with letters, digits, _ . -")
        _refuse_fields_set_by_compare(overrides, where, f"[variant.{name}]")
        if isinstance(overrides.get("train"), dict) and "seed" in overrides["train"]:
            raise ConfigError(f"{where}: [variant.{name}] sets train.seed; seeds pair the variants, so set it once "
                              "for all of them, outside the variants")
        resolved[name] = _variant_config(_merged(raw, overrides), budget, evals, f"{where} [variant.{name}]")
    return Spec(path, path.read_text(encoding="utf-8"), baseline, budget, seeds, evals, tasks, task_limit, resolved)


def _whole_number(value: Any, key: str, where: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{where}: [compare] {key} = {value!r} must be a whole number of {least} or more")
    return value


def _evals(entries: Any, where: str) -> dict[str, str]:
    """Each evaluation entry under its metric's name, bpb: and its file or folder name."""
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        raise ConfigError(f"{where}: [compare] eval must list the held-out texts to score (files or folders), "
                          'e.g. eval = ["held_out/news.txt"]')
    evals: dict[str, str] = {}
    for entry in entries:
        path = Path(entry).expanduser().resolve()
        eval_files(path)  # the entry is there, and holds files
        name = f"bpb:{path.name}"
        if name in evals:
            raise ConfigError(f"{where}: two eval entries are named {path.name}; their metrics would share a name")
        evals[name] = str(path)
    return evals


def _refuse_fields_set_by_compare(sections: dict[str, Any], where: str, part: str) -> None:
    for (section, key), owner in SET_BY_COMPARE.items():
        values = sections.get(section)
        if isinstance(values, dict) and key in values:
            raise ConfigError(f"{where}: {part} sets {section}.{key}, which {owner} sets for every run; remove it")


def _merged(shared: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The shared sections with a variant's overrides on top, field by field."""
    merged = {section: dict(values) for section, values in shared.items() if isinstance(values, dict)}
    merged.update({section: values for section, values in shared.items() if not isinstance(values, dict)})
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _variant_config(raw: dict[str, Any], budget: Budget, evals: dict[str, str], where: str) -> RunConfig:
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; a variant overrides "
                          f"{', '.join(SECTIONS)}")
    cfg = from_dict(raw, where=where)
    budget.apply(cfg)
    cfg.model.size = "fixed"  # one shape for every run, whatever its budget buys
    cfg.data.decontaminate = list(evals.values())
    if cfg.train.precision == "auto":
        cfg.train.precision = _one_precision(cfg.train.device)
    return cfg.validate()


def _one_precision(device: str) -> str:
    """bf16 on a GPU that has it, else fp32: the same for every run, where "auto" would race each run's steps."""
    chosen = resolve_device(device)
    return "bf16" if chosen.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


# ---- The runs ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    variant: str
    seed: int  # 0, 1, ...: the run trains with train.seed + seed
    key: str
    config: RunConfig

    @property
    def folder(self) -> Path:
        return Path(self.config.train.run_dir)

    def finished(self, spec: Spec) -> bool:
        """Whether the run has scores for every evaluation text and task the spec names."""
        scores = read_scores(self.folder)
        return (scores is not None and all(m in scores["metrics"] for m in spec.evals)
                and set(spec.tasks) <= set(scores["tasks"]))


def read_scores(folder: Path) -> dict[str, Any] | None:
    path = folder / SCORES_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def prepare_once(spec: Spec, progress: bool = True) -> dict[str, Prepared]:
    """Each variant's prepared data; a data setting that several variants share is prepared once."""
    by_setting: dict[str, Prepared] = {}
    prepared = {}
    for name, cfg in spec.variants.items():
        setting = _hash({"data": dataclasses.asdict(cfg.data),
                         "clean": dataclasses.asdict(cfg.clean) if cfg.data.clean else None})
        if setting not in by_setting:
            by_setting[setting] = prepare(cfg.data, clean=cfg.clean, engine=cfg.engine, progress=progress)
        prepared[name] = by_setting[setting]
    return prepared


def plan_runs(spec: Spec, prepared: dict[str, Prepared], out: Path) -> list[Run]:
    """Every variant at every seed, each in the folder its key names."""
    runs = []
    for name, cfg in spec.variants.items():
        for seed in range(spec.seeds):
            run_cfg = copy.deepcopy(cfg)
            run_cfg.train.seed = cfg.train.seed + seed
            run_cfg.data.data_dir = str(prepared[name].data_dir)
            key = run_key(run_cfg, prepared[name].index["key"])
            run_cfg.train.run_dir = str(out / "runs" / key)
            runs.append(Run(name, seed, key, run_cfg))
    return runs


def run_key(cfg: RunConfig, data_key: str) -> str:
    """A hash of what decides a run's result: its resolved config (its seed included) and its data's key. Where
    it runs and on how many threads (the [engine] section, train.threads, data.workers) do not count, nor the
    data's folder, which the data key stands for."""
    settings = without_added_fields(cfg.to_dict())
    settings.pop("engine")
    for section, key in (("train", "run_dir"), ("train", "threads"), ("data", "workers"), ("data", "data_dir")):
        settings[section].pop(key)
    return _hash({"config": settings, "data": data_key})


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def parallel_runs(spec: Spec, runs: int) -> tuple[int, int]:
    """How many runs train at once on this machine, and the threads each one takes: one a core, or as many as
    [engine] workers allows. A time budget, or a GPU, takes one run at a time: runs side by side would share the
    time, or the device, each one measures."""
    cores = usable_cores()
    on_gpu = resolve_device(spec.variants[spec.baseline].train.device).type == "cuda"
    at_once = min(runs, spec.variants[spec.baseline].engine.workers or cores)
    if spec.budget.kind == "time" or on_gpu or at_once <= 1:
        return 1, 0
    return at_once, max(1, cores // at_once)


@dataclass
class TrainRuns:
    """The stage of the data engine that trains and scores the runs: task `rank` does run `rank`."""

    runs: list[Run]
    evals: dict[str, str]
    tasks: list[str]
    task_limit: int
    name: str = "compare"

    def run_task(self, rank: int, world_size: int) -> dict[str, int]:
        for number in range(rank, len(self.runs), world_size):
            train_and_score(self.runs[number], self.evals, self.tasks, self.task_limit)
        return {"runs": len(range(rank, len(self.runs), world_size))}


def train_and_score(run: Run, evals: dict[str, str], tasks: list[str], task_limit: int) -> dict[str, Any]:
    """Train the run (or find it trained), score it, and write its scores, last."""
    started = time.monotonic()
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / STARTED_FILE).touch()
    with open(run.folder / OUTPUT_FILE, "a", encoding="utf-8") as output, \
            contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        summary = train(copy.deepcopy(run.config), progress=False)
        if summary.get("interrupted"):
            raise NextwordError(f"{run.folder}: training was interrupted; run the same compare again to resume it")
        device = str(resolve_device(run.config.train.device))
        metrics = score(run.folder, evals, device)
        if tasks:
            metrics.update(task_scores(run.folder, tasks, task_limit, device))
    finished = [r for r in read_log(run.folder / "log.jsonl") if r.get("kind") == "summary"]
    scores = {"variant": run.variant, "seed": run.seed, "key": run.key, "tokens": finished[-1]["tokens"],
              "metrics": metrics, "tasks": tasks, "seconds": time.monotonic() - started}
    write_text_atomically(run.folder / SCORES_FILE, json.dumps(scores, indent=1))
    return scores


def score(run_dir: Path, evals: dict[str, str], device: str) -> dict[str, float]:
    """Bits per byte of the run's final model on each evaluation entry; a folder's files count as one text."""
    from nextword.training.checkpoint import load_for_inference

    model, tokenizer, cfg = load_for_inference(run_dir, device)
    metrics = {}
    for metric, entry in evals.items():
        bits = text_bytes = 0.0
        for path in eval_files(entry):
            text = read_text(path)
            if text:
                size = len(text.encode("utf-8"))
                bits += evaluate_text(model, tokenizer, text, cfg.model.context, device, str(path))["bpb"] * size
                text_bytes += size
        if not text_bytes:
            raise NextwordError(f"{entry}: every file is empty, so there is nothing to score; put text there")
        metrics[metric] = bits / text_bytes
    return metrics


def task_scores(run_dir: Path, tasks: list[str], task_limit: int, device: str) -> dict[str, float]:
    """lm-eval's figures for the run's final model, each as METRIC:TASK (acc:arc_easy)."""
    from nextword.tools.downstream import evaluate_run

    rows = evaluate_run(run_dir, tasks, device=device, limit=task_limit or None)
    return {f"{row['metric']}:{row['task']}": row["value"] for row in rows}


# ---- The progress line ------------------------------------------------------------------------------------------

def progress_line(done: int, running: int, left: int, seconds_left: float | None) -> str:
    if not running and not left:
        return f"compare: {done} done, 0 running, 0 left"
    when = "estimating the time left" if seconds_left is None else f"about {_duration(seconds_left)} left"
    return f"compare: {done} done, {running} running, {left} left; {when}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def seconds_left(finished: list[float], running: list[tuple[float, float]], left: int, at_once: int) -> float | None:
    """The time the runs still to do need: each takes as long as the finished ones did (or, before one has
    finished, as the running ones promise: their seconds so far over their share done), `at_once` at a time."""
    if finished:
        per_run = statistics.median(finished)
    else:
        promised = [elapsed / share for elapsed, share in running if share >= 0.05]
        if not promised:
            return None
        per_run = statistics.median(promised)
    to_do = left + sum(1 - share for _, share in running)
    return to_do * per_run / max(1, at_once)


class ProgressLine:
    """Shows runs done, running and left while the stage runs, from what the run folders hold: a line that
    rewrites itself on a terminal, a new line when the counts change elsewhere."""

    def __init__(self, runs: list[Run], spec: Spec, at_once: int, stream: TextIO | None = None) -> None:
        self.runs, self.spec, self.at_once = runs, spec, at_once
        self.stream = stream or sys.stdout  # taken now: a run trained in this process redirects sys.stdout
        self.began = time.time()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._show_until_stopped, daemon=True)
        self.last = ""

    def __enter__(self) -> ProgressLine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()
        self.show()
        if self.stream.isatty():
            self.stream.write("\n")
        self.stream.flush()

    def _show_until_stopped(self) -> None:
        while not self.stopping.wait(POLL_SECONDS):
            self.show()

    def show(self) -> None:
        line = self.line()
        if self.stream.isatty():
            self.stream.write("\r" + line.ljust(len(self.last)))
        elif line.split(";")[0] != self.last.split(";")[0]:
            self.stream.write(line + "\n")
        else:
            return
        self.stream.flush()
        self.last = line

    def line(self) -> str:
        finished, running, left = [], [], 0
        for run in self.runs:
            if run.finished(self.spec):
                if (run.folder / SCORES_FILE).stat().st_mtime >= self.began:
                    finished.append(read_scores(run.folder)["seconds"])
            elif self._started_now(run):
                running.append(_share_done(run.folder, self.began))
            else:
                left += 1
        done = len(self.runs) - len(running) - left
        return progress_line(done, len(running), left, seconds_left(finished, running, left, self.at_once))

    def _started_now(self, run: Run) -> bool:
        started = run.folder / STARTED_FILE
        return started.is_file() and started.stat().st_mtime >= self.began


def _share_done(folder: Path, began: float) -> tuple[float, float]:
    """A running run's seconds since this compare began, and the share of its planned steps it has trained."""
    planned = step = 0
    log = folder / "log.jsonl"
    if log.is_file():
        for record in read_log(log):
            planned = record.get("planned_steps") or planned
            if record.get("kind") == "train":
                step = record.get("step", step)
    return time.time() - began, (step / planned if planned else 0.0)


# ---- Comparing ------------------------------------------------------------------------------------------------

def compare(spec_path: str | Path, out: str | Path | None = None, progress: bool = True,
            stream: TextIO | None = None) -> dict[str, Any] | None:
    """Train and score every run the spec names that is not already done, then write OUT/compare.json and
    OUT/index.html and return the result; None when the runs were submitted to Slurm, to be collected by running
    the same compare again once they are done."""
    spec = load_spec(spec_path)
    if spec.tasks:  # a task that cannot run is refused now, not after every run has trained
        from nextword.tools.downstream import check_tasks

        check_tasks(spec.tasks)
    out = Path(out) if out is not None else Path("runs") / f"compare-{spec.path.stem}"
    stream = stream or sys.stdout
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "the compare folder", "--out"):
        prepared = prepare_once(spec, progress=progress)
        runs = plan_runs(spec, prepared, out)
        to_do = [run for run in runs if not run.finished(spec)]
        kept = len(runs) - len(to_do)
        stream.write(f"compare: {len(spec.variants)} variants × {spec.seeds} seeds at {spec.budget.describe()} "
                     f"each; {kept} run(s) already done, {len(to_do)} to train and score\n")
        if to_do and not _train_runs(spec, to_do, runs, out, stream):
            return None
        result = {**collect(spec, runs, prepared), "out": str(out)}
        write_text_atomically(out / RESULT_FILE, json.dumps(result, indent=1))
        write_page(result, runs, spec, out)
        return result


def _train_runs(spec: Spec, to_do: list[Run], runs: list[Run], out: Path, stream: TextIO) -> bool:
    """Train and score the runs as one stage of the data engine; False when they went to Slurm."""
    at_once, threads = parallel_runs(spec, len(to_do))
    for run in to_do:
        run.config.train.threads = threads
    engine = dataclasses.replace(spec.variants[spec.baseline].engine, workers=at_once, tasks=0)
    step = TrainRuns(to_do, spec.evals, spec.tasks, spec.task_limit)
    if engine.executor == "local":
        stream.write(f"compare: {at_once} run(s) at a time on this machine"
                     f"{f', {threads} thread(s) each' if threads else ''}; each run's output is in "
                     f"{out / 'runs'}/KEY/{OUTPUT_FILE}\n")
    with ProgressLine(runs, spec, at_once, stream) if engine.executor == "local" \
            else contextlib.nullcontext():
        finished = run_stages([Stage(step, len(to_do))], engine, out / "logs", lambda line: stream.write(line + "\n"))
    if not finished:
        stream.write("compare: the runs were submitted to Slurm; once they are done, run the same compare again "
                     "to collect the results\n")
    return finished


def collect(spec: Spec, runs: list[Run], prepared: dict[str, Prepared]) -> dict[str, Any]:
    """compare.json's content: per variant and metric, the mean over seeds, its interval, each seed's value and
    the paired test against the baseline; the tokens one run trained, the reads of the data and decontamination."""
    scores = {(run.variant, run.seed): read_scores(run.folder) for run in runs}
    tasks = [m for m in scores[spec.baseline, 0]["metrics"] if m not in spec.evals] if spec.tasks else []
    metrics = list(spec.evals) + tasks
    baseline = {m: [scores[spec.baseline, s]["metrics"][m] for s in range(spec.seeds)] for m in metrics}
    variants = {}
    for name in spec.variants:
        entry: dict[str, Any] = {"metrics": {}}
        for metric in metrics:
            values = [scores[name, s]["metrics"].get(metric, math.nan) for s in range(spec.seeds)]
            summary = summarize(values)
            figures: dict[str, Any] = {"mean": summary.mean, "ci95": list(summary.ci95), "values": values}
            if name != spec.baseline:
                difference = summarize([v - b for v, b in zip(values, baseline[metric])])
                figures["difference"] = {"mean": difference.mean, "ci95": list(difference.ci95)}
                figures["p_vs_baseline"] = paired_t_test(values, baseline[metric])
            entry["metrics"][metric] = figures
        tokens = statistics.fmean(scores[name, s]["tokens"] for s in range(spec.seeds))
        train_tokens = prepared[name].index["splits"]["train"]["tokens"]
        entry["tokens"] = round(tokens)
        entry["reads"] = tokens / max(1, train_tokens)
        entry["contamination"] = {k: v for k, v in prepared[name].index.get("decontamination", {}).items()
                                  if k in ("documents_checked", "documents_dropped", "bytes_dropped", "eval_ngrams")}
        entry["runs"] = [str(run.folder) for run in runs if run.variant == name]
        entry["data_dir"] = str(prepared[name].data_dir)
        variants[name] = entry
    return {"spec": str(spec.path), "baseline": spec.baseline, "seeds": spec.seeds,
            "budget": {"counted_in": {"tokens": "tokens", "flops": "FLOPs", "time": "seconds"}[spec.budget.kind],
                       "amount": spec.budget.amount, "describe": spec.budget.describe()},
            "evals": spec.evals, "metrics": metrics, "variants": variants}


# ---- The table and the page -------------------------------------------------------------------------------------

def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """The table's header and one row per variant: each metric's mean ± half its interval, the difference to the
    baseline with its p-value, tokens, reads and the documents decontamination dropped."""
    header = ["variant"] + result["metrics"] + ["tokens", "reads", "decontaminated"]
    rows = [header]
    for name, entry in result["variants"].items():
        row = [name + (" (baseline)" if name == result["baseline"] else "")]
        for metric in result["metrics"]:
            m = entry["metrics"][metric]
            cell = f"{m['mean']:.4f} ± {(m['ci95'][1] - m['ci95'][0]) / 2:.4f}"
            if "p_vs_baseline" in m:
                cell += f"  {m['difference']['mean']:+.4f} (p {_p(m['p_vs_baseline'])})"
            row.append(cell)
        dropped = entry["contamination"]
        row += [short_count(entry["tokens"]), f"{entry['reads']:.2f}",
                f"{dropped.get('documents_dropped', 0):,} of {dropped.get('documents_checked', 0):,} docs"]
        rows.append(row)
    return rows


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def format_table(result: dict[str, Any]) -> str:
    rows = table_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([textwrap.fill(_caption(result), width=CAPTION_WIDTH), *lines])


def _caption(result: dict[str, Any]) -> str:
    return (f"{result['budget']['describe']} per run (counted in {result['budget']['counted_in']}), "
            f"{result['seeds']} seeds; mean ± half the 95% interval over seeds, then the difference to "
            f"{result['baseline']} (variant minus baseline: for bits per byte, above 0 is worse) and its p-value, "
            "Student's t paired by seed")


def plot_curves(result: dict[str, Any], runs: list[Run]) -> Figure:
    """Each run's validation bits per byte against tokens seen, coloured by variant."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    from nextword.tools.report import DPI, FIGURE_SIZE

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    ax = figure.subplots()
    ax.grid(True, alpha=0.3)
    for number, name in enumerate(result["variants"]):
        colour = f"C{number}"
        for run in (r for r in runs if r.variant == name):
            evals = [r for r in read_log(run.folder / "log.jsonl") if r.get("kind") == "eval" and "val_bpb" in r]
            ax.plot([r["tokens"] for r in evals], [r["val_bpb"] for r in evals], "o-", color=colour, alpha=0.6,
                    linewidth=1, markersize=3, label=name if run.seed == 0 else None)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("validation bits per byte (own split)")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.legend(loc="best")
    return figure


def plot_scores(result: dict[str, Any]) -> Figure:
    """Each metric's mean per variant with its 95% interval, and each seed's value."""
    from matplotlib.figure import Figure

    from nextword.tools.report import DPI, FIGURE_SIZE

    metrics = result["metrics"]
    figure = Figure(figsize=(FIGURE_SIZE[0], 1.0 + 1.6 * len(metrics)), dpi=DPI, layout="constrained")
    axes = figure.subplots(len(metrics), 1, squeeze=False)[:, 0]
    names = list(result["variants"])
    for ax, metric in zip(axes, metrics):
        for y, name in enumerate(names):
            m = result["variants"][name]["metrics"][metric]
            ax.errorbar(m["mean"], y, xerr=[[m["mean"] - m["ci95"][0]], [m["ci95"][1] - m["mean"]]], fmt="o",
                        color=f"C{y}", capsize=4)
            ax.plot(m["values"], [y] * len(m["values"]), "x", color=f"C{y}", alpha=0.6)
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(-0.5, len(names) - 0.5)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        ax.grid(True, axis="x", alpha=0.3)
    return figure


def write_page(result: dict[str, Any], runs: list[Run], spec: Spec, out: Path) -> Path:
    """OUT/index.html in the run report's style, with its two plots beside it."""
    from nextword.tools.report import PAGE_CSS

    plot_curves(result, runs).savefig(out / "curves.png")
    plot_scores(result).savefig(out / "scores.png")
    esc = html.escape
    rows = table_rows(result)
    header = "".join(f"<th>{esc(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f'<td class="num">{esc(cell)}</td>' for cell in row) + "</tr>"
                   for row in rows[1:])
    page = out / "index.html"
    page.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nextword compare: {esc(str(spec.path))}</title>
<style>{PAGE_CSS}</style></head>
<body>
<h1>nextword compare: {esc(str(spec.path))}</h1>
<p>{esc(_caption(result))}.</p>
<table><tr>{header}</tr>{body}</table>
<p class="note">Tokens: trained by one run; reads: how many times a run read its variant's training split;
decontaminated: training documents dropped because they share a 13-gram of words with an evaluation text.</p>
<h2>Plots</h2>
<div class="plots">
<figure><img src="curves.png" alt="validation curves"><figcaption>Validation bits per byte against tokens seen,
one line per run. Each variant is measured on its own validation split here; the table's figures are on the
shared evaluation texts.</figcaption></figure>
<figure><img src="scores.png" alt="final scores"><figcaption>Final scores on the evaluation texts: the mean over
seeds with its 95% interval, and each seed's value (×).</figcaption></figure>
</div>
<h2>Spec</h2>
<pre class="config">{esc(spec.text)}</pre>
</body></html>
""", encoding="utf-8")
    return page
