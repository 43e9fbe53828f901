"""The checks of `benchmarks/gpu_session.sh smoke` that read what a run left: each prints a Markdown table row for
the part's results file, or one line saying what is wrong and exits 1.

    python benchmarks/gpu_check.py run RUN --precision bf16 --compiled     # trained as expected? its figures
    python benchmarks/gpu_check.py run RUN --precision bf16 --grouped      # ... and the experts ran grouped
    python benchmarks/gpu_check.py parity RUN OUT --device cuda            # export, then transformers' logits
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from nextword.tools.export import export_model
from nextword.training.checkpoint import load_for_inference
from nextword.training.runlog import read_log

RUN_HEADER = ["| run | device | params | precision | compile | steps | tokens/s | MFU | val loss | bits/byte | wall s |",
              "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
# fp32 on both sides; SDPA's kernels and the order of sums differ between the two models, nothing else.
PARITY_TOLERANCE = 2e-3


def check_run(args: argparse.Namespace) -> str:
    """The run's table row, once its log shows the precision and compile choice the check expects."""
    records = read_log(Path(args.run_dir) / "log.jsonl")
    run = next(r for r in records if r["kind"] == "run")
    summary = next((r for r in records if r["kind"] == "summary"), None)
    if summary is None:
        raise SystemExit(f"{args.run_dir}: the run did not finish (no summary in log.jsonl)")
    if run["precision"] != args.precision:
        raise SystemExit(f"{args.run_dir}: trained in {run['precision']}, expected {args.precision} "
                         f"({run['precision_reason']})")
    if run["compile"] != args.compiled:
        raise SystemExit(f"{args.run_dir}: torch.compile {'on' if run['compile'] else 'off'}, expected "
                         f"{'on' if args.compiled else 'off'} ({run['compile_reason']})")
    if args.grouped:
        from nextword.model.moe import grouped_mm_runs

        if not grouped_mm_runs(torch.device(run["device"]), torch.bfloat16):
            raise SystemExit(f"{args.run_dir}: torch's grouped matmul does not run on {run['name']}, so the "
                             "experts ran as a loop")
    last = [r for r in records if r["kind"] == "train"][-1]
    compile_note = f"on ({run['compile_reason']})" if run["compile"] else "off"
    return (f"| {Path(args.run_dir).name} | {run['name']} | {run['params'] / 1e6:.2f}M | {run['precision']} | "
            f"{compile_note} | {summary['steps']} | {last['tokens_per_s']:,.0f} | {last['mfu']:.1%} | "
            f"{summary['val_loss']:.3f} | {summary['val_bpb']:.3f} | {summary['wall_seconds']:.0f} |")


def check_parity(args: argparse.Namespace) -> str:
    """Export the run, load the export in transformers on the same device, and compare the logits."""
    import transformers

    model, tokenizer, cfg = load_for_inference(args.run_dir, device=args.device)
    out = export_model(model, tokenizer, args.out_dir)
    # The export was written just now, so its own modelling file (a network no built-in architecture computes) is
    # code this run made, safe to run.
    custom = "auto_map" in json.loads((out / "config.json").read_text())
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, trust_remote_code=custom)
    hf = hf.to(args.device).eval()
    ids = torch.randint(0, tokenizer.vocab_size, (2, cfg.model.context), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids.to(args.device)), hf(ids.to(args.device)).logits
    gap = float((ours - theirs).abs().max())
    if not gap < PARITY_TOLERANCE:
        raise SystemExit(f"{out}: transformers' {type(hf).__name__} gives logits {gap:.2e} away from the run's "
                         f"(tolerance {PARITY_TOLERANCE:.0e})")
    return (f"export of {Path(args.run_dir).name} as {type(hf).__name__} on {args.device}: largest logit gap "
            f"{gap:.1e} over 2 × {cfg.model.context} tokens (tolerance {PARITY_TOLERANCE:.0e})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="check a finished run's precision and compile choice; print its row")
    run.add_argument("run_dir")
    run.add_argument("--precision", required=True, help="the precision the run must have trained in")
    run.add_argument("--compiled", action="store_true", help="the run must have trained compiled (else eager)")
    run.add_argument("--grouped", action="store_true", help="the experts must run as torch's grouped matmul")
    run.add_argument("--header", action="store_true", help="print the table's header first")
    parity = commands.add_parser("parity", help="export the run and compare transformers' logits with its own")
    parity.add_argument("run_dir")
    parity.add_argument("out_dir")
    parity.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.command == "run":
        row = check_run(args)
        print("\n".join(RUN_HEADER + [row]) if args.header else row)
    else:
        print(check_parity(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
