"""pytest-benchmark suites: `python -m pytest benchmarks` (CUDA cases skip without a GPU)."""
import pytest
import torch

import autoenc_fast  # noqa: F401
from autoenc_fast.bench import keep_freed_memory


def pytest_configure(config):
    # As `autoenc-fast bench`: time the kernels, not the page faults of fresh outputs.
    keep_freed_memory()


def devices():
    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none"))]
