"""Shared test helpers: devices, tolerances, fresh random inputs."""
from __future__ import annotations

import pytest
import torch

import autoenc_fast  # noqa: F401  (registers the ops)

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; this machine has none")

# Tolerances against a float64 reference (DESIGN.md).
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def devices() -> list:
    """CPU always; CUDA as a real parameter that skips, saying why, without a GPU."""
    return ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A different but reported seed per test: fresh inputs, reproducible failures."""
    seed = torch.seed() % 2**31
    torch.manual_seed(seed)
    request.node.user_properties.append(("torch_seed", seed))
    yield
