"""The arithmetic a step runs in: autocast for bf16 and fp16, loss scaling for fp16."""

from __future__ import annotations

import contextlib

import torch

from nextword.training.machine import DTYPES


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def scaler_for(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling is only needed for fp16, whose narrow exponent underflows small gradients."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")
