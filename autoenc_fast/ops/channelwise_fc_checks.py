"""Argument checks and the output layout rule of channelwise_fc for the Python paths
(functional, fake kernels): the same as csrc/channelwise_fc_checks.h. Importing this
module registers nothing, so the reference fallback can use it."""
from __future__ import annotations

import torch


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout rule of csrc/channelwise_fc_checks.h: channels_last outputs for a
    channels_last x that is not also contiguous, contiguous outputs otherwise."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _check_like_x(t: torch.Tensor, op: str, name: str, x: torch.Tensor) -> None:
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: `{name}` must have x's dtype {x.dtype}; got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{op}: `{name}` must be on x's device {x.device}; got {t.device}")


def _check_x_weight(op: str, x, weight) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op}: `x` must be 4-D (B, C, H, W); got shape {shape}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{op}: `x` must be a floating-point tensor; got {x.dtype}")
    _, C, H, W = x.shape
    P = H * W
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (C, P, P):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{op}: `weight` must have shape (C, H*W, H*W) = ({C}, {P}, {P}) for x of "
                         f"shape {tuple(x.shape)}; got {shape}")
    _check_like_x(weight, op, "weight", x)


def check_inputs(x, weight, bias=None) -> None:
    """The checks of csrc/channelwise_fc_checks.h, for the Python paths."""
    _check_x_weight("channelwise_fc", x, weight)
    if bias is not None:
        _, C, H, W = x.shape
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (C, H * W):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"channelwise_fc: `bias` must have shape (C, H*W) = ({C}, {H * W}) "
                             f"or be None; got {shape}")
        _check_like_x(bias, "channelwise_fc", "bias", x)


def check_backward_inputs(grad_y, x, weight) -> None:
    _check_x_weight("channelwise_fc_backward", x, weight)
    if tuple(grad_y.shape) != tuple(x.shape):
        raise ValueError(f"channelwise_fc_backward: `grad_y` must have x's shape {tuple(x.shape)}; "
                         f"got {tuple(grad_y.shape)}")
    _check_like_x(grad_y, "channelwise_fc_backward", "grad_y", x)
