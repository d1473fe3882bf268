"""Plain-PyTorch SPADE normalization (GauGAN): ground truth and baseline.

    xhat = norm(x)  (F.batch_norm / F.instance_norm, no affine)
    y    = xhat * (1 + gamma) + beta,  then leaky_relu(negative_slope) when given.

Also the argument checks and small helpers the fused path shares.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


NORMS = ("batch", "instance")


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout of the outputs: the rule of csrc/spade_norm_checks.h."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are float32, or float64 for float64 x."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_like_x(t, name: str, x: torch.Tensor, op: str = "spade_norm") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a tensor; got {type(t).__name__}")
    if t.shape != x.shape:
        raise ValueError(f"{op}: `{name}` must have x's shape {tuple(x.shape)}; got {tuple(t.shape)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: `{name}` must have x's dtype {x.dtype}; got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{op}: `{name}` must be on x's device {x.device}; got {t.device}")


def check_x(x, op: str = "spade_norm") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op}: `x` must be 4-D (N, C, H, W); got {shape}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{op}: `x` must be a floating-point tensor; got {x.dtype}")


def check_running(t, name: str, x: torch.Tensor) -> None:
    if t is None:
        raise ValueError(f"spade_norm: `{name}` is required for eval-mode batch norm "
                         "(training=False uses the running statistics)")
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != x.shape[1]:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"spade_norm: `{name}` must have shape (C,) = ({x.shape[1]},); got {shape}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"spade_norm: `{name}` must be a floating-point tensor; got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"spade_norm: `{name}` must be on x's device {x.device}; got {t.device}")


def check_inputs(x, gamma, beta, norm="batch", running_mean=None, running_var=None,
                 training=True) -> None:
    """The checks of csrc/spade_norm_checks.h (and of the public API), in Python."""
    if norm not in NORMS:
        raise ValueError(f"spade_norm: `norm` must be one of {NORMS}; got {norm!r}")
    check_x(x)
    check_like_x(gamma, "gamma", x)
    check_like_x(beta, "beta", x)
    if norm == "instance":
        if running_mean is not None or running_var is not None:
            raise ValueError("spade_norm: `running_mean`/`running_var` are not used by "
                             "norm='instance'; pass None")
        return
    if not training or running_mean is not None or running_var is not None:
        check_running(running_mean, "running_mean", x)
        check_running(running_var, "running_var", x)


def group_count(x: torch.Tensor, instance: bool):
    """Elements per statistics group: H*W (instance) or N*H*W (batch)."""
    hw = x.shape[2] * x.shape[3]
    return hw if instance else x.shape[0] * hw


def update_running_stats(running_mean, running_var, mean, var, count: int, momentum: float) -> None:
    """In place, as F.batch_norm does: the unbiased variance var * n / (n - 1)."""
    with torch.no_grad():
        unbiased = var * (count / max(count - 1, 1))
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


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
    The fused module subclasses it, swapping `op` and `modulation`."""

    op = staticmethod(spade_norm)

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, kernel_size: int = 3,
                 norm: str = "batch", negative_slope: float | None = None):
        super().__init__()
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

    def modulation(self, segmap, size):
        """gamma, beta of x's spatial `size` from the segmentation map (resized nearest)."""
        actv = self.mlp_shared(F.interpolate(segmap, size=size, mode="nearest"))
        return self.mlp_gamma(actv), self.mlp_beta(actv)

    def forward(self, x, segmap):
        gamma, beta = self.modulation(segmap, x.shape[2:])
        bn = self.param_free_norm
        if self.norm == "instance":
            return self.op(x, gamma, beta, norm="instance", eps=bn.eps, negative_slope=self.negative_slope)
        use_batch = bn.training or not bn.track_running_stats
        group = default_sync_group() if self.norm == "syncbatch" and use_batch else None
        return self.op(x, gamma, beta, norm="batch", running_mean=bn.running_mean,
                       running_var=bn.running_var, training=use_batch,
                       momentum=batch_norm_momentum(bn), eps=bn.eps,
                       negative_slope=self.negative_slope, process_group=group)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, negative_slope={self.negative_slope}"
