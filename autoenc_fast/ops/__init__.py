"""Python-side registrations of the autoenc_fast ops: fake (meta) kernels, autograd,
and the Triton CUDA kernels. The schemas are declared once, in csrc/ops.cpp."""
from .. import _ext

# Which kind of kernel serves each op on CUDA when one is registered.
CUDA_BACKENDS = {"reparametrize_kl": "Triton", "spade_norm": "CUDA C++"}

if _ext.LOADED:
    from . import reparametrize_kl  # noqa: F401
    from . import spade_norm  # noqa: F401
