"""What a pretraining run costs, worked out from first principles before it starts.

Give a model (a preset, --params, or its dimensions; dense, or a mixture of experts), a token count and the
hardware, and this prints: parameters; training FLOPs (6·N·D plus attention, each term shown); GPU-hours, days
and cost; memory per GPU under DDP and FSDP, with and without activation checkpointing; the Chinchilla-optimal
split of the same compute and the loss the Hoffmann et al. (2022) fit predicts. Published runs are presets
(--run llama3.1-405b): their estimate is shown beside the published GPU-hours, with the MFU those hours imply.
--from-run RUN uses the speed measured in a real nextword run. --json prints all of it as JSON.

examples:
  nextword plan --preset gpt2-124m --tokens 10B --gpu a100 --gpus 8
  nextword plan --params 1e9 --arch llama --tokens 20B --gpu h100
  nextword plan --run llama3.1-405b
  nextword plan --preset llama4-scout --tokens 40T        (a mixture of experts: 17B active of 109B)
  nextword plan --from-run runs/default --tokens 1B --gpu h100
  nextword plan --list
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from nextword.config import (
    FAMILIES, DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides, load, load_saved_run, model_preset,
    parse_count,
)
from nextword.errors import ConfigError, DataError
from nextword.tools.plan import (
    DEFAULT_MFU, GPUS, PRECISIONS, RUNS, TOKENS_PER_PARAM, Moe, check_model, count_params, gpu_spec, plan_run,
    render, render_lists, shape_for_params,
)


def configure(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model (one of --run, --preset, --config, --from-run, --params, or dimensions)")
    model.add_argument("--run", metavar="NAME", choices=RUNS, help=f"a published run: {', '.join(RUNS)}")
    model.add_argument("--preset", metavar="NAME", help="a nextword model preset: tiny, small, gpt2-124m, ...")
    model.add_argument("--config", metavar="FILE", help="the [model] section of a TOML run config")
    model.add_argument("--params", metavar="N", help="pick a conventional shape with about N parameters (1e9, 7B)")
    model.add_argument("--arch", choices=tuple(FAMILIES))
    model.add_argument("--layers", type=int)
    model.add_argument("--d-model", type=int)
    model.add_argument("--heads", type=int)
    model.add_argument("--kv-heads", type=int)
    model.add_argument("--d-ff", type=int)
    model.add_argument("--vocab", type=int, help=f"vocabulary size (default: {DataConfig().vocab_size}, "
                                                 "the size nextword trains its tokenizer to)")
    model.add_argument("--context", type=int)
    model.add_argument("--experts", type=int, help="mixture of experts: routed experts per sparse block (or set "
                       "model.n_experts in a --config, as a training run does)")
    model.add_argument("--active-experts", type=int, default=1, help="routed experts per token (default 1)")
    model.add_argument("--shared-experts", type=int, default=0, help="experts every token visits (default 0)")
    data = parser.add_argument_group("tokens and hardware")
    data.add_argument("--tokens", metavar="D", help="training tokens: 15e12, 300B, 20M (default: 20 per parameter)")
    data.add_argument("--gpu", default=None, help=f"here (this machine's CPU, measured), {', '.join(GPUS)}")
    data.add_argument("--peak-flops", type=float, help="peak dense FLOP/s of one GPU, instead of the table's")
    data.add_argument("--memory-gb", type=float, help="memory of one GPU in GiB, instead of the table's")
    data.add_argument("--gpus", type=int, help="number of GPUs (default 1, or the published run's)")
    data.add_argument("--mfu", type=float, help=f"model FLOPs utilisation, a fraction (default {DEFAULT_MFU}, or the "
                                                "published run's stated figure; --from-run adds the run's measured "
                                                "MFU beside it)")
    data.add_argument("--price", type=float, help="USD per GPU-hour (default: the table's rough rental price)")
    data.add_argument("--from-run", metavar="RUN", help="a nextword run directory: use its model and measured speed")
    memory = parser.add_argument_group("memory")
    memory.add_argument("--precision", default="bf16", choices=PRECISIONS, help="bf16 (default), amp or fp32")
    memory.add_argument("--optimizer", choices=("adamw", "muon"),
                        help="whose state to count: adamw (the default for --run), or muon (nextword's default: one "
                             "momentum for the blocks' matrices, AdamW's two moments for the rest)")
    memory.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per forward pass (default 1)")
    memory.add_argument("--no-flash", action="store_true", help="attention that stores the T×T scores")
    parser.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    parser.add_argument("--list", action="store_true", help="list the GPU table and the published runs")
    parser.epilog = "Any model field can also be set as --model.FIELD VALUE, e.g. --model.tie_embeddings false."


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(render_lists())
        return 0
    cfg, moe, defaults = model_from_args(args)
    gpu = gpu_spec(args.gpu or defaults.get("gpu", "h100"))
    if args.peak_flops is not None or args.memory_gb is not None:
        gpu = dataclasses.replace(gpu, name=f"{gpu.name} (overridden)", source=f"{gpu.source}; overridden",
                                  peak_flops=_given(args.peak_flops, gpu.peak_flops),
                                  memory_gib=_given(args.memory_gb, gpu.memory_gib))
    tokens = parse_count(args.tokens, "--tokens") if args.tokens else defaults.get("tokens")
    if tokens is None:
        tokens = TOKENS_PER_PARAM * count_params(cfg, moe).active
    mfu = _given(args.mfu, defaults.get("mfu", DEFAULT_MFU))
    # Published GPU-hours only compare with an estimate on the same GPU as the run.
    same_gpu = args.run and gpu == GPUS[RUNS[args.run].gpu]
    plan = plan_run(cfg, tokens, gpu=gpu, gpus=_given(args.gpus, defaults.get("gpus", 1)), mfu=mfu, price=args.price,
                    moe=moe, precision=args.precision, micro_batch=args.micro_batch, flash=not args.no_flash,
                    run_name=args.run if same_gpu else None, from_run=args.from_run,
                    optimizer=args.optimizer or ("adamw" if args.run else TrainConfig().optimizer))
    if args.run and not same_gpu:
        plan.notes.append(f"the published comparison is left out: the GPU differs from the run's {RUNS[args.run].gpu}")
    print(json.dumps(plan.to_dict(), indent=2) if args.json else render(plan))
    return 0


def _given(value: Any, default: Any) -> Any:
    """A flag's value where the user gave one, so that a 0 reaches validation instead of meaning 'the default'."""
    return default if value is None else value


def model_from_args(args: argparse.Namespace) -> tuple[ModelConfig, Moe | None, dict[str, Any]]:
    """The model shape, an optional MoE, and defaults a published run brings (tokens, GPU, count, MFU)."""
    defaults: dict[str, Any] = {}
    moe = None
    if args.run:
        published = RUNS[args.run]
        cfg, moe = ModelConfig(**published.model), published.moe
        defaults = dict(tokens=published.tokens, gpu=published.gpu, gpus=published.gpus, mfu=published.mfu)
    elif args.from_run:
        path = Path(args.from_run) / "config.toml"
        if not path.is_file():
            raise DataError(f"{path}: no such file; --from-run takes a run directory that `nextword train` wrote")
        cfg = load_saved_run(path).model
    elif args.config:
        cfg = load(args.config).model
    elif args.preset:
        cfg = model_preset(args.preset)
    else:
        cfg = ModelConfig()
    dims = {"arch": args.arch, "n_layers": args.layers, "d_model": args.d_model, "n_heads": args.heads,
            "n_kv_heads": args.kv_heads, "d_ff": args.d_ff, "vocab_size": args.vocab, "context": args.context}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in dims.items() if v is not None})
    if not cfg.vocab_size:
        cfg.vocab_size = DataConfig().vocab_size
    if args.params:
        # --params picks depth, width and heads itself: dimensions given beside it would be silently replaced.
        shape_flags = {"--layers": args.layers, "--d-model": args.d_model, "--heads": args.heads,
                       "--kv-heads": args.kv_heads, "--d-ff": args.d_ff}
        given = [flag for flag, value in shape_flags.items() if value is not None]
        if given:
            raise ConfigError(f"--params {args.params} picks the shape itself, so {', '.join(given)} would be "
                              "ignored; give either --params or the dimensions")
        target = parse_count(args.params, "--params")
        cfg = shape_for_params(target, cfg.arch, cfg.vocab_size, cfg.context)
    overrides = getattr(args, "overrides", None) or {}
    if overrides:
        wrapper = RunConfig(model=cfg)
        apply_overrides(wrapper, overrides)
        cfg = wrapper.model
    if args.experts is not None:
        moe = Moe(args.experts, args.active_experts, args.shared_experts, width=cfg.d_expert, every=cfg.moe_every)
    check_model(cfg, moe)
    return cfg, moe, defaults
