from __future__ import annotations

import torch
import torch.nn.functional as F

from ..functional import spade_norm
from ..ops.spade_norm_checks import memory_format_of
from ..reference.spade_norm import SPADE as ReferenceSPADE


class SPADE(ReferenceSPADE):
    """GauGAN's SPADE block on the fused spade_norm kernels.

    ``forward(x, segmap)``: segmap is resized (nearest) to x's size, passed through
    ``mlp_shared`` (Conv2d + ReLU), and gamma and beta come from ONE convolution with
    2 * norm_nc outputs (``mlp_gamma`` and ``mlp_beta`` weights concatenated at run
    time; the parameters stay separate, so GauGAN state_dicts load with strict=True).
    Then ``y = act(norm(x) * (1 + gamma) + beta)`` in one fused op. ``norm`` is
    "batch", "instance" or "syncbatch" (batch statistics all-reduced over the default
    process group when torch.distributed runs with several ranks). train/eval follow
    ``param_free_norm`` exactly as nn.BatchNorm2d does (momentum, num_batches_tracked,
    running statistics in eval).
    """

    op = staticmethod(spade_norm)

    def modulation(self, segmap: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
        actv = self.mlp_shared(F.interpolate(segmap, size=size, mode="nearest"))
        weight = torch.cat([self.mlp_gamma.weight, self.mlp_beta.weight])
        bias = torch.cat([self.mlp_gamma.bias, self.mlp_beta.bias])
        both = F.conv2d(actv, weight, bias, padding=self.mlp_gamma.padding)
        # The kernels read gamma and beta densely, in the network's layout: copy the two
        # channel halves once here, so that the tensors saved for backward are the dense
        # ones and the backward copies nothing again.
        layout = memory_format_of(both)
        gamma, beta = both.chunk(2, dim=1)
        return gamma.contiguous(memory_format=layout), beta.contiguous(memory_format=layout)
