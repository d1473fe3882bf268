"""Registration of the autoenc_fast::spade_norm ops: fake kernels and the
synchronized-statistics autograd.Function. The C++ kernels register themselves from
csrc/cpu and csrc/cuda, the single-process autograd from csrc/autograd/spade_norm.cpp.

Single process: ``spade_norm`` (stats pass + elementwise pass, one op) with its
backward ``spade_norm_backward`` (reduction pass + elementwise pass, one op), and the
same pair for gamma and beta merged in one tensor (``spade_norm_merged``,
``spade_norm_merged_backward``, which nn.SPADE uses), so
torch.compile sees custom ops only and the CPU kernels can run both passes of a
statistics group while it is in cache. With a process group the pieces run from
:class:`SyncSpadeNormFunction`, with an all_reduce of (sum, sum of squares, count)
between the stats and the elementwise pass, and of the two backward sums between the
backward passes, as torch.nn.SyncBatchNorm does.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .spade_norm_checks import (check_like_x, check_merged, check_running, check_x, group_count,
                                memory_format_of, stats_dtype, update_running_stats)

OP = "autoenc_fast::spade_norm"


def _empty_like_x(x):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


def _empty_stats(x, instance: bool):
    shape = (x.shape[0], x.shape[1]) if instance else (x.shape[1],)
    return torch.empty(shape, dtype=stats_dtype(x.dtype), device=x.device)


def _forward_fake(x, running_mean, running_var, use_input_stats, instance):
    """(y, mean, invstd) of the fused forwards; the running statistics they update in
    place (declared in their schemas) need nothing here."""
    if not use_input_stats or running_mean is not None or running_var is not None:
        check_running(running_mean, "running_mean", x, use_input_stats)
        check_running(running_var, "running_var", x, use_input_stats)
    return _empty_like_x(x), _empty_stats(x, instance), _empty_stats(x, instance)


@torch.library.register_fake(OP)
def _spade_norm_fake(x, gamma, beta, running_mean, running_var, use_input_stats, instance, momentum, eps,
                     negative_slope):
    check_x(x)
    check_like_x(gamma, "gamma", x)
    check_like_x(beta, "beta", x)
    return _forward_fake(x, running_mean, running_var, use_input_stats, instance)


@torch.library.register_fake("autoenc_fast::spade_norm_merged")
def _spade_norm_merged_fake(x, gamma_beta, running_mean, running_var, use_input_stats, instance, momentum, eps,
                            negative_slope):
    check_x(x, "spade_norm_merged")
    check_merged(gamma_beta, x)
    return _forward_fake(x, running_mean, running_var, use_input_stats, instance)


@torch.library.register_fake("autoenc_fast::spade_norm_stats")
def _stats_fake(x, instance):
    check_x(x, "spade_norm_stats")
    return _empty_stats(x, instance), _empty_stats(x, instance)


@torch.library.register_fake("autoenc_fast::spade_norm_apply")
def _apply_fake(x, gamma, beta, mean, invstd, negative_slope):
    check_x(x, "spade_norm_apply")
    return _empty_like_x(x)


@torch.library.register_fake("autoenc_fast::spade_norm_backward")
def _backward_fake(grad_y, x, gamma, beta, mean, invstd, use_input_stats, negative_slope):
    return _empty_like_x(x), _empty_like_x(x), _empty_like_x(x)


@torch.library.register_fake("autoenc_fast::spade_norm_merged_backward")
def _merged_backward_fake(grad_y, x, gamma_beta, mean, invstd, use_input_stats, negative_slope):
    return _empty_like_x(x), torch.empty(gamma_beta.shape, dtype=x.dtype, device=x.device,
                                         memory_format=memory_format_of(x))


@torch.library.register_fake("autoenc_fast::spade_norm_backward_reduce")
def _backward_reduce_fake(grad_y, x, gamma, beta, mean, invstd, negative_slope):
    return torch.empty_like(mean), torch.empty_like(mean)


@torch.library.register_fake("autoenc_fast::spade_norm_backward_elemt")
def _backward_elemt_fake(grad_y, x, gamma, beta, mean, invstd, mean_dxhat, mean_dxhat_xhat,
                         negative_slope):
    return _empty_like_x(x), _empty_like_x(x), _empty_like_x(x)


@torch.library.register_fake("autoenc_fast::spade_norm_merged_backward_elemt")
def _merged_backward_elemt_fake(grad_y, x, gamma_beta, mean, invstd, mean_dxhat, mean_dxhat_xhat,
                                negative_slope):
    return _merged_backward_fake(grad_y, x, gamma_beta, mean, invstd, True, negative_slope)


def _global_statistics(x, running_mean, running_var, eps, momentum, group):
    """(mean, invstd, total count) of x's channels over every rank of `group`, and the
    running statistics updated with them."""
    import torch.distributed as dist

    mean, var = torch.ops.autoenc_fast.spade_norm_stats(x, False)
    # Local (sum, sum of squares, count) in float64: the global variance
    # E[x^2] - mean^2 is formed from float64 sums, so it does not cancel.
    count = float(group_count(x, False))
    mean64, var64 = mean.double(), var.double()
    packed = torch.cat([mean64 * count, (var64 + mean64 * mean64) * count, mean64.new_full((1,), count)])
    dist.all_reduce(packed, group=group)
    c = x.shape[1]
    total = packed[2 * c].item()
    if total == 1:
        raise ValueError("spade_norm: expected more than 1 value per channel when training "
                         f"(global count {total:g})")
    # An empty batch on every rank (total 0): NaN statistics that normalize nothing, and
    # the running statistics left alone, as F.batch_norm does with an empty batch.
    g_mean = packed[:c] / total
    g_var = (packed[c:2 * c] / total - g_mean * g_mean).clamp_min(0)
    mean, var = g_mean.to(mean.dtype), g_var.to(var.dtype)
    if running_mean is not None and total > 0:
        update_running_stats(running_mean, running_var, mean, var, int(total), momentum)
    return mean, torch.rsqrt(var + eps), total


def _global_backward_means(grad_y, x, gamma, beta, mean, invstd, negative_slope, total, group):
    """The means over every rank of dxhat and dxhat * xhat per channel (the two sums the
    elementwise backward pass subtracts)."""
    import torch.distributed as dist

    sums = torch.cat(torch.ops.autoenc_fast.spade_norm_backward_reduce(
        grad_y, x, gamma, beta, mean, invstd, negative_slope))
    dist.all_reduce(sums, group=group)
    c = x.shape[1]
    return sums[:c] / total, sums[c:] / total


def _gamma_and_beta(gamma, beta):
    """gamma and beta as the separate ops take them: with beta None, gamma holds gamma_beta,
    and they are its two channel halves (views, read in place)."""
    return gamma.chunk(2, dim=1) if beta is None else (gamma, beta)


class SyncSpadeNormFunction(torch.autograd.Function):
    """Batch-norm SPADE with statistics all-reduced over `group` (training only). With
    `beta` None, `gamma` is gamma_beta = cat([gamma, beta], 1) (spade_norm_merged): its
    halves are read in place and its gradient is returned whole."""

    @staticmethod
    def forward(ctx, x, gamma, beta, running_mean, running_var, eps, momentum, negative_slope, group):
        mean, invstd, total = _global_statistics(x, running_mean, running_var, eps, momentum, group)
        y = torch.ops.autoenc_fast.spade_norm_apply(x, *_gamma_and_beta(gamma, beta), mean, invstd, negative_slope)
        ctx.save_for_backward(x, gamma, beta, mean, invstd)
        ctx.total, ctx.negative_slope, ctx.group = total, negative_slope, group
        return y

    @staticmethod
    @once_differentiable  # its pieces have no derivative: a double backward raises, as the C++ ops' do
    def backward(ctx, grad_y):
        x, gamma, beta, mean, invstd = ctx.saved_tensors
        means = _global_backward_means(grad_y, x, *_gamma_and_beta(gamma, beta), mean, invstd, ctx.negative_slope,
                                       ctx.total, ctx.group)
        if beta is None:
            grad_x, grad_gamma_beta = torch.ops.autoenc_fast.spade_norm_merged_backward_elemt(
                grad_y, x, gamma, mean, invstd, *means, ctx.negative_slope)
            return grad_x, grad_gamma_beta, None, None, None, None, None, None, None
        grad_x, grad_gamma, grad_beta = torch.ops.autoenc_fast.spade_norm_backward_elemt(
            grad_y, x, gamma, beta, mean, invstd, *means, ctx.negative_slope)
        return grad_x, grad_gamma, grad_beta, None, None, None, None, None, None
