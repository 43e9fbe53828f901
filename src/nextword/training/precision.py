"""The arithmetic a run trains in: fp32, bf16 or fp16, chosen for this machine and model, and how a step runs
in it (autocast for bf16 and fp16, loss scaling for fp16).

Where the choice is in doubt, a CPU with native bf16, copies of the model race one training step in each
precision, and the verdict is cached per machine and model shape.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from nextword.config import RunConfig
from nextword.model import GPT
from nextword.training.distributed import World
from nextword.training.machine import DTYPES, Machine, cached
from nextword.training.optimizer import build_optimizer
from nextword.training.step import train_step

RACE_ROUNDS = 3  # timed steps per candidate, taken in turns so a burst of load hits both alike
FP32_MUST_WIN_BY = 0.9  # on a CPU with native bf16, fp32 is kept only if clearly faster


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def scaler_for(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling is only needed for fp16, whose narrow exponent underflows small gradients. torch scales on a
    CPU as on a GPU, so the same path runs, and is tested, on both."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def choose_precision(cfg: RunConfig, world: World, machine: Machine, model: GPT) -> tuple[str, str]:
    """The precision to train in and why; where it is measured, copies of the model race on rank 0."""
    t = cfg.train
    racers: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {}
    race_batch = torch.randint(0, cfg.model.vocab_size, (t.micro_batch, cfg.model.context + 1),
                               device=machine.device)

    def time_precision(precision: str) -> float:
        """CPU seconds of one step of a copy of this model in `precision` (the real model and data are untouched)."""
        if precision not in racers:
            racers[precision] = (net := copy.deepcopy(model)), build_optimizer(net, t, precision)
        net, opt = racers[precision]
        rng = torch.get_rng_state()
        began = time.process_time()
        train_step(net, opt, lambda: (race_batch[:, :-1], race_batch[:, 1:]), 1, 0.0, t.grad_clip,
                   autocast_for(machine.device, precision), scaler_for(machine.device, precision),
                   balance_coef=cfg.model.balance_coef)
        torch.set_rng_state(rng)
        return time.process_time() - began

    shape = f"{cfg.model}|b{t.micro_batch}"
    # Measured on rank 0 and shared: ranks that measured for themselves could choose differently.
    return world.from_main(resolve_precision, t.precision, machine, time_precision, shape)


def resolve_precision(requested: str, machine: Machine,
                      time_step: Callable[[str], float] | None = None, shape_key: str = "") -> tuple[str, str]:
    """Choose the training precision and say why.

    `time_step(precision)` runs one real training step of the actual model in that precision and returns its
    time (CPU time, which other processes on a shared machine disturb less than the wall clock). It is only
    called where the choice is in doubt, a CPU with native bf16, and the verdict is cached per shape.
    """
    if requested != "auto":
        if requested == "bf16" and not machine.is_cuda and not machine.bf16_native:
            warnings.warn(f"train.precision = bf16 on a CPU without native bf16 ({machine.capability}): matrix "
                          "math is emulated and may run 10–100× slower than fp32", stacklevel=2)
        if requested == "fp16" and not machine.is_cuda:
            warnings.warn(f"train.precision = fp16 on a CPU ({machine.capability}): loss scaling runs as on a GPU, "
                          "but fp16 matrix math is emulated on CPUs without AVX512-FP16 or AMX-FP16 and may run "
                          "10–100× slower than fp32", stacklevel=2)
        return requested, "set in the config"
    if machine.is_cuda:  # auto on a CPU never takes fp16: it is emulated on most CPUs, and loss scaling costs steps
        if machine.bf16_native:
            return "bf16", f"{machine.name} supports bf16"
        return "fp16", f"{machine.name} ({machine.capability}) has no native bf16; fp16 with loss scaling"
    if not machine.bf16_native:
        return "fp32", (f"this CPU ({machine.capability}) has no native bf16: bf16 would be emulated, "
                        "about 100× slower per matmul")
    if time_step is None:
        return "bf16", f"this CPU ({machine.capability}) has native bf16"

    def race() -> str:
        candidates = ("fp32", "bf16")
        for precision in candidates:  # a first step of each pays for allocation; not timed
            time_step(precision)
        times: dict[str, list[float]] = {p: [] for p in candidates}
        for _ in range(RACE_ROUNDS):
            for precision in candidates:
                times[precision].append(time_step(precision))
        fp32, bf16 = (statistics.median(times[p]) for p in candidates)
        best = "fp32" if fp32 < FP32_MUST_WIN_BY * bf16 else "bf16"
        return f"{best}|fp32={fp32 * 1e3:.0f}ms,bf16={bf16 * 1e3:.0f}ms"

    verdict = str(cached(machine, f"precision race {shape_key}", race))
    best, _, timings = verdict.partition("|")
    return best, f"native bf16 on this CPU ({machine.capability}); timed steps of this model: {timings}"
