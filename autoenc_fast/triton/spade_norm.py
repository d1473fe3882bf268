r"""Triton kernels of the SPADE normalization: the candidate GPU implementation that the CUDA
C++ kernels (csrc/cuda/spade_norm.cu, the op's CUDA implementation) are measured against,
as issue 4 asks ("CUDA C++ or Triton, chosen by measurement"). Not registered as the op:
``benchmarks/gpu_kernel_times.py`` times it beside the CUDA kernels on a GPU.

NCHW, training statistics (batch: per channel over N, H, W; instance: per (n, c) over
H, W), statistics and math in float32 (float64 for float64 x). Mean and variance of
y = x - k, k the group's first element, by Welford's updates in each lane of a tile (lane
l's n-th element y: d = y - mean_l, mean_l += d / n, M2_l += d * (y - mean_l)), the lanes
then merged pairwise (Chan et al.: n = na + nb, d = mean_b - mean_a,
mean = mean_a + d * nb / n, M2 = M2a + M2b + d^2 na nb / n). Sums of (x - k)^2 lost a
spike k's group to (k - mean)^2 / var * 2^-24; Welford on x itself, a mean far from 0 with
a small spread (the float32 mean stops moving), hence both::

    mean = k + mean of the merged lanes,  var = M2 / M
    xhat = (x - mean) * invstd,  z = xhat * (1 + gamma) + beta,  y = z or leaky_relu(z)

Backward, z recomputed from x (never stored)::

    dz = dy * (z > 0 ? 1 : slope),  dxhat = dz * (1 + gamma)
    A = sum dxhat,  B = sum dxhat * xhat   (per group)
    dx = invstd * (dxhat - A / M - xhat * B / M),  dgamma = dz * xhat,  dbeta = dz

One program per statistics group for the two reductions (its rows walked in BLOCK-wide
tiles), and a (row, tile) grid for the two elementwise passes; or (fused=True) one program
per group for both passes of each direction: one kernel forward, one backward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _group_row(g, n, C, INSTANCE: tl.constexpr):
    """Row (of H * W elements) n of statistics group g: rows n * C + g for batch norm, the
    single row g = n * C + c for instance norm."""
    if INSTANCE:
        return g
    return n * C + g


@triton.jit
def _affine(x_ptr, gamma_ptr, beta_ptr, at, mask, mean, invstd, ACC: tl.constexpr):
    xhat = (tl.load(x_ptr + at, mask=mask, other=0.0).to(ACC) - mean) * invstd
    one_g = 1.0 + tl.load(gamma_ptr + at, mask=mask, other=0.0).to(ACC)
    z = xhat * one_g + tl.load(beta_ptr + at, mask=mask, other=0.0).to(ACC)
    return xhat, one_g, z


@triton.jit
def _leaky_select(z, v, slope, HAS_SLOPE: tl.constexpr):
    """leaky_relu(z) (v = z) or its derivative times v (v = dy), chosen on z > 0."""
    if HAS_SLOPE:
        v = tl.where(z > 0, v, v * slope)
    return v


@triton.jit
def _dz(dy_ptr, at, mask, z, slope, HAS_SLOPE: tl.constexpr, ACC: tl.constexpr):
    return _leaky_select(z, tl.load(dy_ptr + at, mask=mask, other=0.0).to(ACC), slope, HAS_SLOPE)


@triton.jit
def _row_tile(C, HW, INSTANCE: tl.constexpr, BLOCK: tl.constexpr):
    """The elementwise kernels' program (row, tile): the row's statistics group, and the
    tile's element offsets and mask."""
    row = tl.program_id(0)
    g = row if INSTANCE else row % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    return g, row.to(tl.int64) * HW + offs, offs < HW


@triton.jit
def _group_sums(dy_ptr, x_ptr, gamma_ptr, beta_ptr, g, center, invstd, N, C, HW, slope,
                INSTANCE: tl.constexpr, HAS_SLOPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """(A, B), the sums of dxhat and dxhat * xhat over statistics group g (center, invstd:
    the forward's mean and invstd), its rows walked in BLOCK-wide tiles."""
    rows = 1 if INSTANCE else N
    acc1 = tl.zeros([BLOCK], dtype=ACC)
    acc2 = tl.zeros([BLOCK], dtype=ACC)
    for n in range(0, rows):
        base = _group_row(g, n, C, INSTANCE).to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < HW
            at = base + offs
            xhat, one_g, z = _affine(x_ptr, gamma_ptr, beta_ptr, at, mask, center, invstd, ACC)
            t1 = _dz(dy_ptr, at, mask, z, slope, HAS_SLOPE, ACC) * one_g  # masked lanes: dy = 0
            acc1 += t1
            acc2 += t1 * xhat
    return tl.sum(acc1, axis=0), tl.sum(acc2, axis=0)


@triton.jit
def _welford_merge(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
    """Chan et al.'s merge of two (mean, M2, count) partials; an empty one changes nothing."""
    n = n_a + n_b
    w_b = tl.where(n > 0, n_b / tl.maximum(n, 1.0), 0.0)
    d = mean_b - mean_a
    return mean_a + d * w_b, m2_a + m2_b + d * d * n_a * w_b, n


@triton.jit
def _group_mean_var(x_ptr, g, N, C, HW, INSTANCE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Group g's mean and biased variance: Welford per lane (of x - the group's first
    element), the lanes merged."""
    shift = tl.load(x_ptr + _group_row(g, 0, C, INSTANCE).to(tl.int64) * HW).to(ACC)
    rows = 1 if INSTANCE else N
    mean = tl.zeros([BLOCK], dtype=ACC)
    m2 = tl.zeros([BLOCK], dtype=ACC)
    count = tl.zeros([BLOCK], dtype=ACC)
    for n in range(0, rows):
        base = _group_row(g, n, C, INSTANCE).to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < HW
            y = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(ACC) - shift
            count += mask.to(ACC)
            d = tl.where(mask, y - mean, 0.0)
            mean += d / tl.maximum(count, 1.0)
            m2 += d * tl.where(mask, y - mean, 0.0)
    mean, m2, m = tl.reduce((mean, m2, count), 0, _welford_merge)
    # A NaN in the group makes its mean and variance NaN, as batch norm's.
    return shift + mean, m2 / m


@triton.jit
def _reduce_kernel(dy_ptr, x_ptr, gamma_ptr, beta_ptr, mean_ptr, invstd_ptr, out1_ptr, out2_ptr, N, C, HW, slope,
                   BACKWARD: tl.constexpr, INSTANCE: tl.constexpr, HAS_SLOPE: tl.constexpr, ACC: tl.constexpr,
                   BLOCK: tl.constexpr):
    """One program per statistics group g. Forward (BACKWARD=False): mean and var into out1,
    out2. Backward: A and B, the sums of dxhat and dxhat * xhat, into out1, out2 (mean_ptr,
    invstd_ptr: the forward's statistics)."""
    g = tl.program_id(0)
    if BACKWARD:
        out1, out2 = _group_sums(dy_ptr, x_ptr, gamma_ptr, beta_ptr, g, tl.load(mean_ptr + g),
                                 tl.load(invstd_ptr + g), N, C, HW, slope, INSTANCE=INSTANCE,
                                 HAS_SLOPE=HAS_SLOPE, ACC=ACC, BLOCK=BLOCK)
    else:
        out1, out2 = _group_mean_var(x_ptr, g, N, C, HW, INSTANCE=INSTANCE, ACC=ACC, BLOCK=BLOCK)
    tl.store(out1_ptr + g, out1)
    tl.store(out2_ptr + g, out2)


@triton.jit
def _apply_tile(x_ptr, gamma_ptr, beta_ptr, y_ptr, at, mask, mean, invstd, slope, HAS_SLOPE: tl.constexpr,
                ACC: tl.constexpr):
    _, _, z = _affine(x_ptr, gamma_ptr, beta_ptr, at, mask, mean, invstd, ACC)
    tl.store(y_ptr + at, _leaky_select(z, z, slope, HAS_SLOPE).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_tile(dy_ptr, x_ptr, gamma_ptr, beta_ptr, dx_ptr, dgamma_ptr, dbeta_ptr, at, mask, mean, invstd,
                   mean_dxhat, mean_dxhat_xhat, slope, HAS_SLOPE: tl.constexpr, ACC: tl.constexpr):
    xhat, one_g, z = _affine(x_ptr, gamma_ptr, beta_ptr, at, mask, mean, invstd, ACC)
    dz = _dz(dy_ptr, at, mask, z, slope, HAS_SLOPE, ACC)
    dx = (dz * one_g - mean_dxhat - xhat * mean_dxhat_xhat) * invstd
    tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dgamma_ptr + at, (dz * xhat).to(dgamma_ptr.dtype.element_ty), mask=mask)
    tl.store(dbeta_ptr + at, dz.to(dbeta_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _apply_kernel(x_ptr, gamma_ptr, beta_ptr, mean_ptr, invstd_ptr, y_ptr, C, HW, slope,
                  INSTANCE: tl.constexpr, HAS_SLOPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    g, at, mask = _row_tile(C, HW, INSTANCE, BLOCK)
    _apply_tile(x_ptr, gamma_ptr, beta_ptr, y_ptr, at, mask, tl.load(mean_ptr + g), tl.load(invstd_ptr + g), slope,
                HAS_SLOPE, ACC)


@triton.jit
def _backward_elemt_kernel(dy_ptr, x_ptr, gamma_ptr, beta_ptr, mean_ptr, invstd_ptr, sum1_ptr, sum2_ptr,
                           dx_ptr, dgamma_ptr, dbeta_ptr, C, HW, inv_m, slope, INSTANCE: tl.constexpr,
                           HAS_SLOPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    g, at, mask = _row_tile(C, HW, INSTANCE, BLOCK)
    _backward_tile(dy_ptr, x_ptr, gamma_ptr, beta_ptr, dx_ptr, dgamma_ptr, dbeta_ptr, at, mask,
                   tl.load(mean_ptr + g), tl.load(invstd_ptr + g), tl.load(sum1_ptr + g) * inv_m,
                   tl.load(sum2_ptr + g) * inv_m, slope, HAS_SLOPE, ACC)


# The fused variant: one program per statistics group runs both passes, the group's sums
# and then its elementwise tiles, so a step is one kernel forward and one backward instead
# of two each (plus the rsqrt between them). For the small groups it is meant for (batch
# norm at 16x16 maps: 2,048 elements, on the H200 launch-bound at 4 kernels) the second
# pass re-reads the group from L2. Large groups leave too few programs to fill the GPU.

@triton.jit
def _fused_forward_kernel(x_ptr, gamma_ptr, beta_ptr, y_ptr, mean_ptr, var_ptr, invstd_ptr, N, C, HW, eps, slope,
                          INSTANCE: tl.constexpr, HAS_SLOPE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    mean, var = _group_mean_var(x_ptr, g, N, C, HW, INSTANCE=INSTANCE, ACC=ACC, BLOCK=BLOCK)
    invstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + g, mean)
    tl.store(var_ptr + g, var)
    tl.store(invstd_ptr + g, invstd)
    rows = 1 if INSTANCE else N
    for n in range(0, rows):
        base = _group_row(g, n, C, INSTANCE).to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            _apply_tile(x_ptr, gamma_ptr, beta_ptr, y_ptr, base + offs, offs < HW, mean, invstd, slope, HAS_SLOPE,
                        ACC)


@triton.jit
def _fused_backward_kernel(dy_ptr, x_ptr, gamma_ptr, beta_ptr, mean_ptr, invstd_ptr, dx_ptr, dgamma_ptr, dbeta_ptr,
                           N, C, HW, inv_m, slope, INSTANCE: tl.constexpr, HAS_SLOPE: tl.constexpr,
                           ACC: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    mean = tl.load(mean_ptr + g)
    invstd = tl.load(invstd_ptr + g)
    s1, s2 = _group_sums(dy_ptr, x_ptr, gamma_ptr, beta_ptr, g, mean, invstd, N, C, HW, slope,
                         INSTANCE=INSTANCE, HAS_SLOPE=HAS_SLOPE, ACC=ACC, BLOCK=BLOCK)
    rows = 1 if INSTANCE else N
    for n in range(0, rows):
        base = _group_row(g, n, C, INSTANCE).to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            _backward_tile(dy_ptr, x_ptr, gamma_ptr, beta_ptr, dx_ptr, dgamma_ptr, dbeta_ptr, base + offs, offs < HW,
                           mean, invstd, s1 * inv_m, s2 * inv_m, slope, HAS_SLOPE, ACC)


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _groups(x: torch.Tensor, instance: bool) -> int:
    return x.shape[0] * x.shape[1] if instance else x.shape[1]


def _launch_flags(instance: bool, negative_slope, acc_tl, HW: int) -> dict:
    """Every kernel's compile-time flags. A tile never spans two rows, so tiles are at most
    a power of two above the row (256 elements at 16x16 maps, not BLOCK's 1,024 with three
    quarters of the lanes masked)."""
    block = max(16, min(BLOCK, triton.next_power_of_2(HW)))
    return dict(INSTANCE=instance, HAS_SLOPE=negative_slope is not None, ACC=acc_tl, BLOCK=block,
                num_warps=NUM_WARPS)


def spade_norm_forward(x, gamma, beta, *, instance=False, eps=1e-5, negative_slope=None, fused=False):
    """Training statistics and the modulated output: returns (y, mean, var, invstd).
    fused=True: one kernel (one program per group, both passes) instead of two."""
    x, gamma, beta = x.contiguous(), gamma.contiguous(), beta.contiguous()
    N, C, H, W = x.shape
    HW = H * W
    acc_tl, acc_torch = _acc(x.dtype)
    groups = _groups(x, instance)
    mean = torch.empty(groups, dtype=acc_torch, device=x.device)
    var = torch.empty_like(mean)
    y = torch.empty_like(x)
    if x.numel() == 0:  # nothing to average: zero statistics, as the op's
        mean.zero_()
        var.zero_()
        return y, mean, var, torch.rsqrt(var + eps)
    common = _launch_flags(instance, negative_slope, acc_tl, HW)
    slope = float(negative_slope or 0.0)
    if fused:
        invstd = torch.empty_like(mean)
        _fused_forward_kernel[(groups,)](x, gamma, beta, y, mean, var, invstd, N, C, HW, float(eps), slope, **common)
        return y, mean, var, invstd
    _reduce_kernel[(groups,)](x, x, x, x, mean, mean, mean, var, N, C, HW, 0.0, BACKWARD=False,
                              **{**common, "HAS_SLOPE": False})
    invstd = torch.rsqrt(var + eps)
    _apply_kernel[(N * C, triton.cdiv(HW, common["BLOCK"]))](x, gamma, beta, mean, invstd, y, C, HW, slope, **common)
    return y, mean, var, invstd


def spade_norm_backward(grad_y, x, gamma, beta, mean, invstd, *, instance=False, negative_slope=None, fused=False):
    """(dx, dgamma, dbeta) of spade_norm_forward with training statistics; fused=True: one
    kernel instead of two."""
    grad_y, x, gamma, beta = grad_y.contiguous(), x.contiguous(), gamma.contiguous(), beta.contiguous()
    N, C, H, W = x.shape
    HW = H * W
    acc_tl, _ = _acc(x.dtype)
    dx, dgamma, dbeta = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    if x.numel() == 0:
        return dx, dgamma, dbeta
    groups = _groups(x, instance)
    common = _launch_flags(instance, negative_slope, acc_tl, HW)
    slope = float(negative_slope or 0.0)
    inv_m = 1.0 / (HW if instance else N * HW)
    if fused:
        _fused_backward_kernel[(groups,)](grad_y, x, gamma, beta, mean, invstd, dx, dgamma, dbeta, N, C, HW, inv_m,
                                          slope, **common)
        return dx, dgamma, dbeta
    sum1, sum2 = torch.empty_like(mean), torch.empty_like(mean)
    _reduce_kernel[(groups,)](grad_y, x, gamma, beta, mean, invstd, sum1, sum2, N, C, HW, slope, BACKWARD=True,
                              **common)
    _backward_elemt_kernel[(N * C, triton.cdiv(HW, common["BLOCK"]))](
        grad_y, x, gamma, beta, mean, invstd, sum1, sum2, dx, dgamma, dbeta, C, HW, inv_m, slope, **common)
    return dx, dgamma, dbeta


class SpadeNormTriton(torch.autograd.Function):
    """spade_norm (training statistics, no running statistics) on these kernels, for
    timing a forward + backward step beside the op; fused picks the one-kernel passes."""

    @staticmethod
    def forward(ctx, x, gamma, beta, instance, eps, negative_slope, fused=False):
        y, mean, _var, invstd = spade_norm_forward(x, gamma, beta, instance=instance, eps=eps,
                                                   negative_slope=negative_slope, fused=fused)
        ctx.save_for_backward(x, gamma, beta, mean, invstd)
        ctx.instance, ctx.negative_slope, ctx.fused = instance, negative_slope, fused
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, gamma, beta, mean, invstd = ctx.saved_tensors
        dx, dgamma, dbeta = spade_norm_backward(grad_y, x, gamma, beta, mean, invstd, instance=ctx.instance,
                                                negative_slope=ctx.negative_slope, fused=ctx.fused)
        return dx, dgamma, dbeta, None, None, None, None
