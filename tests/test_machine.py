"""What the machine is: the matmul ceiling MFU is reported against."""

import torch

from nextword.training import machine as machine_module
from nextword.training.machine import Machine, measured_peaks, peak_flops


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
