"""Tests marked `cuda` skip where no CUDA GPU is, so the suite passes on any machine; `benchmarks/gpu_session.sh
smoke` runs them all on a GPU (`pytest -m cuda`)."""

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(no_gpu)
