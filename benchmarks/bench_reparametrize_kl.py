"""reparametrize_kl: ours vs eager reference vs compiled reference, per mode.

    python -m pytest benchmarks/bench_reparametrize_kl.py --benchmark-group-by=param:shape,param:mode
"""
import pytest
from conftest import devices

from autoenc_fast.bench import MODES, PROVIDERS, REPARAMETRIZE_KL_SHAPES, make_reparametrize_kl


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", REPARAMETRIZE_KL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reparametrize_kl(benchmark, shape, mode, provider, device):
    run = make_reparametrize_kl(provider, mode, shape, device)
    run()  # warm-up (compilation)
    benchmark.group = f"reparametrize_kl {device} {'x'.join(map(str, shape))} {mode}"
    benchmark(run)
