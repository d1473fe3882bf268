"""Drop-in modules built on the fused ops."""
from .channelwise_fc import ChannelwiseFC, ChannelwiseFCBottleneck
from .reparametrize import Reparametrize
from .spade import SPADE

__all__ = ["ChannelwiseFC", "ChannelwiseFCBottleneck", "Reparametrize", "SPADE"]
