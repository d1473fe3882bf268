"""Plain-PyTorch reference implementations: the ground truth the kernels are tested
against and the baseline they are benchmarked against. Same signatures as
autoenc_fast.functional and autoenc_fast.nn."""
from .channelwise_fc import ChannelwiseFC, ChannelwiseFCBottleneck, channelwise_fc
from .philox import philox_normal
from .reparametrize_kl import Reparametrize, reparametrize_kl
from .spade_norm import SPADE, spade_norm, spade_norm_merged

__all__ = ["ChannelwiseFC", "ChannelwiseFCBottleneck", "Reparametrize", "SPADE", "channelwise_fc",
           "philox_normal", "reparametrize_kl", "spade_norm", "spade_norm_merged"]
