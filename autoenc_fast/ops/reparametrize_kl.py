"""Registration of autoenc_fast::reparametrize_kl: fake kernels and the Triton kernel
for CUDA. The C++ CPU kernel registers itself from csrc/cpu, the autograd from
csrc/autograd/reparametrize_kl.cpp."""
from __future__ import annotations

import importlib.util

import torch

from ..reference.reparametrize_kl import kl_accumulation_dtype
from .reparametrize_kl_checks import check_inputs

OP = "autoenc_fast::reparametrize_kl"
BACKWARD_OP = "autoenc_fast::reparametrize_kl_backward"


@torch.library.register_fake(OP)
def _reparametrize_kl_fake(mu, logvar, eps, seed):
    check_inputs(mu, logvar, eps, seed)
    z = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    kl = torch.empty((mu.shape[0],), dtype=kl_accumulation_dtype(mu.dtype), device=mu.device)
    return z, kl


@torch.library.register_fake(BACKWARD_OP)
def _reparametrize_kl_backward_fake(grad_z, grad_kl, mu, logvar, z, eps=None, seed=None):
    shape = dict(dtype=mu.dtype, device=mu.device)
    return torch.empty(mu.shape, **shape), torch.empty(mu.shape, **shape)


def _register_triton_kernels() -> None:
    """The CUDA kernels, written in Triton. Registered only where triton can be imported
    (a dependency on Linux only): elsewhere CUDA tensors take the reference path with one
    warning (functional._use_reference) instead of failing at the first call."""

    @torch.library.impl(OP, "CUDA")
    def _reparametrize_kl_cuda(mu, logvar, eps, seed):
        check_inputs(mu, logvar, eps, seed)
        from ..triton.reparametrize_kl import reparametrize_kl_forward

        with torch.cuda.device(mu.device):
            return reparametrize_kl_forward(mu, logvar, eps, seed)

    @torch.library.impl(BACKWARD_OP, "CUDA")
    def _reparametrize_kl_backward_cuda(grad_z, grad_kl, mu, logvar, z, eps=None, seed=None):
        from ..triton.reparametrize_kl import reparametrize_kl_backward

        with torch.cuda.device(mu.device):
            return reparametrize_kl_backward(grad_z, grad_kl, mu, logvar, z, eps, seed)


if importlib.util.find_spec("triton") is not None:
    _register_triton_kernels()
