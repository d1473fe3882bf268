"""Argument checks of reparametrize_kl for the Python paths (functional, fake and
Triton kernels): the same checks and messages as csrc/reparametrize_kl_checks.h.
Importing this module registers nothing, so the reference fallback can use it."""
from __future__ import annotations

import torch


def check_same_as_mu(t: torch.Tensor, name: str, mu: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"reparametrize_kl: `{name}` must be a tensor of mu's shape; got {type(t).__name__}")
    if t.shape != mu.shape:
        raise ValueError(f"reparametrize_kl: `{name}` must have mu's shape {tuple(mu.shape)}; "
                         f"got {tuple(t.shape)}")
    if t.dtype != mu.dtype:
        raise TypeError(f"reparametrize_kl: `{name}` must have mu's dtype {mu.dtype}; got {t.dtype}")
    if t.device != mu.device:
        raise ValueError(f"reparametrize_kl: `{name}` must be on mu's device {mu.device}; got {t.device}")


def check_inputs(mu, logvar, eps=None, seed=None) -> None:
    """The checks of csrc/reparametrize_kl_checks.h, for the Python paths."""
    if not isinstance(mu, torch.Tensor) or mu.dim() < 1:
        raise ValueError("reparametrize_kl: `mu` must have at least one dimension (the batch); "
                         "got a 0-dim tensor")
    if not mu.dtype.is_floating_point:
        raise TypeError(f"reparametrize_kl: `mu` must be a floating-point tensor; got {mu.dtype}")
    check_same_as_mu(logvar, "logvar", mu)
    if eps is not None:
        check_same_as_mu(eps, "eps", mu)
    if seed is None:
        return
    if seed.dtype != torch.int64 or seed.numel() != 2:
        raise TypeError("reparametrize_kl: `seed` must be an int64 tensor of two elements "
                        f"(key, offset); got {seed.dtype} of shape {tuple(seed.shape)}")
    if seed.device.type != "cpu" and seed.device != mu.device:
        raise ValueError(f"reparametrize_kl: `seed` must be on the CPU or on mu's device {mu.device}; "
                         f"got {seed.device}")
