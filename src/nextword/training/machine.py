"""What this machine is and what it is good at, found out at run time, never assumed.

Two CPUs of the same family can differ by 100× in bf16 matrix speed (native AVX-512 BF16 versus emulation on
AVX2), so the precision, thread count and compile choice are decided from the probes and measurements made here,
and the measurements are cached per machine so a second run does not pay for them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from nextword.errors import ConfigError
from nextword.files import write_text_atomically

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Machine:
    device: torch.device
    name: str  # the CPU model or GPU name
    capability: str  # torch.backends.cpu.get_cpu_capability(), or the CUDA compute capability
    threads: int
    bf16_native: bool

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> dict:
        return {"device": str(self.device), "name": self.name, "capability": self.capability,
                "threads": self.threads, "bf16_native": self.bf16_native, "torch": torch.__version__}


def usable_cores() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_native() -> bool:
    """True where the CPU does bf16 matrix math in hardware (AVX-512 BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_bf16_native(index: int) -> bool:
    """True where GPU `index` does bf16 math in hardware (Ampere, sm_80, and later).

    torch.cuda.is_bf16_supported() alone also counts emulation, which a V100 or T4 has: bf16 runs there, but far
    slower than fp16. `including_emulation=False` asks for hardware alone; torch has it since early 2025, before
    2.9, the oldest torch this project takes. Without it, the compute capability decides, as torch's own check does.
    https://docs.pytorch.org/docs/stable/generated/torch.cuda.is_bf16_supported.html
    """
    with torch.cuda.device(index):  # torch asks about the current device
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            return torch.cuda.get_device_capability(index)[0] >= 8


def resolve_device(device: str, setting: str = "train.device") -> torch.device:
    """'auto' (the GPU where there is one, else the CPU), 'cpu', 'cuda' or 'cuda:N' as a device this machine has;
    anything else is a one-line error naming `setting`, the flag or config field the value came from."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{setting} = {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} = {device!r}, but this machine has no CUDA GPU; use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{setting} = {device!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                          "use cuda:0 or cuda")
    return dev


def detect(device: str = "auto", threads: int = 0, bf16_probe: Callable[[], bool] = cpu_bf16_native) -> Machine:
    """Pick the device and thread count. `bf16_probe` is injectable so both CPU paths can be tested anywhere."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return Machine(dev, torch.cuda.get_device_name(index), f"sm_{major}{minor}", usable_cores(),
                       cuda_bf16_native(index))
    n = threads or usable_cores()
    torch.set_num_threads(n)
    return Machine(dev, cpu_model(), torch.backends.cpu.get_cpu_capability(), n, bf16_probe())


def cache_dir() -> Path:
    return Path(os.environ.get("NEXTWORD_CACHE", Path.home() / ".cache" / "nextword"))


def _machine_key(machine: Machine) -> str:
    return f"{machine.name}|{machine.capability}|{machine.threads}|torch {torch.__version__}"


def cached(machine: Machine, key: str, compute: Callable[[], float | str]) -> float | str:
    """A per-machine measurement, computed once and kept in the cache folder."""
    table, full_key = _cache_table(), _cache_key(machine, key)
    if full_key not in table:
        table[full_key] = compute()
        _write_cache_table(table)
    return table[full_key]


def best_measured(machine: Machine, key: str, measured: float) -> float:
    """The highest of this measurement and every earlier one of `key` on this machine, which is kept: a rate
    measured while another process shared the cores is lower than the machine's, and must not stay its ceiling."""
    table, full_key = _cache_table(), _cache_key(machine, key)
    best = max(measured, float(table.get(full_key, 0.0)))
    if best != table.get(full_key):
        table[full_key] = best
        _write_cache_table(table)
    return best


def _cache_key(machine: Machine, key: str) -> str:
    return hashlib.sha256(f"{_machine_key(machine)}|{key}".encode()).hexdigest()[:16]


def _cache_table() -> dict:
    try:
        table = json.loads((cache_dir() / "machine.json").read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def _write_cache_table(table: dict) -> None:
    path = cache_dir() / "machine.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(table, indent=1))
    except OSError:
        pass  # a read-only cache only costs a re-measurement next time


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """Dense square-matmul rate in FLOP/s: the ceiling that MFU is measured against."""
    n = 4096 if device.type == "cuda" else 1024
    # A generator of its own: drawing from the global one would change the model's initial weights, on rank 0 alone
    # when rank 0 measures for every rank.
    generator = torch.Generator(device=device)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    _sync(device)
    a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if reps % 4 == 0:
            _sync(device)
            if time.perf_counter() - start > seconds:
                break
    return 2 * n**3 * reps / (time.perf_counter() - start)


def peak_flops(machine: Machine) -> float:
    """The fastest dense matmul rate this device reaches in any precision it supports natively: measured again at
    every run (0.3 s a precision) and kept at the best seen, so that one measured on a busy machine does not
    report MFU above 100% on every run after it."""
    return measured_peaks(machine)[1]


def measured_peaks(machine: Machine) -> tuple[float, float]:
    """The fastest dense matmul rate in any precision the device supports natively (fp16 on a GPU without native
    bf16), as measured now (what a run starting now can expect, other processes' load included) and the best ever
    seen (the ceiling)."""
    precisions = ["fp32", "bf16"] if machine.bf16_native else ["fp32", "fp16"] if machine.is_cuda else ["fp32"]
    now = {p: matmul_flops(machine.device, DTYPES[p]) for p in precisions}
    return max(now.values()), max(best_measured(machine, f"matmul {p}", rate) for p, rate in now.items())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
