"""`backend="fused" | "reference"`: which implementation of a building block a model uses.

Every model takes the same ``backend`` argument and asks this module for the classes
of its building blocks by name: ``"fused"`` gives the module from ``autoenc_fast.nn``
(fused kernels), ``"reference"`` its plain-PyTorch twin of the same name from
``autoenc_fast.reference``. The twins hold the same parameters and buffers under the
same names, so a model's state_dict moves between backends with ``strict=True``.
A block without a fused kernel (convolutions, linear layers) is the torch.nn layer in
both backends.
"""
from __future__ import annotations

from torch import nn

BACKENDS = ("fused", "reference")


def check_backend(backend: str, owner: str) -> str:
    """The backend name, or a ValueError naming `backend` and the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: `backend` must be one of {BACKENDS}; got {backend!r}")
    return backend


def block_class(name: str, backend: str) -> type[nn.Module]:
    """The module class called `name` of `backend`: autoenc_fast.nn.<name> for "fused",
    autoenc_fast.reference.<name> for "reference"."""
    from .. import nn as fused_modules
    from .. import reference as reference_modules

    check_backend(backend, "block_class")
    namespace = fused_modules if backend == "fused" else reference_modules
    try:
        return getattr(namespace, name)
    except AttributeError:
        raise LookupError(f"block_class: backend {backend!r} has no module {name!r} "
                          f"(looked in {namespace.__name__})") from None
