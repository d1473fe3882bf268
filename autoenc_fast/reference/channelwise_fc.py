"""Plain-PyTorch channel-wise fully connected layer (Pathak et al. 2016, Context
Encoders): ground truth and baseline of autoenc_fast.functional.channelwise_fc and
the modules of autoenc_fast.nn.channelwise_fc."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._args import positive_int, shape_of
from ..ops.channelwise_fc_checks import output_memory_format


def channelwise_fc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y[b, c, j] = sum_i x[b, c, i] * weight[c, i, j] + bias[c, j], positions i, j
    flattened row-major over (H, W); y has x's shape."""
    B, C, H, W = x.shape
    y = torch.einsum("bci,cij->bcj", x.reshape(B, C, H * W), weight)
    if bias is not None:
        y = y + bias
    return y.reshape(B, C, H, W)


def init_channelwise_fc_(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """weight ~ N(0, 1 / (H*W)), bias = 0.

    Each output position sums H*W inputs, so E[y_j^2] = sum_i x_i^2 / (H*W): the
    output's mean square equals the input's mean square over the map, for any input
    (LeCun-normal with fan_in = H*W; no gain, as no nonlinearity sits inside the layer).
    """
    with torch.no_grad():
        weight.normal_(0.0, 1.0 / math.sqrt(weight.shape[1]))
        if bias is not None:
            bias.zero_()


class ChannelwiseFC(nn.Module):
    """Reference twin of autoenc_fast.nn.ChannelwiseFC (same parameters: weight, bias).
    The fused module subclasses it and swaps `op` for the fused kernel."""

    op = staticmethod(channelwise_fc)

    def __init__(self, channels: int, height: int, width: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("channels", channels), ("height", height), ("width", width)):
            positive_int(value, name, "ChannelwiseFC")
        self.channels, self.height, self.width = channels, height, width
        positions = height * width
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(channels, positions, positions, **factory))
        self.bias = nn.Parameter(torch.empty(channels, positions, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_channelwise_fc_(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(x, "ndim", None) != 4 or tuple(x.shape[1:]) != (self.channels, self.height, self.width):
            raise ValueError(f"ChannelwiseFC: `x` must have shape (B, {self.channels}, {self.height}, "
                             f"{self.width}); got {shape_of(x)}")
        return self.op(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        params = sum(p.numel() for p in self.parameters())
        return (f"channels={self.channels}, height={self.height}, width={self.width}, "
                f"bias={self.bias is not None}, params={params:,}")


class ChannelwiseFCBottleneck(nn.Module):
    """Reference twin of autoenc_fast.nn.ChannelwiseFCBottleneck: channel-wise FC ->
    dropout -> 1x1 convolution (parameters fc.weight, fc.bias, conv.weight, conv.bias)."""

    fc_class = ChannelwiseFC

    def __init__(self, channels: int, height: int, width: int, dropout: float = 0.5,
                 out_channels: int | None = None, bias: bool = True, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        if out_channels is not None:
            positive_int(out_channels, "out_channels", "ChannelwiseFCBottleneck")
        self.fc = self.fc_class(channels, height, width, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=1, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.Dropout draws its mask in memory order: the einsum's output (batch inside
        # channel in memory) is laid out as the fused op's, so that both backends drop the
        # same elements for the same seed. The copy costs the reference Context Encoder's
        # CPU step ~0.5 ms of ~39 (benchmarks/RESULTS.md, 2026-11-28 eleventh session).
        y = self.fc(x).contiguous(memory_format=output_memory_format(x))
        return self.conv(self.dropout(y))
