"""autoenc_fast spade_norm: the fused op and the SPADE module against plain PyTorch."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autoenc_fast.functional as AF
import autoenc_fast.reference as R
from autoenc_fast import _ext
from autoenc_fast.nn import SPADE

from conftest import (HAS_CUDA, TOLERANCES, assert_double_backward_refused, assert_gamma_beta_readers_agree,
                      assert_merged_ops_agree_with_separate,
                      compile_for_sm90, devices, run_under_triton_interpreter)

OPS = ["spade_norm", "spade_norm_merged", "spade_norm_stats", "spade_norm_apply", "spade_norm_backward",
       "spade_norm_merged_backward", "spade_norm_backward_reduce", "spade_norm_backward_elemt",
       "spade_norm_merged_backward_elemt"]
needs_ext = pytest.mark.skipif(not _ext.LOADED, reason=f"extension not loaded: {_ext.STATUS}")


def make_inputs(shape, dtype, device, channels_last=False, offset=3.0):
    """Fresh random x (mean far from 0, to exercise the shifted variance), gamma, beta."""
    x = torch.randn(shape, dtype=dtype, device=device) * 2 + offset
    gamma = torch.randn(shape, dtype=dtype, device=device)
    beta = torch.randn(shape, dtype=dtype, device=device)
    if channels_last:
        x, gamma, beta = (t.contiguous(memory_format=torch.channels_last) for t in (x, gamma, beta))
    return x, gamma, beta


def running(c, device):
    return (torch.randn(c, device=device), torch.rand(c, device=device) + 0.5)


def run(fn, x, gamma, beta, grad, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (x, gamma, beta)]
    y = fn(*leaves, **kw)
    y.backward(grad)
    return y, [t.grad for t in leaves]


def assert_grads_close(grads, grads_ref, y_ref, slope, names=("x", "gamma", "beta"), norm="batch", **tol):
    """Gradients against the float64 reference, away from leaky_relu's kink: where the
    pre-activation is within float32 rounding of 0 its sign, and so the slope applied
    to that element's gradient, may differ from float64's (seen once on an H200).

    The window (|pre-activation| <= 1e-4, some 100 float32 ulps of these O(10) values)
    holds about 0.05% of the elements of a random draw; the guard only makes sure the
    filter never hides most of them (a 0.99 guard failed on a 210-element draw in CI).
    dx (the first gradient) sums over each statistics group (per channel for `norm`
    "batch", per sample and channel for "instance"), so one flipped element moves its whole
    group's dx a little: groups holding an element within 1e-5 of the kink (about ten
    float32 ulps; the flip seen was at 1.4e-7) are left out of dx's comparison (seen: 3
    failing draws in 1,500 of an instance-norm case). With 73,728-element batch-norm groups
    about a fifth of them go, hence the lower guard for dx."""
    if slope is None:
        keep = keep_dx = torch.ones_like(y_ref, dtype=torch.bool)
    else:
        pre_activation = torch.where(y_ref > 0, y_ref, y_ref / slope)
        keep = pre_activation.abs() > 1e-4
        group_dims = (2, 3) if norm == "instance" else (0, 2, 3)
        near_kink = (pre_activation.abs() <= 1e-5).double().amax(dim=group_dims, keepdim=True) > 0
        keep_dx = keep & ~near_kink
    assert keep.float().mean() > 0.9 and keep_dx.float().mean() > 0.25
    for i, (name, g, g_ref) in enumerate(zip(names, grads, grads_ref)):
        mask = keep_dx if i == 0 else keep
        torch.testing.assert_close(g.double()[mask], g_ref[mask], msg=name, **tol)


CASES = [  # (norm, training)
    ("batch", True), ("batch", False), ("instance", True)]


@needs_ext
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("norm,training", CASES)
@pytest.mark.parametrize("slope", [None, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
# (8, 64, 16, 16) is over the CPU's small-tensor size (512 KiB) with rows under 1024: it takes
# the two linear passes; the smaller shapes and 32x32 maps take the cache-blocked passes.
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 16, 8, 8), (3, 8, 1, 9), (8, 64, 16, 16)])
def test_op_matches_float64_reference(device, norm, training, slope, channels_last, shape):
    dtype = torch.float32
    x, gamma, beta = make_inputs(shape, dtype, device, channels_last)
    grad = torch.randn(shape, dtype=dtype, device=device)
    rm, rv = running(shape[1], device) if norm == "batch" else (None, None)
    kw = dict(norm=norm, training=training, negative_slope=slope)
    ours_rm, ours_rv = (rm.clone(), rv.clone()) if rm is not None else (None, None)
    y, grads = run(AF.spade_norm, x, gamma, beta, grad, running_mean=ours_rm, running_var=ours_rv, **kw)
    ref_rm, ref_rv = (rm.double(), rv.double()) if rm is not None else (None, None)
    y_ref, grads_ref = run(R.spade_norm, x.double(), gamma.double(), beta.double(), grad.double(),
                           running_mean=ref_rm, running_var=ref_rv, **kw)
    tol = TOLERANCES[dtype]
    expected_format = torch.channels_last if channels_last and shape[2] * shape[3] > 1 else torch.contiguous_format
    assert y.is_contiguous(memory_format=expected_format)
    # atol scaled: y and the gradients are O(10) for these inputs.
    torch.testing.assert_close(y.double(), y_ref, atol=10 * tol["atol"], rtol=tol["rtol"])
    assert_grads_close(grads, grads_ref, y_ref, slope, norm=norm, atol=20 * tol["atol"], rtol=tol["rtol"])
    if rm is not None:  # running statistics: updated in training as F.batch_norm, untouched in eval
        torch.testing.assert_close(ours_rm.double(), ref_rm, **tol)
        torch.testing.assert_close(ours_rv.double(), ref_rv, **tol)
        if not training:
            assert torch.equal(ours_rm, rm) and torch.equal(ours_rv, rv)


@needs_ext
@pytest.mark.parametrize("norm,training", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_float64_matches_reference_tightly(norm, training, channels_last):
    x, gamma, beta = make_inputs((3, 5, 6, 4), torch.float64, "cpu", channels_last)
    grad = torch.randn_like(x)
    rm, rv = (t.double() for t in running(5, "cpu")) if norm == "batch" else (None, None)
    kw = dict(norm=norm, training=training, negative_slope=0.1)
    ours = dict(running_mean=rm.clone(), running_var=rv.clone()) if rm is not None else {}
    y, grads = run(AF.spade_norm, x, gamma, beta, grad, **ours, **kw)
    y_ref, grads_ref = run(R.spade_norm, x, gamma, beta, grad, running_mean=rm, running_var=rv, **kw)
    torch.testing.assert_close(y, y_ref, **TOLERANCES[torch.float64])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **TOLERANCES[torch.float64])
    if rm is not None:
        torch.testing.assert_close(ours["running_mean"], rm, **TOLERANCES[torch.float64])
        torch.testing.assert_close(ours["running_var"], rv, **TOLERANCES[torch.float64])


@needs_ext
@pytest.mark.parametrize("shape,channels_last", [((2, 16, 192, 192), False), ((8, 640, 16, 16), False),
                                                 ((8, 640, 16, 16), True)])
def test_cpu_outputs_over_4mib_are_written_by_streaming_stores(shape, channels_last):
    """Outputs over 4 MiB take non-temporal stores on the CPU (blocked passes, the two
    linear passes, channels_last): every element written, values and gradients right."""
    x, gamma, beta = make_inputs(shape, torch.float32, "cpu", channels_last)
    grad = torch.randn(shape)
    kw = dict(norm="batch", training=True, negative_slope=0.2)
    y, grads = run(AF.spade_norm, x, gamma, beta, grad, **kw)
    y_ref, grads_ref = run(R.spade_norm, x.double(), gamma.double(), beta.double(), grad.double(), **kw)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(y.double(), y_ref, atol=10 * tol["atol"], rtol=tol["rtol"])
    assert_grads_close(grads, grads_ref, y_ref, 0.2, atol=20 * tol["atol"], rtol=tol["rtol"])


@needs_ext
@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("slope", [None, 0.2])
def test_cpu_two_sweep_backward_matches_reference_in_float64(norm, slope):
    """NCHW over 512 KiB with maps under 1024 elements: the CPU backward's first sweep
    writes dgamma and dbeta, and the second forms dx from dbeta, x and gamma (beta not read
    again). Tight in float64, and equal to the separate reduce + elementwise ops."""
    x, gamma, beta = make_inputs((8, 64, 16, 16), torch.float64, "cpu")
    assert x.numel() * x.element_size() > 512 * 1024
    grad = torch.randn_like(x)
    kw = dict(norm=norm, training=True, negative_slope=slope)
    y, grads = run(AF.spade_norm, x, gamma, beta, grad, **kw)
    y_ref, grads_ref = run(R.spade_norm, x, gamma, beta, grad, **kw)
    torch.testing.assert_close(y, y_ref, **TOLERANCES[torch.float64])
    for name, g, g_ref in zip(("x", "gamma", "beta"), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=name, **TOLERANCES[torch.float64])
    ops = torch.ops.autoenc_fast
    _, mean, invstd = ops.spade_norm(x, gamma, beta, None, None, True, norm == "instance", 0.1, 1e-5, slope)
    fused = ops.spade_norm_backward(grad, x, gamma, beta, mean, invstd, True, slope)
    sum1, sum2 = ops.spade_norm_backward_reduce(grad, x, gamma, beta, mean, invstd, slope)
    count = x.shape[2] * x.shape[3] * (1 if norm == "instance" else x.shape[0])
    pieces = ops.spade_norm_backward_elemt(grad, x, gamma, beta, mean, invstd, sum1 / count, sum2 / count, slope)
    for name, a, b in zip(("x", "gamma", "beta"), fused, pieces):
        torch.testing.assert_close(a, b, msg=name, rtol=1e-12, atol=1e-12)


def test_triton_candidate_kernels_under_the_interpreter_match_reference(tmp_path):
    """The Triton SPADE kernels (autoenc_fast.triton.spade_norm, timed against the CUDA C++
    ones on a GPU), interpreted on the CPU: statistics, output and gradients against the
    float64 reference, batch and instance norm, with and without slope, a map wider than
    one tile, a mean far from zero, and groups whose first element is a spike (sums shifted
    by that element lost 1e-4 of this variance, Welford's keep it to 1e-6); both the
    two-kernel passes and the fused one-program-per-group ones."""
    cases = {}
    for name, shape, instance, slope, offset in [("batch", (3, 4, 5, 7), False, 0.2, 0.0),
                                                 ("instance", (2, 3, 6, 5), True, None, 0.0),
                                                 ("wide_batch", (2, 3, 33, 40), False, None, 0.0),
                                                 ("offset", (2, 3, 4, 4), False, 0.1, 1000.0),
                                                 ("spike", (8, 3, 16, 40), False, None, 0.0),
                                                 ("far_mean", (2, 3, 8, 40), False, None, 1000.0)]:
        x, gamma, beta = make_inputs(shape, torch.float32, "cpu", offset=offset)
        if name == "spike":
            x[:, :, 0, 0] = 1e3 * (1 + torch.rand(shape[:2]))
        if name == "far_mean":  # |mean| / std = 1e5: Welford on x itself lost 1e-3 of the variance
            x = torch.randn(shape) * 0.01 + offset
        cases[name] = dict(x=x, gamma=gamma, beta=beta, grad=torch.randn(shape), instance=instance, slope=slope)
    torch.save(cases, tmp_path / "cases.in")
    run_under_triton_interpreter("triton_interpret_spade.py", tmp_path / "cases.out")
    results = torch.load(tmp_path / "cases.out")
    tol = TOLERANCES[torch.float32]
    for (name, case), fused in ((item, fused) for item in cases.items() for fused in (False, True)):
        norm = "instance" if case["instance"] else "batch"
        x64, g64, b64, grad64 = (case[k].double() for k in ("x", "gamma", "beta", "grad"))
        y_ref, grads_ref = run(R.spade_norm, x64, g64, b64, grad64, norm=norm, negative_slope=case["slope"])
        dims = (2, 3) if case["instance"] else (0, 2, 3)
        got = results[(name, fused)]
        name = f"{name}{' (fused)' if fused else ''}"
        torch.testing.assert_close(got["invstd"], torch.rsqrt(got["var"] + 1e-5), msg=f"{name}: invstd")
        torch.testing.assert_close(got["mean"].double().flatten(), x64.mean(dims).flatten(), msg=f"{name}: mean",
                                   atol=1e-5 * max(1.0, x64.abs().max().item()), rtol=1e-5)
        torch.testing.assert_close(got["var"].double().flatten(), x64.var(dims, unbiased=False).flatten(),
                                   msg=f"{name}: var", atol=0 if name.startswith(("spike", "far_mean")) else 1e-4,
                                   rtol=2e-5 if name.startswith(("spike", "far_mean")) else 1e-3)
        if name.startswith("far_mean"):  # y there is float32's: the mean rounds by 3e-5 against std 0.01
            continue
        torch.testing.assert_close(got["y"].double(), y_ref, msg=f"{name}: y", atol=10 * tol["atol"], rtol=tol["rtol"])
        assert_grads_close(got["grads"], grads_ref, y_ref, case["slope"], norm=norm, atol=20 * tol["atol"],
                           rtol=tol["rtol"])
        assert torch.equal(got["y_fn"], got["y"])
        assert all(torch.equal(a, b) for a, b in zip(got["grads_fn"], got["grads"]))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("instance", [False, True])
def test_triton_candidate_kernels_compile_for_sm90_without_a_gpu(dtype, instance):
    """Triton compiles these kernels to sm_90 machine code here, with no GPU: a kernel that
    would not build on the H100/H200 fails in CI, not in the GPU check's few minutes."""
    tl = pytest.importorskip("triton.language")
    from autoenc_fast.triton import spade_norm as kernels

    ptrs = dict.fromkeys  # (names, type): every named argument a pointer of that type
    data, stats = f"*{dtype}", "*fp32"
    flags = {"INSTANCE": instance, "HAS_SLOPE": True, "ACC": tl.float32, "BLOCK": kernels.BLOCK}
    for backward in (False, True):
        compile_for_sm90(kernels._reduce_kernel,
                         {**ptrs(["dy_ptr", "x_ptr", "gamma_ptr", "beta_ptr"], data),
                          **ptrs(["mean_ptr", "invstd_ptr", "out1_ptr", "out2_ptr"], stats),
                          "N": "i32", "C": "i32", "HW": "i32", "slope": "fp32"}, {"BACKWARD": backward, **flags})
    compile_for_sm90(kernels._apply_kernel, {**ptrs(["x_ptr", "gamma_ptr", "beta_ptr"], data),
                                             **ptrs(["mean_ptr", "invstd_ptr"], stats), "y_ptr": data,
                                             "C": "i32", "HW": "i32", "slope": "fp32"}, flags)
    compile_for_sm90(kernels._backward_elemt_kernel,
                     {**ptrs(["dy_ptr", "x_ptr", "gamma_ptr", "beta_ptr"], data),
                      **ptrs(["mean_ptr", "invstd_ptr", "sum1_ptr", "sum2_ptr"], stats),
                      **ptrs(["dx_ptr", "dgamma_ptr", "dbeta_ptr"], data), "C": "i32", "HW": "i32",
                      "inv_m": "fp32", "slope": "fp32"}, flags)
    compile_for_sm90(kernels._fused_forward_kernel,
                     {**ptrs(["x_ptr", "gamma_ptr", "beta_ptr", "y_ptr"], data),
                      **ptrs(["mean_ptr", "var_ptr", "invstd_ptr"], stats),
                      "N": "i32", "C": "i32", "HW": "i32", "eps": "fp32", "slope": "fp32"}, flags)
    compile_for_sm90(kernels._fused_backward_kernel,
                     {**ptrs(["dy_ptr", "x_ptr", "gamma_ptr", "beta_ptr"], data),
                      **ptrs(["mean_ptr", "invstd_ptr"], stats), **ptrs(["dx_ptr", "dgamma_ptr", "dbeta_ptr"], data),
                      "N": "i32", "C": "i32", "HW": "i32", "inv_m": "fp32", "slope": "fp32"}, flags)


@needs_ext
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_cpu_cache_blocked_path_matches_the_separate_passes(norm):
    """32x32 maps take the CPU's cache-blocked path (one group's reduction, then its
    elementwise pass): against the reference, and statistics equal to the separate
    stats op's bit for bit (same summation order, whatever the path)."""
    x, gamma, beta = make_inputs((2, 7, 32, 32), torch.float64, "cpu")
    grad = torch.randn_like(x)
    instance = norm == "instance"
    kw = dict(norm=norm, training=True, negative_slope=0.2)
    rm, rv = (torch.zeros(7, dtype=torch.float64), torch.ones(7, dtype=torch.float64)) if not instance else (None, None)
    y, grads = run(AF.spade_norm, x, gamma, beta, grad, running_mean=rm, running_var=rv, **kw)
    y_ref, grads_ref = run(R.spade_norm, x, gamma, beta, grad, **kw)
    torch.testing.assert_close(y, y_ref, **TOLERANCES[torch.float64])
    for name, g, g_ref in zip(("x", "gamma", "beta"), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=name, **TOLERANCES[torch.float64])
    _, mean, invstd = torch.ops.autoenc_fast.spade_norm(x, gamma, beta, None, None, True, instance, 0.1, 1e-5, 0.2)
    mean_sep, var_sep = torch.ops.autoenc_fast.spade_norm_stats(x, instance)
    # invstd from that var by the kernels' formula, 1 / sqrt(var + eps) in float64, each step
    # correctly rounded (Python floats; torch's `1 / tensor` may round its reciprocal otherwise)
    invstd_sep = torch.tensor([1 / math.sqrt(v + 1e-5) for v in var_sep.flatten().tolist()], dtype=torch.float64)
    assert torch.equal(mean, mean_sep) and torch.equal(invstd.flatten(), invstd_sep)


@needs_ext
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("instance", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_ops_equal_their_pieces(device, instance, channels_last):
    """spade_norm == stats + apply and spade_norm_backward == reduce + elemt (the pieces
    the synchronized path runs), so both paths compute the same function."""
    ops = torch.ops.autoenc_fast
    x, gamma, beta = make_inputs((3, 8, 5, 6), torch.float32, device, channels_last)
    grad = torch.randn_like(x)
    y, mean, invstd_fused = ops.spade_norm(x, gamma, beta, None, None, True, instance, 0.1, 1e-5, 0.2)
    mean_p, var_p = ops.spade_norm_stats(x, instance)
    invstd = torch.rsqrt(var_p + 1e-5)
    torch.testing.assert_close(mean, mean_p)
    torch.testing.assert_close(invstd_fused, invstd)
    torch.testing.assert_close(y, ops.spade_norm_apply(x, gamma, beta, mean_p, invstd, 0.2))
    for use_input_stats in (True, False):
        fused = ops.spade_norm_backward(grad, x, gamma, beta, mean_p, invstd, use_input_stats, 0.2)
        means = (None, None)
        if use_input_stats:
            sums = ops.spade_norm_backward_reduce(grad, x, gamma, beta, mean_p, invstd, 0.2)
            count = x.shape[2] * x.shape[3] * (1 if instance else x.shape[0])
            means = tuple(t / count for t in sums)
        pieces = ops.spade_norm_backward_elemt(grad, x, gamma, beta, mean_p, invstd, *means, 0.2)
        for a, b in zip(fused, pieces):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("channels_last", [False, True])
def test_nan_in_one_channel_gives_nan_statistics_there_as_batch_norm(device, channels_last):
    """A NaN poisons its channel's mean, variance and running statistics, as in F.batch_norm
    (the variance's clamp at zero must not turn NaN into 0), and no other channel."""
    x, gamma, beta = (torch.randn(3, 4, 5, 6, device=device) for _ in range(3))
    x[1, 2, 3, 4] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    running = (torch.rand(4, device=device), torch.rand(4, device=device) + 0.5)
    stats = {"ours": running, "ref": tuple(t.clone() for t in running)}
    y = AF.spade_norm(x, gamma, beta, running_mean=stats["ours"][0], running_var=stats["ours"][1])
    y_ref = R.spade_norm(x, gamma, beta, running_mean=stats["ref"][0], running_var=stats["ref"][1])
    mean, var = torch.ops.autoenc_fast.spade_norm_stats(x, False)
    assert mean.isnan().tolist() == var.isnan().tolist() == [False, False, True, False]
    assert y.isnan().any((0, 2, 3)).tolist() == [False, False, True, False]
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5, equal_nan=True)
    for ours, ref in zip(stats["ours"], stats["ref"]):
        torch.testing.assert_close(ours, ref, equal_nan=True)
        assert ours.isnan().tolist() == [False, False, True, False]


@needs_ext
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("instance", [False, True])
def test_large_mean_small_std_statistics(channels_last, instance):
    """The variance stays accurate when |mean| >> std (float32): Welford's updates on x
    itself, not on x minus the group's first element, lost 4e-4 to 1e-3 of it here."""
    x = torch.randn(4, 3, 32, 32) * 0.01 + 1000.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean, var = torch.ops.autoenc_fast.spade_norm_stats(x, instance)
    dims = (2, 3) if instance else (0, 2, 3)
    xd = x.double()
    torch.testing.assert_close(mean.double().flatten(), xd.mean(dims).flatten(), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(var.double().flatten(), xd.var(dims, unbiased=False).flatten(), atol=0, rtol=1e-4)


@needs_ext
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("channels_last", [False, True])
# 16x16 maps over 512 KiB (1 MiB) take the CPU's separate passes, 64x64 its cache-blocked ones.
@pytest.mark.parametrize("shape", [(64, 16, 16, 16), (16, 4, 64, 64)])
@pytest.mark.parametrize("outlier", [1e2, 1e4])
def test_statistics_stay_accurate_when_a_group_starts_with_an_outlier(device, norm, channels_last, shape, outlier):
    """Each group's first element far from the rest (a spike in the first pixel): shifting
    the one-pass sums by that element alone lost (k - mean)^2 / var * 2^-24 of the variance
    (y 8e-2 off at 1e3 in a 64x4x64x64 batch); float32 must stay at float32's accuracy."""
    x, gamma, beta = make_inputs(shape, torch.float32, device, offset=0.0)
    x[:, :, 0, 0] = outlier * (1 + torch.rand(shape[:2], device=device))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    instance = norm == "instance"
    mean, var = torch.ops.autoenc_fast.spade_norm_stats(x, instance)
    dims = (2, 3) if instance else (0, 2, 3)
    xd = x.double()
    torch.testing.assert_close(mean.double().flatten(), xd.mean(dims).flatten(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(var.double().flatten(), xd.var(dims, unbiased=False).flatten(), atol=0, rtol=1e-5)
    y = AF.spade_norm(x, gamma, beta, norm=norm)
    y_ref = R.spade_norm(xd, gamma.double(), beta.double(), norm=norm)
    torch.testing.assert_close(y.double(), y_ref, **TOLERANCES[torch.float32])


@needs_ext
@pytest.mark.parametrize("norm,training", CASES)
@pytest.mark.parametrize("slope", [None, 0.3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(norm, training, slope, channels_last):
    x, gamma, beta = make_inputs((2, 3, 3, 4), torch.float64, "cpu", channels_last, offset=0.5)
    rm, rv = (t.double() for t in running(3, "cpu")) if norm == "batch" else (None, None)

    def fn(x, gamma, beta):  # running stats cloned: gradcheck calls fn many times
        kw = {} if rm is None else dict(running_mean=rm.clone(), running_var=rv.clone())
        return AF.spade_norm(x, gamma, beta, norm=norm, training=training, negative_slope=slope, **kw)

    inputs = [t.detach().requires_grad_() for t in (x, gamma, beta)]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@needs_ext
@pytest.mark.parametrize("norm,training", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_merged_gradcheck_float64(norm, training, channels_last):
    x, gamma, beta = make_inputs((2, 3, 3, 4), torch.float64, "cpu", channels_last, offset=0.5)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    gamma_beta = torch.cat([gamma, beta], dim=1).contiguous(memory_format=layout)
    rm, rv = (t.double() for t in running(3, "cpu")) if norm == "batch" else (None, None)

    def fn(x, gamma_beta):
        kw = {} if rm is None else dict(running_mean=rm.clone(), running_var=rv.clone())
        return AF.spade_norm_merged(x, gamma_beta, norm=norm, training=training, negative_slope=0.3, **kw)

    inputs = [t.detach().requires_grad_() for t in (x, gamma_beta)]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@needs_ext
@pytest.mark.parametrize("device", devices())
def test_double_backward_raises_naming_the_op(device):
    x, gamma, beta = (t.requires_grad_() for t in make_inputs((2, 3, 3, 4), torch.float64, device))
    assert_double_backward_refused(lambda: AF.spade_norm(x, gamma, beta, negative_slope=0.2).square().sum(),
                                   (x, gamma, beta), "spade_norm")
    gamma_beta = torch.cat([gamma, beta], dim=1).detach().requires_grad_()
    assert_double_backward_refused(lambda: AF.spade_norm_merged(x, gamma_beta, negative_slope=0.2).square().sum(),
                                   (x, gamma_beta), "spade_norm_merged")


@needs_ext
def test_op_statistics_carry_no_gradient_and_no_grad_records_no_graph():
    # mean and invstd are what the backward takes; it gives no gradient for them, so they
    # must not claim one.
    x, gamma, beta = (t.requires_grad_() for t in make_inputs((2, 3, 3, 4), torch.float32, "cpu"))
    y, mean, invstd = torch.ops.autoenc_fast.spade_norm(x, gamma, beta, None, None, True, False, 0.1, 1e-5, 0.2)
    assert y.grad_fn is not None and not mean.requires_grad and not invstd.requires_grad
    with torch.no_grad():
        assert torch.ops.autoenc_fast.spade_norm(x, gamma, beta, None, None, True, False, 0.1, 1e-5, 0.2)[0].grad_fn is None


def _opcheck_samples(channels_last):
    x, gamma, beta = make_inputs((2, 4, 3, 5), torch.float32, "cpu", channels_last)
    rm, rv = running(4, "cpu")
    stats = {inst: torch.ops.autoenc_fast.spade_norm_stats(x, inst) for inst in (False, True)}
    samples = {
        "spade_norm": [(x, gamma, beta, None, None, True, False, 0.1, 1e-5, 0.2),
                       (x, gamma, beta, rm, rv, False, False, 0.1, 1e-5, None),
                       (x, gamma, beta, rm.clone(), rv.clone(), True, False, 0.3, 1e-5, 0.2),  # updates them
                       (x, gamma, beta, None, None, True, True, 0.1, 1e-3, None)],
        "spade_norm_stats": [(x, False), (x, True)],
    }
    apply, red, elemt, backward = [], [], [], []
    for inst, (mean, var) in stats.items():
        invstd = torch.rsqrt(var + 1e-5)
        grad = torch.randn_like(x)
        apply.append((x, gamma, beta, mean, invstd, 0.2 if inst else None))
        red.append((grad, x, gamma, beta, mean, invstd, 0.1))
        elemt.append((grad, x, gamma, beta, mean, invstd, torch.randn_like(mean), torch.randn_like(mean), 0.1))
        elemt.append((grad, x, gamma, beta, mean, invstd, None, None, None))
        backward.append((grad, x, gamma, beta, mean, invstd, True, 0.2))
        backward.append((grad, x, gamma, beta, mean, invstd, False, None))
    samples.update(spade_norm_apply=apply, spade_norm_backward_reduce=red, spade_norm_backward_elemt=elemt,
                   spade_norm_backward=backward)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    gamma_beta = torch.cat([gamma, beta], dim=1).contiguous(memory_format=layout)
    samples["spade_norm_merged"] = [(x, gamma_beta, *args[3:]) for args in samples["spade_norm"]]
    samples["spade_norm_merged_backward"] = [(grad, x, gamma_beta, *args) for grad, x, _, _, *args in backward]
    samples["spade_norm_merged_backward_elemt"] = [(grad, x, gamma_beta, *args) for grad, x, _, _, *args in elemt]
    return samples


@needs_ext
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("op", OPS)
def test_opcheck(op, channels_last):
    for args in _opcheck_samples(channels_last)[op]:
        if op in ("spade_norm", "spade_norm_merged"):  # the registered autograd too
            inputs = 3 if op == "spade_norm" else 2
            args = tuple(a.clone().requires_grad_() if i < inputs else a for i, a in enumerate(args))
        torch.library.opcheck(getattr(torch.ops.autoenc_fast, op).default, args)


@needs_ext
@pytest.mark.parametrize("norm,training", CASES)
def test_compile_fullgraph_aot_eager(norm, training):
    x, gamma, beta = make_inputs((2, 3, 4, 5), torch.float32, "cpu")
    grad = torch.randn_like(x)
    rm, rv = running(3, "cpu") if norm == "batch" else (None, None)
    kw = dict(norm=norm, training=training, negative_slope=0.2)
    clone = (lambda t: None if t is None else t.clone())
    compiled = torch.compile(AF.spade_norm, fullgraph=True, backend="aot_eager")
    crm, crv = clone(rm), clone(rv)
    y, grads = run(compiled, x, gamma, beta, grad, running_mean=crm, running_var=crv, **kw)
    erm, erv = clone(rm), clone(rv)
    y_e, grads_e = run(AF.spade_norm, x, gamma, beta, grad, running_mean=erm, running_var=erv, **kw)
    torch.testing.assert_close(y, y_e)
    for g, g_e in zip(grads, grads_e):
        torch.testing.assert_close(g, g_e)
    if rm is not None:
        torch.testing.assert_close(crm, erm)
        torch.testing.assert_close(crv, erv)


@needs_ext
def test_compile_fullgraph_inductor():
    x, gamma, beta = make_inputs((2, 3, 4, 5), torch.float32, "cpu")
    grad = torch.randn_like(x)
    rm, rv = running(3, "cpu")
    compiled = torch.compile(AF.spade_norm, fullgraph=True, backend="inductor")
    crm, crv, erm, erv = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    y, grads = run(compiled, x, gamma, beta, grad, running_mean=crm, running_var=crv, negative_slope=0.2)
    y_e, grads_e = run(AF.spade_norm, x, gamma, beta, grad, running_mean=erm, running_var=erv,
                       negative_slope=0.2)
    torch.testing.assert_close(y, y_e)
    for g, g_e in zip(grads, grads_e):
        torch.testing.assert_close(g, g_e)
    torch.testing.assert_close(crm, erm)
    torch.testing.assert_close(crv, erv)


@needs_ext
@pytest.mark.parametrize("norm", ["batch", "syncbatch", "instance"])
def test_compile_fullgraph_module_aot_eager(norm):
    model = SPADE(4, 3, hidden=8, norm=norm, negative_slope=0.2)
    twin = SPADE(4, 3, hidden=8, norm=norm, negative_slope=0.2)
    twin.load_state_dict(model.state_dict())
    x, seg = torch.randn(2, 4, 6, 6), torch.randn(2, 3, 3, 3)
    y = torch.compile(model, fullgraph=True, backend="aot_eager")(x, seg)
    y.sum().backward()
    y_e = twin(x, seg)
    y_e.sum().backward()
    torch.testing.assert_close(y, y_e)
    torch.testing.assert_close(model.mlp_gamma.weight.grad, twin.mlp_gamma.weight.grad)
    for name, buf in twin.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name], buf, msg=name)


class GauGANSPADE(nn.Module):
    """Plain-PyTorch SPADE as in the GauGAN code (separate gamma and beta convolutions)."""

    def __init__(self, norm_nc, label_nc, hidden, ks, norm, slope):
        super().__init__()
        self.param_free_norm = (nn.InstanceNorm2d(norm_nc, affine=False) if norm == "instance"
                                else nn.BatchNorm2d(norm_nc, affine=False))
        pw = ks // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, ks, padding=pw), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, ks, padding=pw)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, ks, padding=pw)
        self.slope = slope

    def forward(self, x, segmap):
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.size()[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        out = normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)
        return out if self.slope is None else F.leaky_relu(out, self.slope)


def assert_modules_agree(plain, ours, x, seg, grad, what=""):
    """ours(x, seg) equals plain(x, seg): the output, x's gradient and every parameter's."""
    results = []
    for m in (plain, ours):
        m.zero_grad()
        xl = x.clone().requires_grad_()
        y = m(xl, seg)
        y.backward(grad)
        results.append((y, xl.grad, {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], msg=f"y {what}")
    torch.testing.assert_close(results[1][1], results[0][1], msg=f"dx {what}")
    for name, g in results[0][2].items():
        torch.testing.assert_close(results[1][2][name], g, msg=name)


@pytest.mark.parametrize("module_cls", [SPADE, R.SPADE])
@pytest.mark.parametrize("norm", ["batch", "instance", "syncbatch"])
@pytest.mark.parametrize("slope", [None, 0.2])
def test_module_matches_gaugan_spade(module_cls, norm, slope):
    plain = GauGANSPADE(5, 3, 8, 3, "instance" if norm == "instance" else "batch", slope).double()
    ours = module_cls(5, 3, hidden=8, kernel_size=3, norm=norm, negative_slope=slope).double()
    ours.load_state_dict(plain.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(plain.state_dict())
    for step, train in enumerate([True, True, False]):
        plain.train(train)
        ours.train(train)
        x = torch.randn(3, 5, 6, 7, dtype=torch.float64) + 1
        seg = torch.rand(3, 3, 3, 4, dtype=torch.float64)
        assert_modules_agree(plain, ours, x, seg, torch.randn(3, 5, 6, 7, dtype=torch.float64), f"step {step}")
        for name, buf in plain.named_buffers():
            torch.testing.assert_close(dict(ours.named_buffers())[name], buf, msg=name)


@pytest.mark.parametrize("conv_layout", ["x", "segmap"])
@pytest.mark.parametrize("x_layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("seg_layout", [torch.contiguous_format, torch.channels_last])
def test_module_modulates_in_x_layout_whatever_the_segmap_layout(x_layout, seg_layout, conv_layout):
    """A one-hot segmap made with permute(0, 3, 1, 2) is channels_last; gamma and beta
    still come out in x's layout (the kernels' own), so neither the op nor the merged
    convolution's backward transposes them (seen: a third of the CPU GauGAN step's
    copies), and the module still equals GauGAN's. With conv_layout="segmap" the
    convolutions run in the segmap's layout and only their merged output is transposed.
    Either way gamma and beta are the two channel halves of one (N, 2C, H, W) tensor in
    x's layout, which the kernels read in place."""
    plain = GauGANSPADE(6, 4, 8, 3, "batch", 0.2).double()
    ours = SPADE(6, 4, hidden=8, negative_slope=0.2).double()
    ours.load_state_dict(plain.state_dict(), strict=True)
    ours.conv_layout = conv_layout
    labels = torch.randint(0, 4, (2, 5, 7))
    seg = F.one_hot(labels, 4).permute(0, 3, 1, 2).double().contiguous(memory_format=seg_layout)
    x = (torch.randn(2, 6, 10, 14, dtype=torch.float64) + 1).contiguous(memory_format=x_layout)
    conv_inputs = []
    hook = ours.mlp_shared.register_forward_hook(lambda module, args, out: conv_inputs.append(args[0]))
    gamma, beta = ours.modulation(seg, x)
    hook.remove()
    expected_conv_layout = x_layout if conv_layout == "x" else seg_layout
    assert conv_inputs[0].is_contiguous(memory_format=expected_conv_layout)
    N, C, H, W = x.shape
    halves_strides = {torch.contiguous_format: (2 * C * H * W, H * W, W, 1),
                      torch.channels_last: (2 * C * H * W, 1, 2 * C * W, 2 * C)}[x_layout]
    for t in (gamma, beta):
        assert t.shape == x.shape and t.stride() == halves_strides
    offset = C * H * W if x_layout == torch.contiguous_format else C
    assert beta.data_ptr() == gamma.data_ptr() + offset * gamma.element_size()
    assert_modules_agree(plain, ours, x, seg, torch.randn_like(x))


# (N, C, H, W) for each path of the CPU kernels: NCHW, a small tensor (group-blocked
# passes), rows of >= 1024 (group-blocked passes), short rows of a tensor over 512 KiB
# (two-sweep backward, separate stats / apply passes); channels_last (separate passes),
# C below and above one vector.
CPU_PATH_SHAPES = {"small": (3, 4, 5, 6), "long_rows": (2, 3, 33, 32), "large_short_rows": (8, 40, 16, 16),
                   "channels_last": (3, 5, 4, 6), "channels_last_wide": (2, 19, 5, 3)}


@needs_ext
@pytest.mark.parametrize("shape_id", CPU_PATH_SHAPES)
@pytest.mark.parametrize("instance", [False, True], ids=["batch", "instance"])
def test_cpu_kernels_read_gamma_and_beta_as_halves_of_one_tensor(shape_id, instance):
    # nn.SPADE hands the ops the two channel halves of one (N, 2C, H, W) tensor in x's
    # layout; the CPU kernels read them in place, without copying (no aten::copy_ under
    # the op), and every op that reads gamma and beta gives what it gives for dense copies.
    N, C, H, W = shape = CPU_PATH_SHAPES[shape_id]
    layout = torch.channels_last if shape_id.startswith("channels_last") else torch.contiguous_format
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).contiguous(memory_format=layout)
    grad_y = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout)
    merged = torch.randn(N, 2 * C, H, W, dtype=torch.float64).contiguous(memory_format=layout)
    gamma, beta = merged.chunk(2, dim=1)
    assert not gamma.is_contiguous(memory_format=layout)
    dense = (gamma.contiguous(memory_format=layout), beta.contiguous(memory_format=layout))
    ops = torch.ops.autoenc_fast
    with torch.profiler.profile() as prof:
        y, _, _ = ops.spade_norm(x, gamma, beta, None, None, True, instance, 0.1, 1e-5, 0.2)
    assert "aten::copy_" not in {event.name for event in prof.events()}
    assert_gamma_beta_readers_agree(ops, ops, x, grad_y, (gamma, beta), dense, instance,
                                    lambda actual, expected: torch.testing.assert_close(actual, expected, rtol=0,
                                                                                        atol=0))
    # and the result is the reference's (float64)
    y_ref = R.spade_norm(x, *dense, norm="instance" if instance else "batch", negative_slope=0.2)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)


@needs_ext
@pytest.mark.parametrize("shape_id", CPU_PATH_SHAPES)
@pytest.mark.parametrize("instance", [False, True], ids=["batch", "instance"])
@pytest.mark.parametrize("gamma_beta_layout", ["x", "other"])
def test_cpu_merged_ops_equal_the_separate_ops(shape_id, instance, gamma_beta_layout):
    # spade_norm_merged reads gamma_beta's halves in place and writes its gradient whole,
    # with no copy and no concatenation under either op when gamma_beta is in x's layout
    # (what nn.SPADE gives it); in another layout it is laid out once. Bit for bit what
    # spade_norm and spade_norm_backward give for dense copies, on each CPU kernel path.
    shape = CPU_PATH_SHAPES[shape_id]
    layout = torch.channels_last if shape_id.startswith("channels_last") else torch.contiguous_format
    other = torch.contiguous_format if layout == torch.channels_last else torch.channels_last
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).contiguous(memory_format=layout)
    grad_y = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout)
    N, C, H, W = shape
    gamma_beta = torch.randn(N, 2 * C, H, W, dtype=torch.float64).contiguous(
        memory_format=layout if gamma_beta_layout == "x" else other)
    ops = torch.ops.autoenc_fast
    assert_merged_ops_agree_with_separate(ops, ops, x, grad_y, gamma_beta, instance,
                                          lambda actual, expected: torch.testing.assert_close(actual, expected,
                                                                                              rtol=0, atol=0))
    if gamma_beta_layout == "x":
        mean, var = ops.spade_norm_stats(x, instance)
        with torch.profiler.profile() as prof:
            ops.spade_norm_merged(x, gamma_beta, None, None, True, instance, 0.1, 1e-5, 0.2)
            ops.spade_norm_merged_backward(grad_y, x, gamma_beta, mean, (var + 1e-5).rsqrt(), True, 0.2)
        names = {event.name for event in prof.events()}
        assert not names & {"aten::copy_", "aten::cat", "aten::clone"}, names


@needs_ext
def test_merged_op_with_a_batch_of_one_and_odd_sizes():
    # Batch 1 (the NCHW halves are then plain views), H != W, C not a multiple of a vector.
    ops = torch.ops.autoenc_fast
    for layout in (torch.contiguous_format, torch.channels_last):
        x = (torch.randn(1, 7, 5, 3, dtype=torch.float64) + 2).contiguous(memory_format=layout)
        gamma_beta = torch.randn(1, 14, 5, 3, dtype=torch.float64).contiguous(memory_format=layout)
        assert_merged_ops_agree_with_separate(ops, ops, x, torch.randn_like(x), gamma_beta, True,
                                              lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0))
        assert_merged_ops_agree_with_separate(ops, ops, x, torch.randn_like(x), gamma_beta, False,
                                              lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("norm,training", CASES)
def test_merged_functional_matches_the_reference(norm, training, device):
    x, gamma, beta = make_inputs((3, 5, 6, 4), torch.float64, device)
    gamma_beta = torch.cat([gamma, beta], dim=1)
    rm, rv = running(5, device) if norm == "batch" else (None, None)
    kw = dict(norm=norm, training=training, negative_slope=0.2)
    stats = {} if rm is None else dict(running_mean=rm.double(), running_var=rv.double())
    stats_ref = {k: v.clone() for k, v in stats.items()}
    grad = torch.randn_like(x)
    xs, gbs = x.clone().requires_grad_(), gamma_beta.clone().requires_grad_()
    AF.spade_norm_merged(xs, gbs, **kw, **stats).backward(grad)
    xr, gbr = x.clone().requires_grad_(), gamma_beta.clone().requires_grad_()
    R.spade_norm_merged(xr, gbr, **kw, **stats_ref).backward(grad)
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gbs.grad, gbr.grad, rtol=1e-9, atol=1e-9)
    for name in stats:
        torch.testing.assert_close(stats[name], stats_ref[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad,match", [
    (lambda x, gb: (x, gb[:, :3]), r"`gamma_beta` must have shape \(N, 2C, H, W\) = \(2, 6, 4, 5\); got .2, 3, 4, 5."),
    (lambda x, gb: (x, gb[..., :4]), r"`gamma_beta` must have shape"),
    (lambda x, gb: (x, gb.double()), r"`gamma_beta` must have x's dtype"),
    (lambda x, gb: (x, gb[0]), r"`gamma_beta` must have shape"),
    (lambda x, gb: (x[0], gb), r"`x` must be 4-D"),
])
def test_merged_bad_input_names_the_argument(bad, match):
    x, gb = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 4, 5)
    with pytest.raises((ValueError, TypeError), match=match):
        AF.spade_norm_merged(*bad(x, gb))
    if _ext.LOADED:  # the op's own (C++) check says the same
        with pytest.raises(RuntimeError, match=match):
            torch.ops.autoenc_fast.spade_norm_merged(*bad(x, gb), None, None, True, False, 0.1, 1e-5, None)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_module_backward_concatenates_no_gradients(norm, device):
    # nn.SPADE's merged convolution gets the gradient of gamma_beta whole from the op:
    # autograd concatenates nothing in the backward (it did, with gamma and beta as two
    # views of the convolution's output) and copies nothing.
    module = SPADE(6, 4, hidden=8, norm=norm, negative_slope=0.2).to(device)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 6, 16, 16, device=device).contiguous(memory_format=layout).requires_grad_()
        y = module(x, torch.rand(2, 4, 8, 8, device=device))
        with torch.profiler.profile(record_shapes=True) as prof:
            y.backward(torch.randn_like(y))
        names = {event.name for event in prof.events()}
        assert "aten::cat" not in names, sorted(names)
        # (channels_last weight gradients are copied to the parameters' layout, as in
        # any channels_last convolution: small; nothing of x's size is.)
        copies = [event.input_shapes for event in prof.events() if event.name == "aten::copy_"
                  and any(shape and torch.Size(shape).numel() >= x.numel() for shape in event.input_shapes)]
        assert not copies, copies


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_module_passes_gamma_and_beta_in_place_and_matches_gaugan(norm, device):
    # With an NCHW x, the kernels read gamma and beta as the two channel halves of the
    # merged convolution's output (no copies); the module still equals GauGAN's, in
    # training and eval, outputs and gradients.
    plain = GauGANSPADE(6, 4, 8, 3, norm, 0.2).double().to(device)
    ours = SPADE(6, 4, hidden=8, norm=norm, negative_slope=0.2).double().to(device)
    ours.load_state_dict(plain.state_dict(), strict=True)
    seg = torch.rand(2, 4, 5, 7, dtype=torch.float64, device=device)
    x = torch.randn(2, 6, 10, 14, dtype=torch.float64, device=device) + 1
    gamma, beta = ours.modulation(seg, x)
    assert not gamma.is_contiguous() and gamma.stride(0) == 12 * 10 * 14 and beta.data_ptr() > gamma.data_ptr()
    for train in (True, False):
        plain.train(train)
        ours.train(train)
        assert_modules_agree(plain, ours, x, seg, torch.randn_like(x))


def test_module_refuses_an_unknown_conv_layout():
    module = SPADE(6, 4, hidden=8)
    module.conv_layout = "nhwc"
    with pytest.raises(ValueError, match="conv_layout"):
        module(torch.randn(2, 6, 4, 4), torch.randn(2, 4, 4, 4))


def spectral_norm_hooks(module):
    module.mlp_gamma = torch.nn.utils.spectral_norm(module.mlp_gamma)


def spectral_norm_parametrization(module):
    module.mlp_gamma = torch.nn.utils.parametrizations.spectral_norm(module.mlp_gamma)


def reflect_padding(module):
    module.mlp_beta.padding_mode = "reflect"


def dilated_convolutions(module):
    for conv in (module.mlp_gamma, module.mlp_beta):
        conv.dilation, conv.padding = (2, 2), (2, 2)


def scaling_forward_hook(module):
    module.mlp_beta.register_forward_hook(lambda conv, args, out: out * 3)


@pytest.mark.parametrize("change, merges", [
    (spectral_norm_hooks, False), (scaling_forward_hook, False), (reflect_padding, False),
    (spectral_norm_parametrization, True), (dilated_convolutions, True)])
def test_module_honours_what_users_do_to_the_modulation_convolutions(change, merges):
    # The fused module merges mlp_gamma and mlp_beta into one convolution only when that
    # gives what their own forwards give: hooks (the hook-based spectral_norm among them)
    # and other padding modes run each convolution's forward, as the reference does.
    plain = R.SPADE(6, 4, hidden=8, negative_slope=0.2).double()
    ours = SPADE(6, 4, hidden=8, negative_slope=0.2).double()
    ours.load_state_dict(plain.state_dict(), strict=True)
    for module in (plain, ours):
        change(module)
    ours.load_state_dict(plain.state_dict(), strict=True)
    assert ours.convolutions_merge() == merges
    x = torch.randn(2, 6, 10, 14, dtype=torch.float64) + 1
    seg = torch.rand(2, 4, 5, 7, dtype=torch.float64)
    ours.eval(), plain.eval()  # spectral norm: no power iteration, the loaded u and v in both
    assert_modules_agree(plain, ours, x, seg, torch.randn_like(x))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("buffers", ["float32", "float64", "float16", "bfloat16", "strided"])
@pytest.mark.parametrize("merged", [False, True])
def test_ops_update_running_statistics_in_place_as_batch_norm(device, buffers, merged):
    """The fused ops update the running buffers themselves (their schemas declare the
    mutation): F.batch_norm's values with momentum 0.3, each buffer in its own dtype, a
    strided buffer in place, and the buffers' version counters bumped, so a graph that
    saved their old values refuses to run backward, as it would after F.batch_norm."""
    x, gamma, beta = make_inputs((4, 3, 5, 5), torch.float32, device)
    dtype = torch.float32 if buffers == "strided" else getattr(torch, buffers)
    n = 6 if buffers == "strided" else 3
    rm = torch.randn(n, dtype=dtype, device=device)
    rv = torch.rand(n, dtype=dtype, device=device) + 0.5
    if buffers == "strided":
        rm, rv = rm[::2], rv[::2]
    ref_rm, ref_rv = rm.double(), rv.double()
    F.batch_norm(x.double(), ref_rm, ref_rv, training=True, momentum=0.3)
    weight = torch.ones(3, device=device, requires_grad=True)
    saved_old = (weight * rm.float()).sum() if buffers == "float32" else None  # rm saved for backward
    versions = (rm._version, rv._version)
    if merged:
        AF.spade_norm_merged(x, torch.cat([gamma, beta], 1), running_mean=rm, running_var=rv, momentum=0.3)
    else:
        AF.spade_norm(x, gamma, beta, running_mean=rm, running_var=rv, momentum=0.3)
    assert rm._version > versions[0] and rv._version > versions[1]
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
    for ours, ref in ((rm, ref_rm), (rv, ref_rv)):
        assert ours.dtype == dtype
        torch.testing.assert_close(ours.double(), ref, atol=tol, rtol=tol)
    if saved_old is not None:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            saved_old.backward()


def test_running_statistics_update_as_batch_norm_for_buffers_of_any_float_dtype():
    """Each buffer keeps its own dtype (float32 statistics into a float64 running_var too)."""
    from autoenc_fast.ops.spade_norm_checks import update_running_stats

    x = torch.randn(4, 3, 5, 5) * 2 + 1
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    for dtypes in ((torch.float32, torch.float32), (torch.float32, torch.float64), (torch.float64, torch.float32)):
        rm, rv = torch.randn(3, dtype=dtypes[0]), torch.rand(3, dtype=dtypes[1]) + 0.5
        ref_rm, ref_rv = rm.double(), rv.double()
        F.batch_norm(x.double(), ref_rm, ref_rv, training=True, momentum=0.1)
        update_running_stats(rm, rv, mean, var, 100, 0.1)
        assert (rm.dtype, rv.dtype) == dtypes
        torch.testing.assert_close(rm.double(), ref_rm, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(rv.double(), ref_rv, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("momentum", [None, 0.3])
def test_module_momentum_and_num_batches_tracked_as_batchnorm(momentum):
    plain = GauGANSPADE(4, 2, 6, 3, "batch", None)
    ours = SPADE(4, 2, hidden=6)
    ours.load_state_dict(plain.state_dict(), strict=True)
    plain.param_free_norm.momentum = ours.param_free_norm.momentum = momentum
    for _ in range(3):
        x, seg = torch.randn(2, 4, 5, 5) * 3 + 1, torch.rand(2, 2, 5, 5)
        torch.testing.assert_close(ours(x, seg), plain(x, seg))
    for name, buf in plain.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], buf, msg=name)


def test_module_bad_norm():
    with pytest.raises(ValueError, match="norm"):
        SPADE(4, 3, norm="group")


@pytest.mark.parametrize("module", [SPADE, R.SPADE])
@pytest.mark.parametrize("kwargs, error, message", [
    (dict(norm_nc=0), ValueError, "`norm_nc` must be >= 1; got 0"),
    (dict(label_nc=0), ValueError, "`label_nc` must be >= 1; got 0"),
    (dict(hidden=0), ValueError, "`hidden` must be >= 1; got 0"),
    (dict(norm_nc=4.0), TypeError, "`norm_nc` must be an int; got float"),
    (dict(kernel_size=2), ValueError, "`kernel_size` must be odd"),
    (dict(negative_slope="0.2"), TypeError, "`negative_slope` must be a number or None; got '0.2'"),
])
def test_module_bad_constructor_arguments_name_them(module, kwargs, error, message):
    """These built a module that failed at its first call (an even kernel_size grew the
    modulation maps past x's size) or never (0 channels)."""
    arguments = dict(norm_nc=4, label_nc=3) | kwargs
    with pytest.raises(error, match=f"SPADE: {message}"):
        module(**arguments)


def _sync_worker(rank, world_size, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # every rank builds the same full batch and takes its share
    x, gamma, beta = make_inputs((4, 3, 5, 6), torch.float64, "cpu")
    grad = torch.randn_like(x)
    share = slice(2 * rank, 2 * rank + 2)
    results = {}
    for name, fn in (("ours", AF.spade_norm), ("reference", R.spade_norm)):
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        y, grads = run(fn, x[share], gamma[share], beta[share], grad[share], norm="batch",
                       running_mean=rm, running_var=rv, negative_slope=0.2,
                       process_group=dist.group.WORLD)
        results[name] = dict(y=y, grads=grads, rm=rm, rv=rv)
    # spade_norm_merged: gamma_beta whole, its gradient whole (split here to compare)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    leaves = [x[share].clone().requires_grad_(), torch.cat([gamma[share], beta[share]], dim=1).requires_grad_()]
    y = AF.spade_norm_merged(*leaves, norm="batch", running_mean=rm, running_var=rv, negative_slope=0.2,
                             process_group=dist.group.WORLD)
    y.backward(grad[share])
    results["merged"] = dict(y=y.detach(), grads=(leaves[0].grad, *leaves[1].grad.chunk(2, dim=1)), rm=rm, rv=rv)
    # A gradient of the gradient through the synchronized path raises (its backward is
    # once_differentiable) instead of leaving the second-order term out.
    leaves = [t[share].clone().requires_grad_() for t in (x, gamma, beta)]
    y = AF.spade_norm(*leaves, norm="batch", negative_slope=0.2, process_group=dist.group.WORLD)
    (grad_x,) = torch.autograd.grad(y.square().sum(), leaves[0], create_graph=True)
    try:
        grad_x.square().sum().backward()
        results["double_backward"] = "no error"
    except RuntimeError as error:
        results["double_backward"] = str(error)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()  # both ranks done with gloo before either tears it down
    dist.destroy_process_group()


@needs_ext
def test_synchronized_statistics_two_processes(tmp_path):
    """Two gloo processes with batch 2 each == one process with the batch of 4."""
    import torch.multiprocessing as mp

    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    x, gamma, beta = make_inputs((4, 3, 5, 6), torch.float64, "cpu")
    grad = torch.randn_like(x)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y, grads = run(R.spade_norm, x, gamma, beta, grad, norm="batch", running_mean=rm,
                   running_var=rv, negative_slope=0.2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ("ours", "merged", "reference"):
        torch.testing.assert_close(torch.cat([r[name]["y"] for r in ranks]), y, msg=name)
        for i in range(3):
            torch.testing.assert_close(torch.cat([r[name]["grads"][i] for r in ranks]), grads[i], msg=name)
        for r in ranks:
            torch.testing.assert_close(r[name]["rm"], rm)
            torch.testing.assert_close(r[name]["rv"], rv)
    for r in ranks:
        assert "once_differentiable" in r["double_backward"], r["double_backward"]


BAD = [
    (dict(gamma=(2, 3, 4)), ValueError, "`gamma`"),
    (dict(beta=(2, 3, 4, 5)), ValueError, "`beta`"),
    (dict(gamma_dtype=torch.float64), TypeError, "`gamma`"),
    (dict(norm="layer"), ValueError, "`norm`"),
    (dict(training=False), ValueError, "`running_mean`"),
    (dict(training=False, running=(3, 4)), ValueError, "`running_var`"),
    (dict(running=(5, 3)), ValueError, "`running_mean`"),
    (dict(x=(3, 4, 4)), ValueError, "`x`"),
]


@pytest.mark.parametrize("bad,error,match", BAD)
def test_bad_inputs_name_the_argument(bad, error, match):
    x = torch.randn(bad.get("x", (2, 3, 4, 4)))
    gamma = torch.randn(bad.get("gamma", x.shape), dtype=bad.get("gamma_dtype", torch.float32))
    beta = torch.randn(bad.get("beta", x.shape))
    rm_n, rv_n = bad.get("running", (None, None))
    kw = dict(norm=bad.get("norm", "batch"), training=bad.get("training", True))
    if rm_n is not None:
        kw.update(running_mean=torch.zeros(rm_n), running_var=torch.ones(rv_n))
    for fn in (AF.spade_norm, R.spade_norm):
        with pytest.raises(error, match=match):
            fn(x, gamma, beta, **kw)


def test_one_running_statistic_in_training_says_give_both():
    x, gamma, beta = make_inputs((2, 3, 4, 4), torch.float32, "cpu")
    for fn in (AF.spade_norm, lambda *a, **k: AF.spade_norm_merged(x, torch.cat([gamma, beta], 1), **k)):
        with pytest.raises(ValueError, match=r"`running_var` is required with the other running statistic "
                                             r"\(give both or neither\)"):
            fn(x, gamma, beta, running_mean=torch.zeros(3), training=True)


def test_expanded_running_statistics_are_refused_in_training_only():
    # Updated in place, an expanded buffer would have every channel write one element.
    x, gamma, beta = make_inputs((2, 3, 4, 4), torch.float32, "cpu")
    expanded, var = torch.zeros(1).expand(3), torch.ones(3)
    with pytest.raises(ValueError, match="`running_mean` is updated in place in training, so its elements must "
                                         r"not share memory; got an expanded tensor \(stride 0\)"):
        AF.spade_norm(x, gamma, beta, running_mean=expanded, running_var=var, training=True)
    if _ext.LOADED:
        with pytest.raises(RuntimeError, match="`running_mean` is updated in place in training"):
            torch.ops.autoenc_fast.spade_norm(x, gamma, beta, expanded, var, True, False, 0.1, 1e-5, None)
    y = AF.spade_norm(x, gamma, beta, running_mean=expanded, running_var=var, training=False)  # read only
    torch.testing.assert_close(y, R.spade_norm(x, gamma, beta, running_mean=expanded, running_var=var,
                                               training=False))


def test_inference_tensor_running_statistics_update_outside_inference_mode():
    # As F.batch_norm: buffers created under inference_mode (no version counter) still update.
    x, gamma, beta = make_inputs((2, 3, 4, 4), torch.float32, "cpu")
    with torch.inference_mode():
        rm, rv = torch.zeros(3), torch.ones(3)
    expected_rm, expected_rv = torch.zeros(3), torch.ones(3)
    y = AF.spade_norm(x, gamma.requires_grad_(), beta, running_mean=rm, running_var=rv)
    R.spade_norm(x, gamma, beta, running_mean=expected_rm, running_var=expected_rv)
    assert y.requires_grad
    torch.testing.assert_close(rm, expected_rm)
    torch.testing.assert_close(rv, expected_rv)


def test_synchronized_empty_batch_on_every_rank(tmp_path):
    # A global count of 0 gives an empty output and leaves the running statistics alone,
    # as the single-process op does; a global count of 1 is refused as F.batch_norm does.
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        rm, rv = torch.randn(3), torch.rand(3) + 0.5
        saved = rm.clone(), rv.clone()
        x, gamma, beta = (t.requires_grad_() for t in make_inputs((0, 3, 4, 4), torch.float32, "cpu"))
        y = AF.spade_norm(x, gamma, beta, running_mean=rm, running_var=rv, process_group=dist.group.WORLD)
        y.sum().backward()
        assert y.shape == x.shape == x.grad.shape and gamma.grad.shape == gamma.shape
        assert torch.equal(rm, saved[0]) and torch.equal(rv, saved[1])
        one = make_inputs((1, 3, 1, 1), torch.float32, "cpu")
        with pytest.raises(ValueError, match="expected more than 1 value per channel"):
            AF.spade_norm(*one, running_mean=rm, running_var=rv, process_group=dist.group.WORLD)
    finally:
        dist.destroy_process_group()


@needs_ext
def test_cpp_checks_name_the_argument():
    x, gamma, beta = make_inputs((2, 3, 4, 4), torch.float32, "cpu")
    ops = torch.ops.autoenc_fast
    with pytest.raises(RuntimeError, match="`gamma` must have x's shape"):
        ops.spade_norm(x, gamma[:, :2], beta, None, None, True, False, 0.1, 1e-5, None)
    with pytest.raises(RuntimeError, match="`beta` must have x's dtype"):
        ops.spade_norm(x, gamma, beta.double(), None, None, True, False, 0.1, 1e-5, None)
    with pytest.raises(RuntimeError, match="`running_mean` is required"):
        ops.spade_norm(x, gamma, beta, None, None, False, False, 0.1, 1e-5, None)
    with pytest.raises(RuntimeError, match="`running_var` must have shape"):
        ops.spade_norm(x, gamma, beta, torch.zeros(3), torch.ones(4), False, False, 0.1, 1e-5, None)
    with pytest.raises(RuntimeError, match="`x` must be 4-D"):
        ops.spade_norm_stats(x[0], False)
    with pytest.raises(RuntimeError, match="`invstd` must have shape"):
        ops.spade_norm_apply(x, gamma, beta, torch.zeros(3), torch.ones(5), None)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (2, 3, 4, 0)])
def test_empty_batch_or_map(device, norm, channels_last, shape):
    """No elements, forward and backward (a map of zero height once divided by zero in
    the CPU backward)."""
    x, gamma, beta = (t.requires_grad_() for t in make_inputs(shape, torch.float32, device, channels_last))
    rm, rv = running(3, device) if norm == "batch" else (None, None)
    saved = None if rm is None else (rm.clone(), rv.clone())
    y = AF.spade_norm(x, gamma, beta, norm=norm, running_mean=rm, running_var=rv, negative_slope=0.2)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape and gamma.grad.shape == x.shape
    if saved is not None:  # nothing to average: running statistics untouched
        assert torch.equal(rm, saved[0]) and torch.equal(rv, saved[1])
    gamma_beta = torch.cat([gamma, beta], dim=1).detach().requires_grad_()  # and the merged op
    y = AF.spade_norm_merged(x, gamma_beta, norm=norm, running_mean=rm, running_var=rv, negative_slope=0.2)
    y.sum().backward()
    assert y.shape == x.shape and gamma_beta.grad.shape == gamma_beta.shape


def test_half_on_cpu_goes_through_float32():
    x, gamma, beta = make_inputs((2, 3, 4, 4), torch.bfloat16, "cpu")
    y = AF.spade_norm(x, gamma, beta, negative_slope=0.2)
    assert y.dtype == torch.bfloat16
    y_ref = R.spade_norm(x.double(), gamma.double(), beta.double(), negative_slope=0.2)
    torch.testing.assert_close(y.double(), y_ref, atol=5e-2, rtol=2e-2)


@needs_ext
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm,training", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 64, 32, 32), (2, 16, 128, 128)])
def test_cuda_dtypes_match_float64_reference(dtype, norm, training, channels_last, shape):
    x, gamma, beta = make_inputs(shape, dtype, "cuda", channels_last)
    grad = torch.randn(shape, dtype=dtype, device="cuda")
    rm, rv = running(shape[1], "cuda") if norm == "batch" else (None, None)
    kw = dict(norm=norm, training=training, negative_slope=0.2)
    ours = (rm.clone(), rv.clone()) if rm is not None else (None, None)
    y, grads = run(AF.spade_norm, x, gamma, beta, grad, running_mean=ours[0], running_var=ours[1], **kw)
    ref = (rm.double(), rv.double()) if rm is not None else (None, None)
    y_ref, grads_ref = run(R.spade_norm, x.double(), gamma.double(), beta.double(), grad.double(),
                           running_mean=ref[0], running_var=ref[1], **kw)
    tol = TOLERANCES[dtype]
    scale = 10 if dtype == torch.float32 else 1
    torch.testing.assert_close(y.double(), y_ref, atol=scale * tol["atol"] * 4, rtol=tol["rtol"])
    assert_grads_close(grads, grads_ref, y_ref, 0.2, norm=norm, atol=scale * tol["atol"] * 8, rtol=tol["rtol"] * 2)
    if rm is not None:
        torch.testing.assert_close(ours[0].double(), ref[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours[1].double(), ref[1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("merged", [False, True])
def test_autocast_leaves_integer_modulation_maps_to_the_checks(merged):
    x = torch.randn(2, 3, 5, 7)
    gamma = torch.ones_like(x, dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if merged:
            with pytest.raises(TypeError, match="`gamma_beta` must have x's dtype torch.float32; got torch.int32"):
                AF.spade_norm_merged(x, torch.cat([gamma, gamma], 1))
        else:
            with pytest.raises(TypeError, match="`gamma` must have x's dtype torch.float32; got torch.int32"):
                AF.spade_norm(x, gamma, gamma)


def test_autocast_takes_modulation_maps_of_another_precision():
    x = torch.randn(2, 3, 5, 7)
    gamma, beta = torch.randn_like(x).bfloat16(), torch.randn_like(x).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = AF.spade_norm(x, gamma, beta, negative_slope=0.2)  # a float32 x, bfloat16 gamma and beta
    assert y.dtype == x.dtype
    expected = R.spade_norm(x.double(), gamma.double(), beta.double(), negative_slope=0.2)
    torch.testing.assert_close(y.double(), expected, atol=1e-4, rtol=1e-4)
