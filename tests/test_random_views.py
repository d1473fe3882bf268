"""Randomized differential tests: every op, through its public functional API and autograd,
on random shapes and random strided inputs (permuted storage, steps, broadcast stride-0
views, views one element into their storage), against the plain-PyTorch reference in
float64. The other test files walk the layouts one by one; this one draws combinations
no list names (an expanded gamma with a permuted beta, a transposed weight, ...).
Each test draws its cases from the suite's per-test seed (conftest._fresh_seed, reported
on failure), so every run covers new cases and a failure reproduces.

The reference runs on dense copies of the same values (reference_of): the math does not
depend on the layout, and PyTorch's own CPU batch-norm backward does (torch 2.6 and 2.13:
for a channels_last x of batch 1 whose batch stride is not C*H*W, e.g. strides
(1, 1, 12, 2) for shape (1, 2, 8, 6), F.batch_norm's x gradient is wrong, while the same
values laid out (96, 1, 12, 2) or NCHW give the right one).
"""
from __future__ import annotations

import random

import pytest
import torch

import autoenc_fast.functional as AF
import autoenc_fast.reference as R
from autoenc_fast import _ext

pytestmark = pytest.mark.skipif(not _ext.LOADED, reason=f"compiled extension not loaded: {_ext.STATUS}")

CASES = 25
TOLERANCE = dict(rtol=1e-9, atol=1e-9)


def random_view(rng: random.Random, shape) -> torch.Tensor:
    """Fresh float64 values with `shape`, laid out in one of several ways."""
    kind = rng.choice(["dense", "channels_last", "permuted", "stepped", "broadcast", "offset"])
    if kind == "channels_last" and len(shape) == 4:
        return torch.randn(shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    if kind == "permuted":
        order = list(range(len(shape)))
        rng.shuffle(order)
        base = torch.randn([shape[d] for d in order], dtype=torch.float64)
        return base.permute([order.index(d) for d in range(len(shape))])
    if kind == "stepped":
        steps = [rng.choice([1, 2]) for _ in shape]
        base = torch.randn([size * step + 1 for size, step in zip(shape, steps)], dtype=torch.float64)
        return base[tuple(slice(0, size * step, step) for size, step in zip(shape, steps))]
    if kind == "broadcast":  # stride 0 along the dims drawn as 1
        return torch.randn([1 if rng.random() < 0.4 else size for size in shape], dtype=torch.float64).expand(shape)
    if kind == "offset":
        return torch.randn(torch.Size(shape).numel() + 1, dtype=torch.float64)[1:].view(shape)
    return torch.randn(shape, dtype=torch.float64)


def outputs_and_grads(fn, inputs, **kwargs):
    """fn's outputs and the gradients of its tensor inputs for fixed random output grads."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    outs = fn(*leaves, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(out.shape, dtype=out.dtype, generator=generator) for out in outs]
    torch.autograd.backward(outs, grads)
    return [*outs, *(leaf.grad for leaf in leaves)]


def reference_of(fn, inputs, **kwargs):
    """outputs_and_grads of the reference on dense copies of `inputs` (see the module doc)."""
    return outputs_and_grads(fn, [t.contiguous() for t in inputs], **kwargs)


def assert_agree(ours, reference, what: str) -> None:
    for k, (actual, expected) in enumerate(zip(ours, reference, strict=True)):
        torch.testing.assert_close(actual, expected, **TOLERANCE, msg=lambda m: f"{what}, output {k}: {m}")


def test_channelwise_fc_random_views():
    rng = random.Random(torch.initial_seed())
    for _ in range(CASES):
        B, C, H, W = rng.randint(0, 5), rng.randint(1, 5), rng.randint(1, 7), rng.randint(1, 7)
        P = H * W
        x, weight = random_view(rng, (B, C, H, W)), random_view(rng, (C, P, P)) / P**0.5
        inputs = [x, weight] + ([random_view(rng, (C, P))] if rng.random() < 0.7 else [])
        what = f"x {tuple(x.shape)} strides {x.stride()}, weight strides {weight.stride()}, bias {len(inputs) == 3}"
        assert_agree(outputs_and_grads(AF.channelwise_fc, inputs), reference_of(R.channelwise_fc, inputs),
                     what)


def test_spade_norm_random_views():
    rng = random.Random(torch.initial_seed())
    for _ in range(CASES):
        N, C, H, W = rng.randint(1, 4), rng.randint(1, 5), rng.randint(2, 9), rng.randint(1, 9)
        norm = rng.choice(["batch", "instance"])
        training = norm == "instance" or rng.random() < 0.7
        kwargs = dict(norm=norm, training=training, negative_slope=rng.choice([None, 0.0, 0.2]))
        if norm == "batch" and (not training or rng.random() < 0.7):
            kwargs.update(running_mean=torch.randn(C, dtype=torch.float64),
                          running_var=torch.rand(C, dtype=torch.float64) + 0.5)
        inputs = [random_view(rng, (N, C, H, W)) * 2 + 0.5] + [random_view(rng, (N, C, H, W)) for _ in range(2)]
        buffers = {k: v for k, v in kwargs.items() if k.startswith("running")}
        ours_kwargs = {**kwargs, **{k: v.clone() for k, v in buffers.items()}}
        what = f"{kwargs} shape {(N, C, H, W)} strides {[t.stride() for t in inputs]}"
        assert_agree(outputs_and_grads(AF.spade_norm, inputs, **ours_kwargs),
                     reference_of(R.spade_norm, inputs, **kwargs), what)
        for name, buffer in buffers.items():  # running statistics updated alike
            torch.testing.assert_close(ours_kwargs[name], buffer, **TOLERANCE, msg=lambda m: f"{name} {what}: {m}")


def test_reparametrize_kl_random_views():
    rng = random.Random(torch.initial_seed())
    for _ in range(CASES):
        shape = [rng.randint(1, 5) for _ in range(rng.randint(1, 4))]
        inputs = [random_view(rng, shape), random_view(rng, shape) * 0.5, random_view(rng, shape)]  # mu, logvar, eps
        what = f"shape {shape} strides {[t.stride() for t in inputs]}"
        assert_agree(outputs_and_grads(AF.reparametrize_kl, inputs), reference_of(R.reparametrize_kl, inputs),
                     what)


def test_spade_norm_channels_last_batch_of_one_with_an_unusual_batch_stride():
    # The case where PyTorch's own batch-norm backward goes wrong (module doc): ours must
    # not, whatever stride a batch of one carries.
    shape, strides = (1, 2, 8, 6), (1, 1, 12, 2)
    x = torch.as_strided(torch.randn(96, dtype=torch.float64) * 2 + 0.5, shape, strides)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    inputs = [x, torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)]
    assert_agree(outputs_and_grads(AF.spade_norm, inputs), reference_of(R.spade_norm, inputs), f"strides {strides}")
