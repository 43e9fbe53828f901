"""Plots and one page for a run, from its log.jsonl and config.toml.

write_report writes RUN/report/index.html (or OUT/index.html) and PNG plots beside it: training and validation
loss against tokens seen, with the ln V of an untrained model; bits per byte; the learning rate; tokens/s and
MFU; for a mixture of experts, each expert's share of the routed tokens and the balance loss. Then the downstream
tasks' scores where `nextword eval --tasks` has measured some, the samples from each evaluation in order, so the
move from noise to words is visible, and the run's hardware, precision, config and final summary. Works on a run
still training: what is not there yet is a note.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter

from nextword.config import read_toml
from nextword.errors import CheckpointError, ConfigError, DataError
from nextword.tools.downstream import read_results
from nextword.training.runlog import read_log, short_count

FIGURE_SIZE = (6.4, 4.0)  # inches; at 100 dpi 640 × 400 pixels, two side by side on a wide screen
DPI = 100
TRAIN_COLOUR, VAL_COLOUR, GUIDE_COLOUR = "#4a78b5", "#d1603d", "#888888"


# ---- Reading a run ----------------------------------------------------------------------------------------------

@dataclass
class RunHistory:
    """What a run directory says about itself, with each step counted once."""

    run_dir: Path
    run: dict[str, Any] | None = None  # the latest "run" record: machine, precision, model size
    segments: int = 0  # how many times training started (1 + resumes)
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    stop: dict[str, Any] | None = None
    config_text: str | None = None
    vocab_size: int | None = None
    downstream: list[dict[str, Any]] = field(default_factory=list)  # rows of downstream.json (`nextword eval --tasks`)


def read_history(run_dir: str | Path) -> RunHistory:
    """The run's records; a step logged twice (before an interruption and again after resuming) keeps the later."""
    run_dir = Path(run_dir)
    log_path = run_dir / "log.jsonl"
    if not log_path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no log.jsonl); pass the folder a "
                              "`nextword train` run wrote (its --run-dir)")
    history = RunHistory(run_dir)
    train_by_step: dict[int, dict[str, Any]] = {}
    eval_by_step: dict[int, dict[str, Any]] = {}
    for record in read_log(log_path):
        kind = record.get("kind")
        if kind == "run":  # a new session: how an earlier one ended no longer describes the run
            history.run, history.stop, history.summary = record, None, None
            history.segments += 1
        elif kind == "train" and "step" in record:
            train_by_step[record["step"]] = record
        elif kind == "eval" and "step" in record:
            eval_by_step[record["step"]] = record
        elif kind == "summary":
            history.summary = record
        elif kind == "stop":
            history.stop = record
    if history.segments == 0 and not train_by_step:
        raise CheckpointError(f"{log_path}: holds no training records; is this the log of a `nextword train` run?")
    history.train = [train_by_step[s] for s in sorted(train_by_step)]
    history.evals = [eval_by_step[s] for s in sorted(eval_by_step)]
    history.downstream = read_results(run_dir)
    config_path = run_dir / "config.toml"
    if config_path.is_file():
        history.config_text = config_path.read_text(encoding="utf-8")
        history.vocab_size = _vocab_size(config_path)
    return history


def _vocab_size(config_path: Path) -> int | None:
    try:
        vocab = read_toml(config_path).get("model", {}).get("vocab_size")
    except ConfigError:
        return None  # the page still shows the text; only the ln V guide is lost
    return vocab if isinstance(vocab, int) and vocab > 1 else None


# ---- Plots ------------------------------------------------------------------------------------------------------

def _series(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    points = [(r[x], r[y]) for r in records if r.get(x) is not None and r.get(y) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _new_axes(xlabel: str, ylabel: str, rows: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    axes = list(figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0])
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel(xlabel)
    if xlabel == "step":
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel(ylabel)
    return figure, axes


def plot_loss(history: RunHistory) -> Figure | None:
    train_x, train_y = _series(history.train, "tokens", "loss")
    val_x, val_y = _series(history.evals, "tokens", "val_loss")
    if not train_x and not val_x:
        return None
    figure, (ax,) = _new_axes("tokens seen", "loss (nats)")
    ax.plot(train_x, train_y, color=TRAIN_COLOUR, linewidth=1, alpha=0.8, label="training loss")
    ax.plot(val_x, val_y, "o-", color=VAL_COLOUR, linewidth=1.5, markersize=5, label="validation loss")
    if history.vocab_size:
        ln_v = math.log(history.vocab_size)
        ax.axhline(ln_v, color=GUIDE_COLOUR, linestyle="--", linewidth=1,
                   label=f"untrained model: ln V = ln {history.vocab_size:,} = {ln_v:.2f}")
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(high, ln_v + 0.05 * (ln_v - low)))  # keep the guide off the frame's edge
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.legend(loc="best")
    return figure


def plot_bits_per_byte(history: RunHistory) -> Figure | None:
    x, y = _series(history.evals, "tokens", "val_bpb")
    if not x:
        return None
    figure, (ax,) = _new_axes("tokens seen", "validation bits per byte")
    ax.plot(x, y, "o-", color=VAL_COLOUR, linewidth=1.5, markersize=5)
    ax.xaxis.set_major_formatter(EngFormatter())
    return figure


def plot_learning_rate(history: RunHistory) -> Figure | None:
    x, y = _series(history.train, "step", "lr")
    if not x:
        return None
    figure, (ax,) = _new_axes("step", "learning rate")
    ax.plot(x, y, color=TRAIN_COLOUR, linewidth=1.5)
    ax.set_ylim(bottom=0)
    return figure


def plot_throughput(history: RunHistory) -> Figure | None:
    speed_x, speed_y = _series(history.train, "step", "tokens_per_s")
    mfu_x, mfu_y = _series(history.train, "step", "mfu")
    if not speed_x and not mfu_x:
        return None
    figure, (speed, mfu) = _new_axes("step", "tokens / s", rows=2)
    speed.plot(speed_x, speed_y, color=TRAIN_COLOUR, linewidth=1)
    speed.yaxis.set_major_formatter(EngFormatter())
    speed.set_ylim(bottom=0)
    mfu.plot(mfu_x, mfu_y, color=VAL_COLOUR, linewidth=1)
    mfu.set_ylabel("MFU")
    mfu.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    mfu.set_ylim(bottom=0)
    return figure


def plot_experts(history: RunHistory) -> Figure | None:
    """Each expert's share of the routed tokens (averaged over the sparse blocks), and the balance loss."""
    records = [r for r in history.train if r.get("expert_load")]
    if not records:
        return None
    figure, (load, balance) = _new_axes("step", "share of routed tokens", rows=2)
    steps = [r["step"] for r in records]
    shares = [[sum(column) / len(column) for column in zip(*r["expert_load"])] for r in records]
    for expert, series in enumerate(zip(*shares)):
        load.plot(steps, series, linewidth=1, label=f"expert {expert}")
    experts = len(shares[0])
    load.axhline(1 / experts, color=GUIDE_COLOUR, linestyle="--", linewidth=1, label=f"balanced: 1/{experts}")
    load.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    load.set_ylim(bottom=0)
    load.legend(loc="best", fontsize="x-small", ncol=2)
    x, y = _series(records, "step", "balance_loss")
    balance.plot(x, y, color=VAL_COLOUR, linewidth=1)
    balance.axhline(1.0, color=GUIDE_COLOUR, linestyle="--", linewidth=1)
    balance.set_ylabel("balance loss")
    return figure


# name: (file, caption, how to draw it, what the page says when there is nothing to draw: "" for nothing)
PLOTS: dict[str, tuple[str, str, Callable[[RunHistory], Figure | None], str]] = {
    "loss": ("loss.png", "Loss against tokens seen. It starts near ln V, where the model spreads its bets evenly "
             "over the vocabulary, and falls as it learns which tokens follow which.", plot_loss,
             "No training steps or evaluations logged yet."),
    "bpb": ("bits_per_byte.png", "Validation bits per byte: the loss per byte of text rather than per token, so "
            "runs with different tokenizers compare.", plot_bits_per_byte, "No evaluation logged yet."),
    "lr": ("learning_rate.png", "The learning rate at each step: warmup, then the schedule's decay.",
           plot_learning_rate, "No training steps logged yet."),
    "throughput": ("throughput.png", "Training speed in tokens per second, and model FLOPs utilisation (MFU): "
                   "the share of the machine's measured peak that the model's FLOPs use.", plot_throughput,
                   "No training steps logged yet."),
    "experts": ("experts.png", "Mixture of experts: each expert's share of the tokens routed to it, averaged over "
                "the sparse blocks (the dashed line is perfect balance), and the balance loss the run adds to its "
                "loss (1.0 when balanced; the run record gives its weight).", plot_experts, ""),
}


# ---- The page ---------------------------------------------------------------------------------------------------

PAGE_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 80em; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin: 1.2em 0 .3em; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(30em, 1fr)); gap: 1em 2em; }
figure { margin: 0; } figure img { width: 100%; max-width: 640px; } figcaption { color: #555; font-size: 14px; }
table { border-collapse: collapse; font-size: 14px; }
td, th { padding: 2px 10px; text-align: left; vertical-align: top; }
th { font-weight: normal; color: #555; } td.num { font-variant-numeric: tabular-nums; }
.sample { font: 14px/1.4 ui-monospace, monospace; white-space: pre-wrap; background: #f6f6f6;
  border-left: 3px solid #ccc; padding: .4em .7em; margin: .3em 0; }
.prompt { font-weight: bold; color: #4a78b5; } .note { color: #777; font-style: italic; }
pre.config { font-size: 13px; background: #f6f6f6; padding: .7em; overflow-x: auto; }
"""

# Run-record fields in the order the page lists them, with labels; any others follow under their own names.
RUN_FIELDS = {
    "device": "device", "name": "processor", "capability": "capability", "threads": "threads",
    "precision": "precision", "precision_reason": "why this precision", "compile": "torch.compile",
    "compile_reason": "torch.compile, why", "params": "parameters",
    "params_non_embedding": "parameters without embeddings",
    "flops_per_token": "training FLOPs per token", "peak_flops": "measured peak FLOP/s",
    "tokens_per_step": "tokens per step", "accumulation": "micro-steps per step", "governs": "length set by",
    "limit": "limit", "planned_steps": "planned steps", "resumed_from": "started at step", "torch": "torch",
    "bf16_native": "native bf16", "tensorboard": "TensorBoard logs",
    "params_active": "parameters active per token", "balance_coef": "balance loss weight",
}
DOWNSTREAM_COLUMNS = ("task", "metric", "value", "stderr", "few-shot", "examples", "step")
SKIPPED_FIELDS = {"kind", "time", "cpu", "sample", "samples"}  # "cpu" repeats "name"; samples have their section


def render_html(history: RunHistory, plot_files: dict[str, str | None]) -> str:
    """The report page; `plot_files` maps each PLOTS name to its PNG's file name, or None where nothing was drawn."""
    esc = html.escape
    figures = []
    for name, (_, caption, _, missing) in PLOTS.items():
        file = plot_files.get(name)
        if file:
            figures.append(f'<figure><img src="{esc(file)}" alt="{esc(name)}"><figcaption>{esc(caption)}'
                           "</figcaption></figure>")
        elif missing:  # a plot with nothing to say for this kind of run (a dense one's experts) is left out
            figures.append(f'<p class="note">{esc(missing)}</p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nextword report: {esc(str(history.run_dir))}</title>
<style>{PAGE_CSS}</style></head>
<body>
<h1>nextword report: {esc(str(history.run_dir))}</h1>
<p>{esc(_headline(history))}</p>
<h2>Training</h2>
<div class="plots">{"".join(figures)}</div>
{_downstream_html(history)}
<h2>Samples at each evaluation</h2>
<p class="note">The model continues each prompt (shown in bold); read down to see noise become words.</p>
{_samples_html(history)}
<h2>Machine and precision</h2>
{_fields_table(history.run, RUN_FIELDS) if history.run else '<p class="note">No run record in the log.</p>'}
<h2>Summary</h2>
{_summary_html(history)}
<h2>Config</h2>
{f'<pre class="config">{esc(history.config_text)}</pre>' if history.config_text
 else '<p class="note">No config.toml in the run directory.</p>'}
</body></html>
"""


def _headline(history: RunHistory) -> str:
    last_train = history.train[-1] if history.train else {}
    parts = [f"{last_train.get('step', 0):,} steps, {short_count(last_train.get('tokens', 0))} tokens"]
    evals = [r for r in history.evals if r.get("val_loss") is not None]
    if evals:
        first, last = evals[0], evals[-1]
        guide = f"; ln V = {math.log(history.vocab_size):.2f}" if history.vocab_size else ""
        parts.append(f"validation loss {first['val_loss']:.3f} → {last['val_loss']:.3f} nats "
                     f"(step {first['step']:,} → {last['step']:,}{guide})")
        if last.get("val_bpb") is not None:
            parts.append(f"{last['val_bpb']:.3f} bits per byte")
    if history.summary is None:
        parts.append(f"stopped at step {history.stop['step']:,}; resumable" if history.stop
                     else "not finished (still training, or interrupted)")
    if history.segments > 1:
        parts.append(f"trained in {history.segments} sessions")
    return "; ".join(parts) + "."


def _samples_html(history: RunHistory) -> str:
    if not history.evals:
        return '<p class="note">No evaluation logged yet, so no samples.</p>'
    esc = html.escape
    sections = []
    for record in history.evals:
        numbers = f"{short_count(record.get('tokens', 0))} tokens seen"
        if record.get("val_loss") is not None:
            numbers += f", validation loss {record['val_loss']:.3f} nats"
        samples = "".join(f'<div class="sample"><span class="prompt">{esc(s.get("prompt", ""))}</span>'
                          f'{esc(s.get("text", ""))}</div>' for s in record.get("samples") or [])
        sections.append(f"<h3>Step {record['step']:,} ({numbers})</h3>"
                        + (samples or '<p class="note">No samples at this evaluation.</p>'))
    return "\n".join(sections)


def _downstream_html(history: RunHistory) -> str:
    """The downstream tasks' table, where `nextword eval --tasks` (or [eval] tasks) has measured some."""
    if not history.downstream:
        return ""
    esc = html.escape
    header = "".join(f"<th>{name}</th>" for name in DOWNSTREAM_COLUMNS)
    rows = []
    for r in history.downstream:
        stderr = "" if r.get("stderr") is None else f"± {r['stderr']:.4f}"
        numbers = [f"{r['value']:.4f}", stderr] + [_value("n", r.get(k)) for k in ("num_fewshot", "examples", "step")]
        rows.append(f"<tr><td>{esc(r['task'])}</td><td>{esc(r['metric'])}</td>"
                    + "".join(f'<td class="num">{esc(n)}</td>' for n in numbers) + "</tr>")
    return ('<h2>Downstream tasks</h2>\n<p class="note">Scored by lm-evaluation-harness on the checkpoint of the '
            "step shown, with the standard error of each figure and the few-shot examples in each prompt.</p>\n"
            f"<table><tr>{header}</tr>{''.join(rows)}</table>")


def _summary_html(history: RunHistory) -> str:
    if history.summary is not None:
        return _fields_table(history.summary, {})
    if history.stop is not None:
        return (f'<p class="note">Stopped at step {history.stop["step"]:,} with a checkpoint; run the same '
                "`nextword train` command to resume. The summary comes when the run ends.</p>")
    return '<p class="note">No summary yet: the run has not finished.</p>'


def _fields_table(record: dict[str, Any], labels: dict[str, str]) -> str:
    esc = html.escape
    keys = [k for k in labels if k in record] + [k for k in record if k not in labels and k not in SKIPPED_FIELDS]
    rows = "".join(f'<tr><th>{esc(labels.get(k, k.replace("_", " ")))}</th><td class="num">{esc(_value(k, record[k]))}'
                   "</td></tr>" for k in keys)
    return f"<table>{rows}</table>"


def _value(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "peak_flops" and isinstance(value, (int, float)):
        return f"{value / 1e12:.3g} TFLOP/s"
    if key.endswith("seconds") and isinstance(value, (int, float)):
        return f"{value:,.1f} s"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---- Writing it -------------------------------------------------------------------------------------------------

def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Draw the plots and write the page; return the page's path."""
    history = read_history(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    try:
        return _write_page(history, out)
    except OSError as e:
        raise DataError(f"{out}: cannot write the report there ({e.strerror}); give --out a folder you can "
                        "write to") from None


def _write_page(history: RunHistory, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plot_files: dict[str, str | None] = {}
    for name, (file, _, draw, _) in PLOTS.items():
        figure = draw(history)
        if figure is not None:
            figure.savefig(out / file)  # a bare Figure draws with the Agg backend: no display needed
        plot_files[name] = file if figure is not None else None
    page = out / "index.html"
    page.write_text(render_html(history, plot_files), encoding="utf-8")
    return page
