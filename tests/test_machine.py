"""What the machine is: the matmul ceiling MFU is reported against, and whether its GPU has native bf16."""

import contextlib

import torch

from nextword.training import machine as machine_module
from nextword.training.machine import Machine, measured_peaks, peak_flops
from nextword.training.precision import resolve_precision


def test_a_peak_measured_on_a_busy_machine_does_not_stay_the_ceiling(tmp_path, monkeypatch):
    """A matmul rate measured while another process shared the cores was cached for good, so every later run
    reported MFU above 100%. Each run measures again and the best rate seen is kept."""
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path))
    cpu = Machine(torch.device("cpu"), "test CPU", "AVX2", 2, bf16_native=False)
    rates = iter([0.5e11, 2e11, 1e11])  # busy, then quiet, then busy again
    monkeypatch.setattr(machine_module, "matmul_flops", lambda device, dtype: next(rates))
    assert peak_flops(cpu) == 0.5e11
    assert peak_flops(cpu) == 2e11  # a quieter measurement raises the ceiling
    assert peak_flops(cpu) == 2e11  # and a busy one no longer lowers it
    other = Machine(torch.device("cpu"), "test CPU", "AVX2", 1, bf16_native=False)  # another thread count
    monkeypatch.setattr(machine_module, "matmul_flops", lambda device, dtype: 0.7e11)
    assert peak_flops(other) == 0.7e11


def test_the_rate_now_is_reported_beside_the_best(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path))
    cpu = Machine(torch.device("cpu"), "test CPU", "AVX2", 2, bf16_native=False)
    rates = iter([2e11, 0.5e11])  # quiet, then busy
    monkeypatch.setattr(machine_module, "matmul_flops", lambda device, dtype: next(rates))
    assert measured_peaks(cpu) == (2e11, 2e11)
    assert measured_peaks(cpu) == (0.5e11, 2e11)  # a busy machine now: a run sized now gets less compute


class V100:
    """torch.cuda as a V100 (sm_70) shows it: bf16 tensors can be made there, so bf16 counts as supported unless
    emulation is left out. `knows_emulation`: whether this torch has the including_emulation argument."""

    def __init__(self, knows_emulation: bool = True) -> None:
        self.knows_emulation = knows_emulation

    def is_bf16_supported(self, **kwargs) -> bool:
        if kwargs and not self.knows_emulation:
            raise TypeError("is_bf16_supported() got an unexpected keyword argument 'including_emulation'")
        return kwargs.get("including_emulation", True)

    def get_device_capability(self, index: int) -> tuple[int, int]:
        return 7, 0


def test_a_gpu_that_only_emulates_bf16_is_not_counted_as_having_it(monkeypatch):
    for knows_emulation in (True, False):
        gpu = V100(knows_emulation)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", gpu.is_bf16_supported)
        monkeypatch.setattr(torch.cuda, "get_device_capability", gpu.get_device_capability)
        monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
        assert torch.cuda.is_bf16_supported()  # what the trainer used to ask
        assert not machine_module.cuda_bf16_native(0)
    v100 = Machine(torch.device("cuda"), "Tesla V100", "sm_70", 8, bf16_native=False)
    assert resolve_precision("auto", v100)[0] == "fp16"


def test_a_gpu_without_native_bf16_measures_its_peak_in_fp16(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path))
    measured = []
    monkeypatch.setattr(machine_module, "matmul_flops", lambda device, dtype: measured.append(dtype) or 1e12)
    measured_peaks(Machine(torch.device("cuda"), "Tesla V100", "sm_70", 8, bf16_native=False))
    assert measured == [torch.float32, torch.float16]
