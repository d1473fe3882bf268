"""Plain-PyTorch SPADE normalization (GauGAN): ground truth and baseline.

    xhat = norm(x)  (F.batch_norm / F.instance_norm, no affine)
    y    = xhat * (1 + gamma) + beta,  then leaky_relu(negative_slope) when given.

The argument checks and helpers the fused path shares are in ops/spade_norm_checks.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._args import check_maps, positive_int, shape_of

from ..ops.spade_norm_checks import (NORMS, check_inputs, check_merged, check_x, group_count,  # noqa: F401
                                     update_running_stats)


def _sync_batch_norm(x, running_mean, running_var, momentum, eps, group):
    """Batch norm with (sum, sum of squares, count) all-reduced over `group`; the
    differentiable all_reduce sums the gradients of the statistics across ranks."""
    from torch.distributed.nn.functional import all_reduce

    acc = torch.float64
    c = x.shape[1]
    xa = x.to(acc)
    count = xa.new_full((1,), float(group_count(x, False)))
    packed = all_reduce(torch.cat([xa.sum((0, 2, 3)), (xa * xa).sum((0, 2, 3)), count]), group=group)
    total = packed[2 * c]
    mean = packed[:c] / total
    var = (packed[c:2 * c] / total - mean * mean).clamp_min(0)
    if running_mean is not None:
        update_running_stats(running_mean, running_var, mean.detach(), var.detach(),
                             int(total.item()), momentum)
    view = (1, c, 1, 1)
    return ((xa - mean.view(view)) * torch.rsqrt(var + eps).view(view)).to(x.dtype)


def spade_norm(x, gamma, beta, *, norm="batch", running_mean=None, running_var=None, training=True,
               momentum=0.1, eps=1e-5, negative_slope=None, process_group=None):
    """Reference of autoenc_fast.functional.spade_norm."""
    check_inputs(x, gamma, beta, norm, running_mean, running_var, training)
    if norm == "instance":
        xhat = F.instance_norm(x, eps=eps)
    elif process_group is not None and training:
        xhat = _sync_batch_norm(x, running_mean, running_var, momentum, eps, process_group)
    else:
        xhat = F.batch_norm(x, running_mean, running_var, training=training, momentum=momentum, eps=eps)
    y = xhat * (1 + gamma) + beta
    return y if negative_slope is None else F.leaky_relu(y, negative_slope)


def spade_norm_merged(x, gamma_beta, **kwargs):
    """Reference of autoenc_fast.functional.spade_norm_merged: spade_norm of the two
    channel halves of gamma_beta = cat([gamma, beta], 1)."""
    check_x(x, "spade_norm_merged")
    check_merged(gamma_beta, x)
    return spade_norm(x, *gamma_beta.chunk(2, dim=1), **kwargs)


def default_sync_group():
    """The default process group when torch.distributed runs with several ranks, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def batch_norm_momentum(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """The exponential average factor nn.BatchNorm2d would use on this training step,
    counting the step in num_batches_tracked as it does."""
    if not (bn.training and bn.track_running_stats):
        return 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        return 1.0 / float(bn.num_batches_tracked)
    return bn.momentum


class SPADE(nn.Module):
    """Reference twin of autoenc_fast.nn.SPADE: GauGAN's SPADE, same parameter names.
    The fused module subclasses it, with its own modulation and op."""

    op = staticmethod(spade_norm)

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, kernel_size: int = 3,
                 norm: str = "batch", negative_slope: float | None = None):
        super().__init__()
        for name, value in (("norm_nc", norm_nc), ("label_nc", label_nc), ("hidden", hidden),
                            ("kernel_size", kernel_size)):
            positive_int(value, name, "SPADE")
        if kernel_size % 2 == 0:  # padding k // 2 keeps the map's size only for odd k
            raise ValueError(f"SPADE: `kernel_size` must be odd (the modulation maps keep x's size); "
                             f"got {kernel_size}")
        if negative_slope is not None and (isinstance(negative_slope, bool)
                                           or not isinstance(negative_slope, (int, float))):
            raise TypeError(f"SPADE: `negative_slope` must be a number or None; got {negative_slope!r}")
        if norm == "instance":
            self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        elif norm in ("batch", "syncbatch"):
            self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        else:
            raise ValueError(f"SPADE: `norm` must be 'batch', 'instance' or 'syncbatch'; got {norm!r}")
        self.norm, self.negative_slope = norm, negative_slope
        pad = kernel_size // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)

    def modulation(self, segmap, x):
        """gamma, beta of x's spatial size from the segmentation map (resized nearest)."""
        actv = self.mlp_shared(F.interpolate(segmap, size=x.shape[2:], mode="nearest"))
        return self.mlp_gamma(actv), self.mlp_beta(actv)

    def norm_arguments(self) -> dict:
        """spade_norm's keyword arguments for this call, as param_free_norm would normalize
        (in training, the call counts in its num_batches_tracked)."""
        bn = self.param_free_norm
        if self.norm == "instance":
            return {"norm": "instance", "eps": bn.eps, "negative_slope": self.negative_slope}
        use_batch = bn.training or not bn.track_running_stats
        group = default_sync_group() if self.norm == "syncbatch" and use_batch else None
        return {"norm": "batch", "running_mean": bn.running_mean, "running_var": bn.running_var,
                "training": use_batch, "momentum": batch_norm_momentum(bn), "eps": bn.eps,
                "negative_slope": self.negative_slope, "process_group": group}

    def check_inputs(self, x, segmap) -> None:
        """x (N, norm_nc, H, W) and a floating-point segmap (N, label_nc, h, w) with x's
        batch size, or an error naming the one that is not (the convolutions and the op
        would otherwise fail on tensors the caller never passed)."""
        check_maps(x, self.mlp_gamma.out_channels, "x", "SPADE")
        label_nc = self.mlp_shared[0].in_channels
        if not isinstance(segmap, torch.Tensor) or segmap.dim() != 4 or segmap.shape[1] != label_nc \
                or segmap.shape[0] != x.shape[0]:
            raise ValueError(f"SPADE: `segmap` must have shape (N, label_nc, h, w) with x's batch size, "
                             f"({x.shape[0]}, {label_nc}, h, w); got {shape_of(segmap)}")
        if not segmap.is_floating_point():
            raise TypeError(f"SPADE: `segmap` must be a floating-point tensor (a one-hot or soft label map, "
                            f"e.g. one_hot(labels).permute(0, 3, 1, 2).float()); got {segmap.dtype}")

    def forward(self, x, segmap):
        self.check_inputs(x, segmap)
        gamma, beta = self.modulation(segmap, x)
        return self.op(x, gamma, beta, **self.norm_arguments())

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, negative_slope={self.negative_slope}"
