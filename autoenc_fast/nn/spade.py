from __future__ import annotations

import torch
import torch.nn.functional as F

from ..functional import spade_norm_merged
from ..ops.spade_norm_checks import memory_format_of
from ..reference.spade_norm import SPADE as ReferenceSPADE


class SPADE(ReferenceSPADE):
    """GauGAN's SPADE block on the fused spade_norm kernels.

    ``forward(x, segmap)``: segmap is resized (nearest) to x's size, passed through
    ``mlp_shared`` (Conv2d + ReLU), and gamma and beta come from ONE convolution with
    2 * norm_nc outputs (``mlp_gamma`` and ``mlp_beta`` weights concatenated at run
    time; the parameters stay separate, so GauGAN state_dicts load with strict=True).
    Then ``y = act(norm(x) * (1 + gamma) + beta)`` in one fused op,
    :func:`~autoenc_fast.functional.spade_norm_merged`, which takes that convolution's
    output as it is and gives back its gradient whole. ``norm`` is "batch", "instance" or
    "syncbatch" (batch statistics all-reduced over the default process group when
    torch.distributed runs with several ranks). train/eval follow ``param_free_norm``
    exactly as nn.BatchNorm2d does (momentum, num_batches_tracked, running statistics in
    eval).
    """

    # The layout the modulation convolutions run in: "x" (x's) or "segmap" (the segmap's,
    # as the reference and GauGAN's code do). An instance or class attribute, not a
    # constructor argument: it changes speed, never values. See merged_modulation().
    conv_layout = "x"

    def merged_modulation(self, segmap: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """cat([gamma, beta], 1), (N, 2 * norm_nc, H, W), in x's layout: the kernels read
        its two halves in place, forward and backward, and write its gradient whole."""
        # By default the modulation convolutions run in x's layout. A one-hot segmap made
        # the usual way, one_hot(labels).permute(0, 3, 1, 2), is channels_last: its
        # convolutions gave channels_last gamma/beta for an NCHW x, which the op then
        # transposed forward and backward, and the merged convolution's backward transposed
        # its gradient back (a third of the CPU GauGAN step's copies). The resized segmap,
        # label_nc channels, is the cheapest tensor here to convert. conv_layout = "segmap"
        # keeps the segmap's layout for the convolutions (cuDNN's tensor-core convolutions
        # are native channels_last) and transposes their output once here instead.
        if self.conv_layout not in ("x", "segmap"):
            raise ValueError(f"SPADE: `conv_layout` must be 'x' or 'segmap'; got {self.conv_layout!r}")
        layout = memory_format_of(x)
        seg = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        if self.conv_layout == "x":
            seg = seg.contiguous(memory_format=layout)
        actv = self.mlp_shared(seg)
        weight = torch.cat([self.mlp_gamma.weight, self.mlp_beta.weight])
        bias = torch.cat([self.mlp_gamma.bias, self.mlp_beta.bias])
        both = F.conv2d(actv, weight, bias, padding=self.mlp_gamma.padding)
        # Once here, so that the tensor saved for backward is already in x's layout and
        # the backward does not transpose it again (a no-op when it already is).
        return both.contiguous(memory_format=layout)

    def modulation(self, segmap: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma, beta: the two channel halves of merged_modulation (views, not copies)."""
        gamma, beta = self.merged_modulation(segmap, x).chunk(2, dim=1)
        return gamma, beta

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, segmap)
        return spade_norm_merged(x, self.merged_modulation(segmap, x), **self.norm_arguments())
