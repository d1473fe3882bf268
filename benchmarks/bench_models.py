"""One training step (forward + loss + backward + Adam step) of each model family:
backend="fused" vs backend="reference" eager vs the reference under torch.compile.

    python -m pytest benchmarks/bench_models.py --benchmark-group-by=group

CPU-sized configurations on the CPU, the papers' sizes on CUDA (skipped without a GPU);
the configurations and step builders live in autoenc_fast.bench (shared with
`autoenc-fast bench`). The ConvAutoencoder has no fused block yet, so its fused and
reference steps run the same layers: their ratio measures noise, not a kernel. The
GauGAN step is the generator's (the discriminator has no fused block).
"""
from __future__ import annotations

import pytest
import torch
from conftest import devices

from autoenc_fast.bench import MODEL_CONFIGS, make_model_step

PROVIDERS = ("fused", "reference", "reference_compiled")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("family", list(MODEL_CONFIGS))
def test_train_step(benchmark, family, provider, device):
    torch._dynamo.reset()
    step = make_model_step(family, provider, device)
    step()  # warm-up: compilation and first-call costs stay out of the numbers
    step()
    benchmark.group = f"{family} train step {device}"
    benchmark.pedantic(step, rounds=15, warmup_rounds=1)
