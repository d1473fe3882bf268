"""Benchmarks of spade_norm, forward + backward, batch norm in training with running
statistics and leaky_relu(0.2): the fused op vs the eager plain-PyTorch reference vs
the torch.compile'd reference.

    python -m pytest benchmarks/bench_spade_norm.py --benchmark-columns=median,iqr,rounds

GauGAN shapes. On the CPU only the two smaller ones run, the second with the batch cut
from 8 to 2, so the suite stays short on a small machine. On CUDA each case also
records (extra_info) the bytes it must move, its GB/s, the GB/s of a torch clone moving
the same bytes, the fraction of that copy bandwidth, and the peak memory.
"""
from __future__ import annotations

import pytest
import torch

import autoenc_fast.functional as AF
import autoenc_fast.reference as R

CUDA_SHAPES = [(8, 1024, 16, 16), (8, 512, 64, 64), (8, 128, 128, 128), (4, 64, 256, 256)]
CPU_SHAPES = [(8, 1024, 16, 16), (2, 512, 64, 64)]
HAS_CUDA = torch.cuda.is_available()
# Fused forward + backward moves 16 tensors of x's size: forward reads x (stats), reads
# x, gamma, beta and writes y; backward reads dy, x, gamma, beta (reduce), reads them
# again and writes dx, dgamma, dbeta.
TENSOR_PASSES = 16

_compiled_reference = torch.compile(R.spade_norm)


def cases():
    out = [pytest.param("cpu", s, id=f"cpu-{'x'.join(map(str, s))}") for s in CPU_SHAPES]
    for s in CUDA_SHAPES:
        out.append(pytest.param("cuda", s, id=f"cuda-{'x'.join(map(str, s))}",
                                marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")))
    return out


IMPLS = {"ours": AF.spade_norm, "eager": R.spade_norm, "compiled": _compiled_reference}


def make_step(impl, device, shape, dtype):
    fn = IMPLS[impl]
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    gamma = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    beta = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape, device=device, dtype=dtype)
    rm = torch.zeros(shape[1], device=device)
    rv = torch.ones(shape[1], device=device)

    def step():
        x.grad = gamma.grad = beta.grad = None
        y = fn(x, gamma, beta, norm="batch", running_mean=rm, running_var=rv, negative_slope=0.2)
        y.backward(grad)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def copy_seconds(numel, dtype, repeats=20):
    """Time of a torch clone that reads and writes TENSOR_PASSES tensors of numel in all."""
    src = torch.empty(numel * TENSOR_PASSES // 2, device="cuda", dtype=dtype)
    src.clone()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        src.clone()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("device,shape", cases())
def test_spade_norm_forward_backward(benchmark, impl, device, shape):
    dtype = torch.float32
    step = make_step(impl, device, shape, dtype)
    step()  # warm-up (and compilation for the compiled reference)
    benchmark.group = f"spade_norm fwd+bwd {device} {shape}"
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        benchmark.extra_info["peak_mem_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    rounds = 11 if device == "cpu" else 50
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    if device == "cuda":
        numel = torch.Size(shape).numel()
        moved = TENSOR_PASSES * numel * torch.finfo(dtype).bits // 8
        median = benchmark.stats.stats.median
        copy = copy_seconds(numel, dtype)
        benchmark.extra_info.update(bytes=moved, GBps=moved / median / 1e9, copy_GBps=moved / copy / 1e9,
                                    fraction_of_copy=copy / median)
