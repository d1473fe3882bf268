"""Argument checks of spade_norm for the Python paths (functional, reference, fake
kernels), the same as csrc/spade_norm_checks.h, and the small bookkeeping every path
shares (output layout, statistics dtype, group sizes, running-statistics update).
Importing this module registers nothing, so the reference fallback can use it."""
from __future__ import annotations

import torch

NORMS = ("batch", "instance")


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The layout of the outputs: the rule of csrc/spade_norm_checks.h."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are float32, or float64 for float64 x."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_tensor_of_shape(t, name: str, x: torch.Tensor, shape: tuple, shape_text: str, op: str) -> None:
    """t: a tensor of `shape` (described as shape_text), x's dtype and x's device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a tensor; got {type(t).__name__}")
    if t.shape != shape:
        raise ValueError(f"{op}: `{name}` must have {shape_text} {shape}; got {tuple(t.shape)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: `{name}` must have x's dtype {x.dtype}; got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{op}: `{name}` must be on x's device {x.device}; got {t.device}")


def check_like_x(t, name: str, x: torch.Tensor, op: str = "spade_norm") -> None:
    _check_tensor_of_shape(t, name, x, tuple(x.shape), "x's shape", op)


def check_x(x, op: str = "spade_norm") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op}: `x` must be 4-D (N, C, H, W); got {shape}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{op}: `x` must be a floating-point tensor; got {x.dtype}")


def check_running(t, name: str, x: torch.Tensor, training: bool) -> None:
    if t is None:
        raise ValueError(f"spade_norm: `{name}` is required "
                         + ("with the other running statistic (give both or neither)" if training else
                            "for eval-mode batch norm (training=False uses the running statistics)"))
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != x.shape[1]:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"spade_norm: `{name}` must have shape (C,) = ({x.shape[1]},); got {shape}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"spade_norm: `{name}` must be a floating-point tensor; got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"spade_norm: `{name}` must be on x's device {x.device}; got {t.device}")
    if training and t.shape[0] > 1 and t.stride(0) == 0:
        raise ValueError(f"spade_norm: `{name}` is updated in place in training, so its elements must not "
                         "share memory; got an expanded tensor (stride 0)")


def check_merged(gamma_beta, x: torch.Tensor, op: str = "spade_norm_merged") -> None:
    """gamma_beta = cat([gamma, beta], 1): (N, 2C, H, W), x's dtype and device."""
    n, c, h, w = x.shape
    _check_tensor_of_shape(gamma_beta, "gamma_beta", x, (n, 2 * c, h, w), "shape (N, 2C, H, W) =", op)


def check_inputs(x, gamma, beta, norm="batch", running_mean=None, running_var=None,
                 training=True) -> None:
    """The checks of csrc/spade_norm_checks.h (and of the public API), in Python. For
    spade_norm_merged, `beta` is None and `gamma` is gamma_beta."""
    op = "spade_norm" if beta is not None else "spade_norm_merged"
    if norm not in NORMS:
        raise ValueError(f"{op}: `norm` must be one of {NORMS}; got {norm!r}")
    check_x(x, op)
    if beta is None:
        check_merged(gamma, x)
    else:
        check_like_x(gamma, "gamma", x)
        check_like_x(beta, "beta", x)
    if norm == "instance":
        if running_mean is not None or running_var is not None:
            raise ValueError("spade_norm: `running_mean`/`running_var` are not used by "
                             "norm='instance'; pass None")
        return
    if not training or running_mean is not None or running_var is not None:
        check_running(running_mean, "running_mean", x, training)
        check_running(running_var, "running_var", x, training)


def group_count(x: torch.Tensor, instance: bool):
    """Elements per statistics group: H*W (instance) or N*H*W (batch)."""
    hw = x.shape[2] * x.shape[3]
    return hw if instance else x.shape[0] * hw


def update_running_stats(running_mean, running_var, mean, var, count: int, momentum: float) -> None:
    """In place, as F.batch_norm does: running += momentum * (batch - running), with the
    unbiased variance var * n / (n - 1)."""
    with torch.no_grad():  # this runs on every training step of every SPADE: two ops, not five
        mean = mean if mean.dtype == running_mean.dtype else mean.to(running_mean.dtype)
        var = var if var.dtype == running_var.dtype else var.to(running_var.dtype)
        torch._foreach_lerp_((running_mean, running_var), (mean, var * (count / max(count - 1, 1))), momentum)
