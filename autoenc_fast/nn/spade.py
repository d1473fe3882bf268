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
    # The layout the modulation convolutions run in: "x" (x's) or "segmap" (the segmap's,
    # as the reference and GauGAN's code do). An instance or class attribute, not a
    # constructor argument: it changes speed, never values. See modulation().
    conv_layout = "x"

    def modulation(self, segmap: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The kernels read gamma and beta densely in x's layout, so by default the
        # modulation convolutions run in that layout too. A one-hot segmap made the usual
        # way, one_hot(labels).permute(0, 3, 1, 2), is channels_last: its convolutions gave
        # channels_last gamma/beta for an NCHW x, which the op then transposed forward and
        # backward, and the merged convolution's backward transposed its gradient back (a
        # third of the CPU GauGAN step's copies). The resized segmap, label_nc channels,
        # is the cheapest tensor here to convert. conv_layout = "segmap" keeps the
        # segmap's layout for the convolutions (cuDNN's tensor-core convolutions are
        # native channels_last) and transposes gamma and beta once here instead.
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
        gamma, beta = both.chunk(2, dim=1)
        if both.is_contiguous(memory_format=layout) and (layout == torch.contiguous_format or not x.is_cuda):
            # The kernels read the two channel halves in place, forward and backward: no
            # copy at all. NCHW: every kernel (their rows of H*W stay adjacent);
            # channels_last (pixels 2C apart): the CPU kernels only.
            return gamma, beta
        # Else copy the halves once here, dense in x's layout, so that the tensors saved
        # for backward are the dense ones and the backward copies nothing again.
        return gamma.contiguous(memory_format=layout), beta.contiguous(memory_format=layout)
