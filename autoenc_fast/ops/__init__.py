"""Python-side registrations of the autoenc_fast ops: fake (meta) kernels, autograd,
and the Triton CUDA kernels. The schemas are declared once, in csrc/ops.cpp."""
from .. import _ext

# Which kind of kernel serves each op on CUDA when one is registered.
CUDA_BACKENDS = {"reparametrize_kl": "Triton", "channelwise_fc": "CUDA C++", "spade_norm": "CUDA C++"}

if _ext.LOADED:
    from . import channelwise_fc, reparametrize_kl, spade_norm  # noqa: F401
