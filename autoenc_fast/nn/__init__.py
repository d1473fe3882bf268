"""Drop-in modules built on the fused ops."""
from .reparametrize import Reparametrize
from .spade import SPADE

__all__ = ["Reparametrize", "SPADE"]
