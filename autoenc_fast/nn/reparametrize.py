from __future__ import annotations

import torch
from torch import nn

from ..functional import _reparametrize_kl, reparametrize_kl


class Reparametrize(nn.Module):
    """(mu, logvar) -> (z, kl) with the fused reparametrize+KL kernel.

    In training z = mu + exp(logvar / 2) * eps with eps drawn in the kernel (or the
    ``eps`` passed in, mu's shape: the same noise gives the reference twin the same z);
    in eval mode z = mu (no noise, ``eps`` unused) unless built with
    ``sample_in_eval=True``. kl has shape (B,).
    """

    def __init__(self, sample_in_eval: bool = False):
        super().__init__()
        self.sample_in_eval = sample_in_eval

    def forward(self, mu: torch.Tensor, logvar: torch.Tensor, *, eps: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        if self.training or self.sample_in_eval:
            return reparametrize_kl(mu, logvar, eps, generator=generator)
        return _reparametrize_kl(mu, logvar, None, None)

    def extra_repr(self) -> str:
        return f"sample_in_eval={self.sample_in_eval}"
