"""Training tokens/s and MFU of nextword beside Hugging Face transformers: same shape, weights, batch, dtype, step.

    .venv/bin/python benchmarks/train_throughput.py [--repeats 5] [--shapes default,llama,gpt2-124m]
    .venv/bin/python benchmarks/train_throughput.py --shapes default --profile     # where the time goes

Shapes:
    default     ModelConfig() (gpt2 arch, 4 layers, d 256, context 256) with vocabulary 8192, TrainConfig's
                micro-batch (16)          vs  GPT2LMHeadModel
    llama       the same with arch = "llama" (RoPE, RMSNorm, SwiGLU)  vs  LlamaForCausalLM
    gpt2-124m   the gpt2-124m preset (12 layers, d 768, vocabulary 50257), cut to --small-context tokens and
                --small-batch sequences so a few steps fit in minutes on a CPU  vs  GPT2LMHeadModel

The transformers model is built from nextword's own export config (`nextword.model.hf.hf_config`, attention
"sdpa", dropout 0, tied embeddings) and loaded with the nextword model's weights, so both start identical (their
first losses are checked to agree). GPT-2's "gelu_new" is swapped for "gelu_pytorch_tanh", the same function
through PyTorch's fused kernel, so transformers is not slowed by an activation written in Python.

Both models are trained by the training loop's own step, `nextword.training.step.train_step` (forward, fp32
cross-entropy over all T positions, backward, gradient clipping, AdamW), with `build_optimizer`'s AdamW (fused
where torch has it) over the same two parameter groups. Steps take turns A, B, A, B… on one fixed batch, and the
table gives medians and their ratio: the machine may be shared, so a burst of load then slows both alike.

Precision: the one `resolve_precision("auto", …)` picks for that shape on this machine (the train loop's own
timed race, run afresh in an empty cache folder), and fp32 (or bf16 when auto picks fp32 and the CPU
has native bf16) as a second row. MFU is training FLOPs per token (`GPT.flops_per_token`) × tokens/s over this
machine's measured matmul peak (`nextword.training.machine.peak_flops`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Callable

import torch
from torch import Tensor, nn

from common import HFModel, empty_nextword_cache, header, interleaved, markdown_table, median, spread
from nextword.config import ModelConfig, TrainConfig, model_preset
from nextword.model.hf import hf_config, to_hf_state_dict
from nextword.training.machine import Machine, detect, peak_flops
from nextword.model import GPT
from nextword.training.optimizer import build_optimizer
from nextword.training.precision import autocast_for, resolve_precision, scaler_for
from nextword.training.step import train_step


@dataclasses.dataclass
class Shape:
    name: str
    model: ModelConfig
    batch: int
    note: str = ""


def shapes(small_batch: int, small_context: int) -> dict[str, Shape]:
    batch = TrainConfig().micro_batch
    gpt2_124m = dataclasses.replace(model_preset("gpt2-124m"), context=small_context)
    return {
        "default": Shape("default (gpt2)", ModelConfig(vocab_size=8192), batch),
        "llama": Shape("default (llama)", ModelConfig(arch="llama", vocab_size=8192), batch),
        "gpt2-124m": Shape("gpt2-124m", gpt2_124m, small_batch,
                           f"gpt2-124m at context {small_context} (preset: 1024), batch {small_batch}"),
    }


def transformers_twin(model: GPT) -> HFModel:
    """The transformers model of the same shape, holding the same weights."""
    import transformers

    config = hf_config(model.cfg, eos_id=0)
    if model.cfg.arch == "gpt2":
        config.activation_function = "gelu_pytorch_tanh"
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    hf.load_state_dict(to_hf_state_dict(model), strict=False)  # the tied head and mask buffers are not weights
    return HFModel(hf.train())


def check_same_loss(a: nn.Module, b: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    with torch.no_grad():
        loss_a, loss_b = float(a(x, y)), float(b(x, y))
    if not math.isclose(loss_a, loss_b, rel_tol=1e-3):
        raise SystemExit(f"the two models disagree on the same weights ({loss_a:.4f} vs {loss_b:.4f}): "
                         "their shapes or computations differ, so a speed comparison would mean nothing")
    return loss_a, loss_b


def stepper(model: nn.Module, precision: str, x: Tensor, y: Tensor, machine: Machine) -> Callable[[], None]:
    """One training step of `model` on (x, y) in `precision`, exactly as the training loop runs it."""
    t = TrainConfig(optimizer="adamw")  # the same AdamW step for nextword and transformers
    optimizer = build_optimizer(model, t)
    autocast, scaler = autocast_for(machine.device, precision), scaler_for(machine.device, precision)
    return lambda: train_step(model, optimizer, lambda: (x, y), 1, 1e-4, t.grad_clip, autocast, scaler)


def auto_precision(shape: Shape, machine: Machine) -> tuple[str, str]:
    """What `nextword train --precision auto` would pick for this shape here, by the train loop's own race, run
    now (not a verdict cached earlier, and not cached for later runs)."""
    cfg = shape.model

    def seconds_per_step(precision: str) -> float:
        net = GPT(cfg).to(machine.device)
        batch = torch.randint(0, cfg.vocab_size, (shape.batch, cfg.context + 1), device=machine.device)
        step = stepper(net, precision, batch[:, :-1], batch[:, 1:], machine)
        return min(interleaved({precision: step}, repeats=2)[precision].wall)

    with empty_nextword_cache():
        return resolve_precision("auto", machine, seconds_per_step, f"{cfg}|b{shape.batch}")


def measure(shape: Shape, precision: str, machine: Machine, repeats: int) -> dict:
    torch.manual_seed(0)
    ours = GPT(shape.model).to(machine.device).train()
    theirs = transformers_twin(ours).to(machine.device)
    batch = torch.randint(0, shape.model.vocab_size, (shape.batch, shape.model.context + 1), device=machine.device)
    x, y = batch[:, :-1], batch[:, 1:]
    check_same_loss(ours, theirs, x, y)
    timings = interleaved({"nextword": stepper(ours, precision, x, y, machine),
                           "transformers": stepper(theirs, precision, x, y, machine)}, repeats)
    return {"tokens": x.numel(), "flops_per_token": ours.flops_per_token(), **timings}


def profile(shape: Shape, precision: str, machine: Machine, rows: int = 18) -> None:
    """torch.profiler's top operators by self CPU time for one step of each model."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    ours = GPT(shape.model).to(machine.device).train()
    theirs = transformers_twin(ours).to(machine.device)
    batch = torch.randint(0, shape.model.vocab_size, (shape.batch, shape.model.context + 1), device=machine.device)
    for name, model in (("nextword", ours), ("transformers", theirs)):
        step = stepper(model, precision, batch[:, :-1], batch[:, 1:], machine)
        step()
        step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(f"\n## {name}, {shape.name}, {precision}: top operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="default,llama,gpt2-124m", help="comma-separated: default, llama, "
                        "gpt2-124m")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model and row (after one warmup)")
    parser.add_argument("--small-batch", type=int, default=1, help="gpt2-124m micro-batch")
    parser.add_argument("--small-context", type=int, default=256, help="gpt2-124m context (the preset's is 1024)")
    parser.add_argument("--threads", type=int, default=0, help="0: every usable core")
    parser.add_argument("--profile", action="store_true", help="profile one step of each instead of timing")
    args = parser.parse_args()

    import transformers

    machine = detect("cpu", args.threads)
    known = shapes(args.small_batch, args.small_context)
    chosen = [known[name] for name in args.shapes.split(",") if name]
    if args.profile:
        for shape in chosen:
            precision, _ = auto_precision(shape, machine)
            profile(shape, precision, machine)
        return

    peak = peak_flops(machine)
    notes = [s.note for s in chosen if s.note]
    for line in header("training throughput, nextword vs transformers " + transformers.__version__,
                       [f"matmul peak (MFU denominator): {peak / 1e12:.3f} TFLOP/s measured; "
                        f"native bf16: {machine.bf16_native}; {args.repeats} interleaved steps per model and row, "
                        "medians", *notes]):
        print(line)
    print()

    rows, reasons = [], []
    for shape in chosen:
        auto, why = auto_precision(shape, machine)
        reasons.append(f"{shape.name}: auto → {auto} ({why})")
        second = "fp32" if auto != "fp32" else ("bf16" if machine.bf16_native else None)
        for precision in [auto] + ([second] if second else []):
            result = measure(shape, precision, machine, args.repeats)
            ours, theirs = result["nextword"], result["transformers"]
            label = f"{precision} (auto)" if precision == auto else precision
            row = [f"{shape.name}, B{shape.batch}×T{shape.model.context}", label]
            for timings in (ours, theirs):
                tokens_per_s = result["tokens"] / median(timings.wall)
                row += [f"{tokens_per_s:,.0f}", f"{result['flops_per_token'] * tokens_per_s / peak:.1%}"]
            row += [f"{median(theirs.wall) / median(ours.wall):.2f}×", f"{median(theirs.cpu) / median(ours.cpu):.2f}×",
                    spread(ours.wall), spread(theirs.wall)]
            rows.append(row)
            print(f"  measured {row[0]}, {label}: {row[-4]} by the wall clock, {row[-3]} by CPU time", flush=True)

    print()
    for line in markdown_table(["shape", "precision", "nextword tok/s", "MFU", "transformers tok/s", "MFU",
                                "ratio", "ratio, CPU time", "nextword spread", "transformers spread"], rows):
        print(line)
    print()
    for line in reasons:
        print(f"- {line}")
    print("- ratio: nextword's tokens/s over transformers' (medians of wall-clock steps); ratio, CPU time: the same "
          "from the CPU time each step used, steadier when other processes share the cores; spread: fastest and "
          "slowest wall-clock step against the median")


if __name__ == "__main__":
    main()
