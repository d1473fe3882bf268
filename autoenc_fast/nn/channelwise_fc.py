"""Channel-wise fully connected layer and the Context Encoder bottleneck, on the
fused autoenc_fast::channelwise_fc kernels."""
from __future__ import annotations

import torch
from torch import nn

from ..functional import channelwise_fc
from ..reference.channelwise_fc import init_channelwise_fc_


class ChannelwiseFC(nn.Module):
    r"""Channel-wise fully connected layer (Pathak et al. 2016, Context Encoders).

    Each of the ``channels`` maps of ``height x width`` is fully connected to its own
    output map of the same size: ``y[b, c, j] = sum_i x[b, c, i] * weight[c, i, j] + bias[c, j]``
    with positions flattened row-major. ``channels * (H*W)^2`` weights, against
    ``channels^2 * (H*W)^2`` for a full connection across maps.

    Parameters: ``weight`` (channels, H*W, H*W) [channel, input position, output
    position] and ``bias`` (channels, H*W), the names of the reference twin
    :class:`autoenc_fast.reference.ChannelwiseFC`, so state_dicts load either way
    with ``strict=True``.

    Initialisation: ``weight ~ N(0, 1 / (H*W))`` and ``bias = 0``. An output position
    sums H*W inputs, so E[y_j^2] = (1 / (H*W)) * sum_i x_i^2: at start the output's
    mean square equals the input's mean square over each map (LeCun-normal with
    fan_in = H*W, no gain since the layer holds no nonlinearity).
    """

    def __init__(self, channels: int, height: int, width: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if min(channels, height, width) < 1:
            raise ValueError("ChannelwiseFC: `channels`, `height` and `width` must be positive; "
                             f"got {channels}, {height}, {width}")
        self.channels, self.height, self.width = channels, height, width
        positions = height * width
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(channels, positions, positions, **factory))
        self.bias = nn.Parameter(torch.empty(channels, positions, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_channelwise_fc_(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and tuple(x.shape[1:]) != (self.channels, self.height, self.width):
            raise ValueError(f"ChannelwiseFC: `x` must have shape (B, {self.channels}, {self.height}, "
                             f"{self.width}); got {tuple(x.shape)}")
        return channelwise_fc(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        params = sum(p.numel() for p in self.parameters())
        return (f"channels={self.channels}, height={self.height}, width={self.width}, "
                f"bias={self.bias is not None}, params={params:,}")


class ChannelwiseFCBottleneck(nn.Module):
    """The Context Encoder's bottleneck: channel-wise FC -> dropout -> 1x1 convolution.

    The channel-wise FC spreads information across positions within each map, the
    stride-1 1x1 convolution then mixes the channels (Pathak et al. 2016, section 3.1).
    ``out_channels`` defaults to ``channels``. Parameters ``fc.weight``, ``fc.bias``,
    ``conv.weight``, ``conv.bias`` as in :class:`autoenc_fast.reference.ChannelwiseFCBottleneck`.
    """

    def __init__(self, channels: int, height: int, width: int, dropout: float = 0.5,
                 out_channels: int | None = None, bias: bool = True, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.fc = ChannelwiseFC(channels, height, width, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=1, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.dropout(self.fc(x)))
