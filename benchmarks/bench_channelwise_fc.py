"""Benchmarks of channelwise_fc (pytest-benchmark) on the Context Encoder's shapes.

Providers: ours (autoenc_fast kernels), einsum (the reference), bmm on a permuted
copy (x -> (C, B, P), torch.bmm, permute back) and the torch.compile'd reference.
Modes: forward, and forward+backward (grads for x, weight and bias).

    python -m pytest benchmarks/bench_channelwise_fc.py --benchmark-columns=median,iqr,rounds \
        --benchmark-sort=name

CUDA cases skip without a GPU; on CUDA the timed function ends with a synchronize.
"""
from __future__ import annotations

import pytest
import torch

from autoenc_fast import functional, reference
from autoenc_fast.bench import channelwise_fc_bmm

HAS_CUDA = torch.cuda.is_available()
SHAPES = {"B64-C256-6x6": (64, 256, 6, 6), "B64-C512-4x4": (64, 512, 4, 4)}
PROVIDERS = ["ours", "einsum", "bmm", "compiled"]
CASES = [("cpu", torch.float32), ("cuda", torch.float32), ("cuda", torch.bfloat16)]


_COMPILED = {}


def provider_fn(name):
    if name == "ours":
        return functional.channelwise_fc
    if name == "einsum":
        return reference.channelwise_fc
    if name == "bmm":
        return channelwise_fc_bmm
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(reference.channelwise_fc, fullgraph=True)
    return _COMPILED[name]


DEVICE_DTYPES = [pytest.param(device, dtype, id=f"{device}-{str(dtype).split('.')[-1]}",
                              marks=pytest.mark.skipif(device == "cuda" and not HAS_CUDA,
                                                       reason="needs a CUDA GPU; this machine has none"))
                 for device, dtype in CASES]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_channelwise_fc(benchmark, mode, provider, shape, device, dtype):
    B, C, H, W = SHAPES[shape]
    P = H * W
    benchmark.group = f"channelwise_fc {mode} {shape} {device}-{str(dtype).split('.')[-1]}"
    x = torch.randn(B, C, H, W, device=device, dtype=dtype)
    weight = (torch.randn(C, P, P, device=device) / P**0.5).to(dtype)
    bias = torch.randn(C, P, device=device, dtype=dtype)
    grad_y = torch.randn(B, C, H, W, device=device, dtype=dtype)
    fn = provider_fn(provider)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    if mode == "forward":
        def run():
            with torch.no_grad():
                out = fn(x, weight, bias)
            sync()
            return out
    else:
        for t in (x, weight, bias):
            t.requires_grad_()

        def run():
            out = fn(x, weight, bias)
            grads = torch.autograd.grad(out, (x, weight, bias), grad_y)
            sync()
            return grads

    for _ in range(3):  # warm-up: compilation, allocator, thread pool
        run()
    expected = reference.channelwise_fc(x.detach().double(), weight.detach().double(), bias.detach().double())
    torch.testing.assert_close(fn(x, weight, bias).detach().double(), expected, atol=5e-2, rtol=5e-2)
    benchmark.pedantic(run, rounds=30 if device == "cpu" else 100, iterations=1, warmup_rounds=2)
