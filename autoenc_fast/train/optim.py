"""The optimizer every training step uses: the command line's and the benchmarks' model step."""
from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable[torch.Tensor], **kwargs) -> torch.optim.Adam:
    """torch.optim.Adam, with PyTorch's fused implementation wherever it has one for
    every parameter (CPU and CUDA in every torch this package supports).

    Why: without `fused` or `foreach`, Adam on the CPU updates one parameter at a time,
    ~8 small ops each. For the GauGAN generator's 144 parameters (CPU configuration, 1.9 M
    values) that was 6.4 ms a step against 1.5 ms fused (benchmarks/RESULTS.md,
    2026-11-28 tenth session), 7-8 % of the whole training step. The update rule is the
    same; the fused kernel only rounds differently. Where a parameter's device or dtype has
    no fused kernel, this keeps Adam's default.
    """
    params = list(params)
    devices = _fused_adam_devices()
    fused = bool(params) and all(p.is_floating_point() and p.device.type in devices for p in params)
    # None, not False, where fused is off: an explicit False would also turn off the
    # multi-tensor (foreach) default that Adam picks on CUDA.
    return torch.optim.Adam(params, fused=True if fused else None, **kwargs)


def _fused_adam_devices() -> list[str]:
    """Device types with PyTorch's fused optimizer kernels. torch checks this only at the
    first step(), so it is asked here, before choosing."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a private helper (torch 2.6 to 2.13 at least): keep the two sure ones
        return ["cpu", "cuda"]
    return _get_fused_kernels_supported_devices()
