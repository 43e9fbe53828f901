"""Today's recipe against a newer one, side by side at equal wall clock, on the default corpus or another.

    .venv/bin/python benchmarks/recipe.py --seconds 120 --seeds 3
    .venv/bin/python benchmarks/recipe.py --seconds 120 --source ~/corpora/shakespeare
    .venv/bin/python benchmarks/recipe.py --seconds 90 --recipes today,muon \\
        --recipe "muon-relu2:train.optimizer=muon,model.mlp_activation=relu2"

Each recipe is the default run (`nextword train`: the default model on the embedded corpus, or on --source) with
a few config fields changed, under the same time budget (`train.budget`) and seed. The recipes train at the same
time, each in its own process on an equal share of the cores: on a shared machine a burst of load then slows
every recipe alike, which runs one after another could not promise. Each process picks its own precision (the
measured race of `--precision auto`). The data is prepared once before the runs start, so no budget pays for it.
Each run's log gives its training loss, and its validation loss and bits per byte, against the wall clock since
its setup ended; the table at the end compares where each got to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import header, markdown_table
from nextword.config import RunConfig, apply_overrides
from nextword.data.prepare import prepare
from nextword.tools.stats import holm, paired_t_test
from nextword.training.machine import usable_cores

# The network of the first round of the recipe (#21): GPT-2's blocks, a tied head, a plain embedding. Named field by
# field, so that the recipe stays the same whatever today's defaults are.
ROUND1 = {"model.arch": "gpt2", "model.tie_embeddings": "true", "model.embedding_norm": "false",
          "model.zero_init_head": "false"}
# The second round's winners (benchmarks/RESULTS.md, "Recipe, second round"): llama blocks (RoPE, RMSNorm, SwiGLU),
# an untied head that starts at zero, and the embedding RMS-normalised.
ROUND2 = {"model.arch": "llama", "model.tie_embeddings": "false", "model.embedding_norm": "true",
          "model.zero_init_head": "true"}

RECIPES = {
    # GPT-2's: AdamW, GELU, learned positions, a tied head, at the first default model's fixed shape (4 layers of 256)
    "today": {**ROUND1, "train.optimizer": "adamw", "model.size": "fixed"},
    "muon": {**ROUND1, "model.size": "fixed"},  # Muon at that same fixed shape
    "round1": ROUND1,  # Muon, and a model sized to the budget (training/sizing.py): the first round's defaults
    "new": ROUND2,  # the same with the second round's network: today's defaults
}


def parse_recipe(text: str) -> tuple[str, dict[str, str]]:
    """'name:section.field=value,section.field=value' → (name, overrides)."""
    name, _, fields = text.partition(":")
    overrides = dict(item.split("=", 1) for item in fields.split(",") if item)
    return name, overrides


def start_recipe(name: str, overrides: dict[str, str], args: argparse.Namespace, threads: int,
                 folder: Path) -> subprocess.Popen:
    """`nextword train` with the recipe's fields, in its own process; its output goes to FOLDER/NAME.out."""
    settings = {"train.budget": f"{args.seconds:g}s", "train.precision": args.precision, "train.seed": args.seed,
                **({"train.threads": threads} if threads else {}), **overrides}
    command = [sys.executable, "-m", "nextword", "train", "--run-dir", str(folder / name), "--quiet"]
    command += ["--preset", args.preset] if args.preset else []
    command += [option for source in args.source for option in ("--source", source)]
    command += [part for key, value in settings.items() for part in (f"--{key}", str(value))]
    print(f"=== {name}: {', '.join(f'{k} = {v}' for k, v in overrides.items()) or 'the defaults'}", flush=True)
    output = open(folder / f"{name}.out", "w")
    return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)


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


def model_size(records: list[dict]) -> str:
    run = next(r for r in records if r["kind"] == "run")
    return f"{run['params'] / 1e6:.2f}M"


def run_seed(recipes: dict[str, dict[str, str]], args: argparse.Namespace, seed: int,
             threads: int) -> dict[str, list[dict]]:
    """Every recipe's log records for one seed, the recipes trained side by side (or one at a time)."""
    args.seed = seed
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        running = {}
        for name, overrides in recipes.items():
            running[name] = start_recipe(name, overrides, args, threads, folder)
            if args.one_at_a_time:
                running[name].wait()
        for name, process in running.items():
            if process.wait() != 0:
                sys.exit(f"{name} failed:\n{(folder / f'{name}.out').read_text()[-3000:]}")
            results[name] = [json.loads(line) for line in (folder / name / "log.jsonl").read_text().splitlines()]
    return results


def seed_table(recipes: dict[str, dict[str, str]], results: dict[str, list[dict]], args: argparse.Namespace,
               seed: int, threads: int) -> list[str]:
    corpus = ", ".join(args.source) or "the embedded corpus"
    share = "one at a time" if args.one_at_a_time else f"side by side, {threads} thread(s) each"
    lines = header(f"Recipes at equal wall clock ({args.seconds:g} s each, {share}, seed {seed}), "
                   f"{args.preset or 'default'} model, {corpus}")
    for name, records in results.items():
        run = next(r for r in records if r["kind"] == "run")
        fields = ", ".join(f"{k} = {v}" for k, v in recipes[name].items()) or "the defaults"
        lines += ["", f"{name}: {fields} ({run['precision']})"]
        lines += markdown_table(["s after setup", "step", "train loss", "val loss", "bits per byte"], curve(records))
    final = [[name, model_size(records), curve(records)[-1][1], curve(records)[-1][3], curve(records)[-1][4]]
             for name, records in results.items()]
    lines += ["", "At the end of each budget:"]
    lines += markdown_table(["recipe", "model", "steps", "val loss", "bits per byte"], final)
    return lines


def seeds_summary(bpb: dict[str, list[float]], seeds: list[int]) -> list[str]:
    """Each recipe against the first over the seeds: mean bits per byte, the paired difference, Student's t
    p-value paired by seed, and the p-values Holm-adjusted for the number of recipes compared."""
    names = list(bpb)
    first = names[0]
    p_values = [paired_t_test(bpb[name], bpb[first]) for name in names[1:]]
    rows = [[first, f"{statistics.fmean(bpb[first]):.4f}", "", "", "", ""]]
    for name, p, adjusted in zip(names[1:], p_values, holm(p_values)):
        mean, base = statistics.fmean(bpb[name]), statistics.fmean(bpb[first])
        rows.append([name, f"{mean:.4f}", f"{mean - base:+.4f}", f"{100 * (1 - mean / base):.1f}%", f"{p:.3g}",
                     f"{adjusted:.3g}"])
    lines = ["", f"Over seeds {', '.join(map(str, seeds))} (bits per byte at the end of each budget; each seed's "
             f"values: {json.dumps({k: [round(v, 4) for v in vs] for k, vs in bpb.items()})}):"]
    return lines + markdown_table(["recipe", "mean bpb", f"minus {first}", f"lower than {first}", "p (paired t)",
                                   "p (Holm)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="time budget of each run (default 60)")
    parser.add_argument("--recipes", default="round1,new", help=f"named recipes, in order: {', '.join(RECIPES)}")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                        help="a further recipe: config fields changed from the defaults")
    parser.add_argument("--source", action="append", default=[], metavar="PATH",
                        help="train on this text instead of the embedded corpus (repeatable)")
    parser.add_argument("--precision", default="auto", help="train.precision of every run (default auto)")
    parser.add_argument("--preset", help="a model shape by name for every recipe (default: the default model)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run the recipes one after another, each on the whole machine (one GPU, say)")
    parser.add_argument("--seed", type=int, default=1337, help="train.seed of the first run (default 1337)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds to run, from --seed up; with two or more, a table of means, paired "
                             "differences and p-values (Student's t paired by seed, Holm-adjusted) ends the output")
    args = parser.parse_args()

    recipes = {name: RECIPES[name] for name in args.recipes.split(",") if name}
    recipes.update(parse_recipe(text) for text in args.recipe)
    data = apply_overrides(RunConfig(), {"data.sources": ",".join(args.source)} if args.source else {}).data
    prepare(data)  # once, outside every budget
    threads = 0 if args.one_at_a_time else max(1, usable_cores() // len(recipes))  # 0: every core
    seeds = [args.seed + k for k in range(args.seeds)]
    bpb: dict[str, list[float]] = {name: [] for name in recipes}
    for seed in seeds:
        results = run_seed(recipes, args, seed, threads)
        print("\n".join(seed_table(recipes, results, args, seed, threads)), flush=True)
        for name, records in results.items():
            bpb[name].append(float(curve(records)[-1][4]))
    if len(seeds) > 1:
        print("\n".join(seeds_summary(bpb, seeds)))
    else:
        first = next(iter(bpb))
        print("\n".join(f"# {name}: bits per byte {100 * (1 - values[0] / bpb[first][0]):.1f}% lower than {first}'s"
                        for name, values in bpb.items() if name != first))


if __name__ == "__main__":
    main()
