"""Channel-wise fully connected layer and the Context Encoder bottleneck, on the
fused autoenc_fast::channelwise_fc kernels."""
from __future__ import annotations

from ..functional import channelwise_fc
from ..reference.channelwise_fc import ChannelwiseFC as ReferenceChannelwiseFC
from ..reference.channelwise_fc import ChannelwiseFCBottleneck as ReferenceChannelwiseFCBottleneck


class ChannelwiseFC(ReferenceChannelwiseFC):
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

    op = staticmethod(channelwise_fc)


class ChannelwiseFCBottleneck(ReferenceChannelwiseFCBottleneck):
    """The Context Encoder's bottleneck: channel-wise FC -> dropout -> 1x1 convolution.

    The channel-wise FC spreads information across positions within each map, the
    stride-1 1x1 convolution then mixes the channels (Pathak et al. 2016, section 3.1).
    ``out_channels`` defaults to ``channels``. Parameters ``fc.weight``, ``fc.bias``,
    ``conv.weight``, ``conv.bias`` as in :class:`autoenc_fast.reference.ChannelwiseFCBottleneck`.
    """

    fc_class = ChannelwiseFC
