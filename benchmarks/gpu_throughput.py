"""GPU training speed in one run: nextword's gpt2-124m beside Hugging Face transformers at the same shape, and a
~1B Llama-style model sharded by FSDP with activation checkpointing on one GPU.

    .venv/bin/python benchmarks/gpu_throughput.py                          # on a GPU (a few minutes)
    .venv/bin/python benchmarks/gpu_throughput.py --append benchmarks/RESULTS.md
    .venv/bin/python benchmarks/gpu_throughput.py --device cpu --tiny      # the same code at a tiny shape

Rows:
    nextword gpt2-124m        the gpt2-124m preset (12 layers, d 768, vocabulary 50257) at context 1024, bf16
                              autocast, torch.compile of the whole model, fused AdamW
    transformers gpt2-124m    GPT2LMHeadModel of the same shape and weights, attention "sdpa" (flash kernels on a
                              GPU), eager and compiled
    nextword llama-1b FSDP    the llama-1b preset (16 layers, d 2048, GQA 32/8, vocabulary 128256, context 2048)
                              under FSDP2 on one GPU with a bf16 compute / fp32 reduce policy, activation
                              checkpointing and torch.compile per block; micro-batches double until one does not
                              fit; the fastest row is kept, and its note names the largest that fits

Every row trains with the training loop's own step (`nextword.training.step.train_step`: forward, fp32 cross-entropy
over all positions, backward, gradient clipping, AdamW) on one fixed random batch; nothing is read back to the host
inside the timed steps, and the clock stops after a device synchronisation. MFU is training FLOPs per token
(6·N + 12·L·T·d, `GPT.flops_per_token`) × tokens/s over this device's measured dense bf16 matmul rate
(`nextword.training.machine.matmul_flops`, the figure `nextword train` reports MFU against). Peak memory is
torch.cuda.max_memory_allocated over the timed steps (not reported on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from common import HFModel
from nextword.training import distributed
from nextword.config import ModelConfig, TrainConfig, model_preset
from nextword.training.machine import DTYPES, matmul_flops
from nextword.model import GPT
from nextword.training.optimizer import build_optimizer
from nextword.training.precision import autocast_for, scaler_for
from nextword.training.step import train_step

# The presets' networks (tied heads, plain embeddings: what transformers' classes compute) at a tiny shape
TINY = {"gpt2": {"arch": "gpt2", "n_layers": 2, "d_model": 64, "n_heads": 4, "context": 64, "vocab_size": 512,
                 "tie_embeddings": True, "embedding_norm": False},
        "llama": {"arch": "llama", "n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 128,
                  "context": 64, "vocab_size": 512, "tie_embeddings": True, "embedding_norm": False}}


@dataclass
class Row:
    name: str
    batch: int
    context: int
    tokens_per_s: float
    mfu: float
    peak_memory_gib: float | None
    note: str = ""

    def markdown(self) -> str:
        memory = "n/a" if self.peak_memory_gib is None else f"{self.peak_memory_gib:.1f}"
        return (f"| {self.name} | {self.batch} × {self.context} | {self.tokens_per_s:,.0f} | {self.mfu:.1%} | "
                f"{memory} | {self.note} |")


def transformers_twin(model: GPT) -> HFModel:
    """GPT2LMHeadModel with `model`'s shape and weights. GPT-2's "gelu_new" becomes "gelu_pytorch_tanh", the
    same function through PyTorch's fused kernel, so transformers is not slowed by an activation in Python."""
    import transformers

    from nextword.model.hf import hf_config, to_hf_state_dict

    config = hf_config(model.cfg, eos_id=0)
    config.activation_function = "gelu_pytorch_tanh"
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    hf.load_state_dict(to_hf_state_dict(model), strict=False)  # the tied head and mask buffers are not weights
    return HFModel(hf.to(next(model.parameters()).device).train())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, net: nn.Module, params_owner: nn.Module, flops_per_token: int, batch: int, context: int,
            vocab: int, args: argparse.Namespace, peak: float, note: str = "", use_autocast: bool = True) -> Row:
    """Train `net` for warmup + timed steps on one fixed batch; tokens/s, MFU and peak memory of the timed ones."""
    device = torch.device(args.device)
    t = TrainConfig(optimizer="adamw")  # the same AdamW step for nextword and transformers
    optimizer = build_optimizer(params_owner, t)
    data = torch.randint(0, vocab, (batch, context + 1), device=device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    autocast = autocast_for(device, args.precision) if use_autocast else contextlib.nullcontext()
    scaler = scaler_for(device, args.precision)

    def step() -> Tensor:
        loss, _, _ = train_step(net, optimizer, lambda: (x, y), 1, 1e-4, t.grad_clip, autocast, scaler)
        return loss

    for _ in range(args.warmup):  # compilation and allocator warm-up happen here
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    seconds = time.perf_counter() - began
    if not torch.isfinite(loss):
        raise RuntimeError(f"{name}: the loss is {float(loss)}; the measurement is not of a working step")
    tokens_per_s = batch * context * args.steps / seconds
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    row = Row(name, batch, context, tokens_per_s, flops_per_token * tokens_per_s / peak, memory, note)
    print(row.markdown(), flush=True)
    return row


def shape(preset: str, tiny_arch: str, args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(**TINY[tiny_arch]) if args.tiny else model_preset(preset)


def build(cfg: ModelConfig, device: torch.device) -> GPT:
    torch.manual_seed(0)
    with device:  # initialised on the device itself: a 1B model is slow to initialise on a CPU
        return GPT(cfg)


def gpt2_rows(args: argparse.Namespace, peak: float) -> list[Row]:
    device = torch.device(args.device)
    cfg = shape("gpt2-124m", "gpt2", args)
    model = build(cfg, device)
    flops = model.flops_per_token()
    twin = transformers_twin(model)
    batch = args.batch or (16 if not args.tiny else 4)
    net = torch.compile(model) if args.compile else model
    label = "compiled" if args.compile else "eager"
    rows = [measure("nextword gpt2-124m", net, model, flops, batch, cfg.context, cfg.vocab_size, args, peak,
                    f"{args.precision}, {label}")]
    del net, model
    rows.append(measure("transformers GPT2LMHeadModel", twin, twin, flops, batch, cfg.context, cfg.vocab_size,
                        args, peak, f"{args.precision}, sdpa, eager"))
    if args.compile:
        compiled_twin = torch.compile(twin)
        rows.append(measure("transformers GPT2LMHeadModel", compiled_twin, twin, flops, batch, cfg.context,
                            cfg.vocab_size, args, peak, f"{args.precision}, sdpa, compiled"))
    return rows


def fsdp_rows(args: argparse.Namespace, peak: float) -> list[Row]:
    """llama-1b under FSDP on one GPU: the micro-batch doubles until a step runs out of memory."""
    device = torch.device(args.device)
    cfg = shape("llama-1b", "llama", args)
    world = distributed.World()
    joined = distributed.join(world, "fsdp", args.device)
    try:
        model = build(cfg, device)
        flops = model.flops_per_token()
        distributed.checkpoint_blocks(model)
        if args.compile:
            distributed.compile_blocks(model)
        distributed.wrap(model, "fsdp", world, precision=args.precision)
        rows: list[Row] = []
        batch = 1
        while batch <= args.max_fsdp_batch:
            try:
                rows.append(measure("nextword llama-1b FSDP", model, model, flops, batch, cfg.context,
                                    cfg.vocab_size, args, peak, f"{args.precision} policy, checkpointed blocks",
                                    use_autocast=distributed.autocast_needed("fsdp", args.precision)))
            except torch.OutOfMemoryError:
                print(f"(micro-batch {batch} does not fit)", flush=True)
                break
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            batch *= 2
        if not rows:
            return []
        best = max(rows, key=lambda r: r.tokens_per_s)
        best.note += f"; largest micro-batch that fits: {rows[-1].batch}"
        return [best]
    finally:
        if joined:
            distributed.leave()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="2-layer models of width 64 (checks the code path)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="default: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: on a GPU only")
    parser.add_argument("--batch", type=int, help="gpt2-124m micro-batch (default 16; 4 with --tiny)")
    parser.add_argument("--max-fsdp-batch", type=int, default=64, help="largest llama-1b micro-batch tried")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--only", choices=["gpt2", "fsdp"], help="one part only")
    parser.add_argument("--append", type=Path, metavar="FILE", help="also append the table to this Markdown file")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    args.precision = args.precision or ("bf16" if on_gpu else "fp32")
    args.compile = on_gpu if args.compile is None else args.compile
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (none in bf16 rows) may use tensor cores

    device = torch.device(args.device)
    peak = matmul_flops(device, DTYPES["bf16" if on_gpu else "fp32"])
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    tiny = " (tiny shapes: a check of the code, not a result)" if args.tiny else ""
    lines = [f"### {name}, {datetime.date.today()}{tiny}",
             "",
             (f"torch {torch.__version__}; measured dense {'bf16' if on_gpu else 'fp32'} matmul peak "
              f"{peak / 1e12:.1f} TFLOP/s; {args.steps} timed steps after {args.warmup}; "
              f"command: `{' '.join(['python', *sys.argv])}`"),
             "",
             "| run | batch × context | tokens/s | MFU | peak memory GiB | setting |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    gpt2 = gpt2_rows(args, peak) if args.only in (None, "gpt2") else []
    fsdp = fsdp_rows(args, peak) if args.only in (None, "fsdp") else []
    table = lines + [row.markdown() for row in gpt2 + fsdp]
    if gpt2:
        ratio = gpt2[0].tokens_per_s / max(row.tokens_per_s for row in gpt2[1:])
        table += ["", f"nextword gpt2-124m over the faster transformers row: {ratio:.2f}× the tokens/s"]
        print(table[-1])
    if args.append:
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n".join(table) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
