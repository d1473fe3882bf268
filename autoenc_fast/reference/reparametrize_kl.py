"""Plain-PyTorch reparametrization and KL divergence: ground truth and baseline."""
from __future__ import annotations

import math
import operator

import torch
from torch import nn

from .philox import philox_normal


def kl_accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """KL is summed in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reparametrize_kl_math(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None):
    """z = mu + exp(logvar / 2) * eps (z = mu when eps is None) and
    kl[b] = -1/2 * sum over non-batch dims of (1 + logvar - mu^2 - exp(logvar))."""
    acc = kl_accumulation_dtype(mu.dtype)
    mu_acc, logvar_acc = mu.to(acc), logvar.to(acc)
    z = mu.clone() if eps is None else (mu_acc + torch.exp(0.5 * logvar_acc) * eps.to(acc)).to(mu.dtype)
    terms = 1 + logvar_acc - mu_acc.pow(2) - logvar_acc.exp()
    row_len = math.prod(mu.shape[1:])  # explicit: reshape(B, -1) is ambiguous for B = 0
    kl = -0.5 * terms.reshape(mu.shape[0], row_len).sum(dim=1)
    return z, kl


def draw_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(key, offset) for the Philox noise, drawn from `generator` (or the default
    generator of `device`), so it advances and torch.manual_seed reproduces it."""
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device,
                         generator=generator)


_SEED_EXPECTED = "an int key, a (key, offset) pair of ints, or an integer tensor of two elements"


def _seed_int(value, seed) -> int:
    """An int-like seed part (int, numpy integer; not bool or float) wrapped to int64."""
    if isinstance(value, bool):
        raise TypeError(f"reparametrize_kl: `seed` must be {_SEED_EXPECTED}; got {seed!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"reparametrize_kl: `seed` must be {_SEED_EXPECTED}; got {seed!r}") from None
    return ((value + 2**63) % 2**64) - 2**63


def seed_tensor(seed, device: torch.device) -> torch.Tensor:
    """An explicit seed: an int key, a (key, offset) pair, or such an integer tensor."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool \
                or seed.numel() != 2:
            raise TypeError(f"reparametrize_kl: `seed` must be {_SEED_EXPECTED}; got a {seed.dtype} tensor "
                            f"of shape {tuple(seed.shape)}")
        return seed.to(device=device, dtype=torch.int64).reshape(2)
    if isinstance(seed, (tuple, list)):
        if len(seed) != 2:
            raise TypeError(f"reparametrize_kl: `seed` must be {_SEED_EXPECTED}; got {seed!r}")
        key, offset = (_seed_int(v, seed) for v in seed)
    else:
        key, offset = _seed_int(seed, seed), 0
    return torch.tensor([key, offset], dtype=torch.int64, device=device)


def reparametrize_kl(mu, logvar, eps=None, *, generator=None, seed=None):
    """Reference of autoenc_fast.functional.reparametrize_kl.

    Without eps, the noise is torch.randn (from `generator`), as plain PyTorch code
    draws it; with `seed` it is the Philox noise the fused kernels draw.
    """
    if eps is None:
        if seed is not None:
            key, offset = seed_tensor(seed, torch.device("cpu")).tolist()
            eps = philox_normal(tuple(mu.shape), key, offset).to(device=mu.device, dtype=mu.dtype)
        elif generator is None:  # randn_like traces under torch.compile with dynamic shapes
            eps = torch.randn_like(mu, memory_format=torch.contiguous_format)
        else:
            eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return reparametrize_kl_math(mu, logvar, eps)


class Reparametrize(nn.Module):
    """Reference twin of autoenc_fast.nn.Reparametrize: (mu, logvar) -> (z, kl); a given
    ``eps`` is the noise of the training-mode sample, as in the fused module."""

    def __init__(self, sample_in_eval: bool = False):
        super().__init__()
        self.sample_in_eval = sample_in_eval

    def forward(self, mu, logvar, *, eps=None, generator=None):
        if self.training or self.sample_in_eval:
            return reparametrize_kl(mu, logvar, eps, generator=generator)
        return reparametrize_kl_math(mu, logvar, None)

    def extra_repr(self) -> str:
        return f"sample_in_eval={self.sample_in_eval}"
