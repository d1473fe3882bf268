"""Drop-in modules built on the fused ops."""
from .reparametrize import Reparametrize

__all__ = ["Reparametrize"]
