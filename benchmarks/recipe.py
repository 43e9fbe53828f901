"""Today's recipe against a newer one, side by side at equal wall clock on the default corpus.

    .venv/bin/python benchmarks/recipe.py --seconds 60
    .venv/bin/python benchmarks/recipe.py --seconds 90 --recipes today,muon \\
        --recipe "muon-relu2:train.optimizer=muon,model.mlp_activation=relu2"

Each recipe is the default run (`nextword train` with no options: the default model on the embedded corpus)
with a few config fields changed, trained under the same time budget (`train.budget`), one after another in this
process. The data is prepared once before the first run, so no budget pays for it. Each run's log gives its
training loss and its validation loss and bits per byte against the wall clock since its start; the table at the
end compares where each got to. The machine may be shared: runs cannot take turns step by step as the
throughput benchmarks do, so a burst of load slows whichever runs then; the steps each made are in the table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import header, markdown_table
from nextword.config import RunConfig, apply_overrides
from nextword.data.prepare import prepare
from nextword.training.trainer import train

RECIPES = {
    "today": {},  # GPT-2's: AdamW, GELU, learned positions, a tied head
    "muon": {"train.optimizer": "muon"},
    # Muon with the one option that helped it in a short ablation on this machine (benchmarks/RESULTS.md): QK-norm.
    # Squared ReLU, zero-initialised projections and a logit soft-cap of 15 did not, over 150 steps.
    "new": {"train.optimizer": "muon", "model.qk_norm": "true"},
}


def parse_recipe(text: str) -> tuple[str, dict[str, str]]:
    """'name:section.field=value,section.field=value' → (name, overrides)."""
    name, _, fields = text.partition(":")
    overrides = dict(item.split("=", 1) for item in fields.split(",") if item)
    return name, overrides


def run_recipe(name: str, overrides: dict[str, str], seconds: float, folder: Path, precision: str) -> list[dict]:
    """Train the default run with `overrides` for `seconds`; its log records."""
    cfg = apply_overrides(RunConfig(), {"train.budget": f"{seconds:g}s", "train.run_dir": str(folder / name),
                                        "train.precision": precision, **overrides}).validate()
    print(f"\n=== {name}: {', '.join(f'{k} = {v}' for k, v in overrides.items()) or 'the defaults'}", flush=True)
    train(cfg, progress=False)
    return [json.loads(line) for line in (folder / name / "log.jsonl").read_text().splitlines()]


def curve(records: list[dict]) -> list[list[object]]:
    """Rows of (seconds since the run's setup ended, step, training loss, validation loss, bits per byte): the
    clock starts at the run's first log record, after the data, model, precision and matmul-peak setup that the
    budget also pays for."""
    start = next(r["time"] for r in records if r["kind"] == "run")
    rows, train_loss = [], None
    for r in records:
        if r["kind"] == "train":
            train_loss = r["loss"]
        elif r["kind"] == "eval":
            rows.append([f"{r['time'] - start:.0f}", r["step"], "" if train_loss is None else f"{train_loss:.3f}",
                         f"{r['val_loss']:.3f}", f"{r['val_bpb']:.3f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="time budget of each run (default 60)")
    parser.add_argument("--recipes", default="today,new", help=f"named recipes, in order: {', '.join(RECIPES)}")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                        help="a further recipe: config fields changed from the defaults")
    parser.add_argument("--precision", default="auto", help="train.precision of every run (default auto)")
    args = parser.parse_args()

    recipes = {name: RECIPES[name] for name in args.recipes.split(",") if name}
    recipes.update(parse_recipe(text) for text in args.recipe)
    prepare(RunConfig().data)  # once, outside every budget
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, overrides in recipes.items():
            results[name] = run_recipe(name, overrides, args.seconds, Path(folder), args.precision)

    lines = header(f"Recipes at equal wall clock ({args.seconds:g} s each), default model and corpus")
    for name, records in results.items():
        run = next(r for r in records if r["kind"] == "run")
        fields = ", ".join(f"{k} = {v}" for k, v in recipes[name].items()) or "the defaults"
        lines += ["", f"{name}: {fields} ({run['precision']})"]
        lines += markdown_table(["s after setup", "step", "train loss", "val loss", "bits per byte"], curve(records))
    final = [[name, curve(records)[-1][1], curve(records)[-1][3], curve(records)[-1][4]]
             for name, records in results.items()]
    lines += ["", "At the end of each budget:"]
    lines += markdown_table(["recipe", "steps", "val loss", "bits per byte"], final)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
