"""Argument checks shared by the models and modules: each error names the argument."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def positive_int(value, name: str, owner: str) -> int:
    """`value` as an int >= 1, else a TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: `{name}` must be an int; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner}: `{name}` must be >= 1; got {value}")
    return value


def positive_ints(values, length: int | None, name: str, owner: str) -> tuple[int, ...]:
    """`values` as a tuple of ints >= 1 (of `length` when given), else an error naming `name`."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"{owner}: `{name}` must be a sequence of ints; got {type(values).__name__}")
    if length is not None and len(values) != length:
        raise ValueError(f"{owner}: `{name}` must have {length} entries; got {len(values)}")
    if length is None and len(values) == 0:
        raise ValueError(f"{owner}: `{name}` must not be empty")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{owner}: `{name}` must hold ints >= 1; got {tuple(values)!r}")
    return tuple(values)


def choice(value, choices: tuple, name: str, owner: str):
    """`value` if it is one of `choices`, else a ValueError naming `name`."""
    if value not in choices:
        raise ValueError(f"{owner}: `{name}` must be one of {choices}; got {value!r}")
    return value


def shape_of(t) -> object:
    """A tensor's shape for an error message, or the type name of what came instead."""
    return tuple(t.shape) if hasattr(t, "shape") else type(t).__name__


def check_images(x, channels: int, size: int, name: str, owner: str) -> None:
    """x a (B, channels, size, size) tensor, else a ValueError naming `name`: a model's
    layers are sized for it, and their own errors ("mat1 and mat2 shapes cannot be
    multiplied") would not say which input was wrong."""
    if getattr(x, "ndim", None) != 4 or tuple(x.shape[1:]) != (channels, size, size):
        raise ValueError(f"{owner}: `{name}` must have shape (B, {channels}, {size}, {size}); got {shape_of(x)}")


def check_maps(x, channels: int, name: str, owner: str) -> None:
    """x a (B, channels, H, W) tensor of any H, W, else a ValueError naming `name`."""
    if getattr(x, "ndim", None) != 4 or x.shape[1] != channels:
        raise ValueError(f"{owner}: `{name}` must have shape (B, {channels}, H, W); got {shape_of(x)}")


def check_codes(z, dim: int, name: str, owner: str, batch: int | None = None) -> None:
    """z a (B, dim) tensor (B = batch when given), else a ValueError naming `name`."""
    if getattr(z, "ndim", None) != 2 or z.shape[1] != dim or (batch is not None and z.shape[0] != batch):
        raise ValueError(f"{owner}: `{name}` must have shape ({'B' if batch is None else batch}, {dim}); "
                         f"got {shape_of(z)}")


def check_broadcasts_to(t, like, name: str, like_name: str, owner: str) -> None:
    """t broadcasts to like's shape (and does not grow it), else a ValueError naming `name`."""
    try:
        fits = torch.broadcast_shapes(t.shape, like.shape) == like.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{owner}: `{name}` {tuple(t.shape)} must broadcast to `{like_name}`'s shape "
                         f"{tuple(like.shape)}")
