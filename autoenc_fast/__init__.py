"""autoenc_fast: fused kernels and drop-in modules for autoencoders in PyTorch."""
__version__ = "0.1.0"

from . import _ext  # noqa: E402  (loads the compiled kernels, or warns once why not)
from . import ops  # noqa: E402,F401  (fake kernels, autograd, Triton CUDA kernels)
from . import functional, nn, reference  # noqa: E402
from ._info import info  # noqa: E402

__all__ = ["functional", "info", "nn", "reference"]
