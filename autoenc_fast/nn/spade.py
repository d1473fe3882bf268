from __future__ import annotations

import torch
import torch.nn.functional as F

from ..functional import spade_norm
from ..reference.spade_norm import SPADE as ReferenceSPADE
from ..reference.spade_norm import batch_norm_momentum, default_sync_group


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

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        weight = torch.cat([self.mlp_gamma.weight, self.mlp_beta.weight])
        bias = torch.cat([self.mlp_gamma.bias, self.mlp_beta.bias])
        gamma, beta = F.conv2d(actv, weight, bias, padding=self.mlp_gamma.padding).chunk(2, dim=1)
        bn = self.param_free_norm
        if self.norm == "instance":
            return spade_norm(x, gamma, beta, norm="instance", eps=bn.eps,
                              negative_slope=self.negative_slope)
        use_batch = bn.training or not bn.track_running_stats
        group = default_sync_group() if self.norm == "syncbatch" and use_batch else None
        return spade_norm(x, gamma, beta, norm="batch", running_mean=bn.running_mean,
                          running_var=bn.running_var, training=use_batch,
                          momentum=batch_norm_momentum(bn), eps=bn.eps,
                          negative_slope=self.negative_slope, process_group=group)
