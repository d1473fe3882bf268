from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
        if self.convolutions_merge():
            weight = torch.cat([self.mlp_gamma.weight, self.mlp_beta.weight])
            bias = torch.cat([self.mlp_gamma.bias, self.mlp_beta.bias])
            conv = self.mlp_gamma
            both = F.conv2d(actv, weight, bias, conv.stride, conv.padding, conv.dilation)
        else:
            both = torch.cat([self.mlp_gamma(actv), self.mlp_beta(actv)], dim=1)
        # Once here, so that the tensor saved for backward is already in x's layout and
        # the backward does not transpose it again (a no-op when it already is).
        return both.contiguous(memory_format=layout)

    def convolutions_merge(self) -> bool:
        """Whether mlp_gamma and mlp_beta can run as one convolution of their concatenated
        weights: both nn.Conv2d with biases, zero padding, one group and the same geometry,
        and nothing acting through their forward (hooks, as the hook-based
        nn.utils.spectral_norm and weight_norm install, or a subclass's own forward).
        Otherwise each runs its own forward, as in the reference. nn.utils.parametrize
        (e.g. parametrizations.spectral_norm) recomputes .weight where it is read, so
        parametrized convolutions merge."""
        convs = (self.mlp_gamma, self.mlp_beta)
        plain = (nn.Conv2d.forward, nn.Conv2d._conv_forward)
        if any((type(m).forward, getattr(type(m), "_conv_forward", None)) != plain or m.bias is None
               or m.padding_mode != "zeros" or m._forward_hooks or m._forward_pre_hooks for m in convs):
            return False
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return False
        gamma_geometry, beta_geometry = ((m.kernel_size, m.stride, m.padding, m.dilation, m.groups) for m in convs)
        return gamma_geometry == beta_geometry and self.mlp_gamma.groups == 1

    def modulation(self, segmap: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma, beta: the two channel halves of merged_modulation (views, not copies)."""
        gamma, beta = self.merged_modulation(segmap, x).chunk(2, dim=1)
        return gamma, beta

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, segmap)
        return spade_norm_merged(x, self.merged_modulation(segmap, x), **self.norm_arguments())
