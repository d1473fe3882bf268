"""Plain-PyTorch Philox-4x32-10 normals: ground truth for the kernels' noise.

The same function as csrc/philox.h and autoenc_fast/triton/reparametrize_kl.py.
32-bit words live in int64 tensors; the high half of a 32x32 product is formed
from 16-bit halves so nothing overflows int64.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
UINT_TO_UNIFORM = 4.6566127342e-10
TWO_PI = 6.283185307179586
MIN_UNIFORM = 1.0e-7


def _mulhi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product a * b."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    high = (a_hi * b + ((a_lo * b) >> 16)) >> 16
    low = (a * b) & MASK32  # int64 wraps modulo 2**64: the low word stays exact
    return high & MASK32, low


def philox4x32_10(counter: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    """Philox-4x32-10 of four 32-bit counter words (int64 tensors) under a 64-bit key."""
    c = [word & MASK32 for word in counter]
    k0, k1 = key & MASK32, (key >> 32) & MASK32
    for _ in range(10):
        hi_b, lo_b = _mulhi_lo(ROUND_B, c[2])
        hi_a, lo_a = _mulhi_lo(ROUND_A, c[0])
        c = [hi_b ^ c[1] ^ k0, lo_b, hi_a ^ c[3] ^ k1, lo_a]
        k0, k1 = (k0 + KEY_A) & MASK32, (k1 + KEY_B) & MASK32
    return c


def uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    signed = torch.where(x >= 2**31, x - 2**32, x)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(UINT_TO_UNIFORM, dtype=torch.float32)


def randn4x(counter: torch.Tensor, key: int) -> torch.Tensor:
    """Normals of shape counter.shape + (4,), as triton.language.randn4x draws them."""
    zero = torch.zeros_like(counter)
    words = philox4x32_10([counter & MASK32, (counter >> 32) & MASK32, zero, zero], key)
    u = [uint_to_uniform(x) for x in words]
    two_pi = torch.tensor(TWO_PI, dtype=torch.float32)
    out = []
    for radius_u, angle_u in ((u[0], u[1]), (u[2], u[3])):
        radius = torch.sqrt(-2.0 * torch.log(torch.clamp_min(radius_u, MIN_UNIFORM)))
        theta = two_pi * angle_u
        out += [radius * torch.cos(theta), radius * torch.sin(theta)]
    return torch.stack(out, dim=-1)


def philox_normal(shape: tuple[int, ...], key: int, offset: int = 0) -> torch.Tensor:
    """float32 noise of `shape` (first dim the batch) as the kernels draw it.

    Element d of row b comes from group counter offset + b * ceil(D / 4) + d // 4,
    lane d % 4, where D is the number of elements of a row.
    """
    rows = shape[0]
    row_len = 1
    for size in shape[1:]:
        row_len *= size
    groups = (row_len + 3) // 4
    wrap = lambda v: ((v + 2**63) % 2**64) - 2**63  # noqa: E731  (uint64 -> int64 bits)
    counter = torch.arange(rows * groups, dtype=torch.int64).reshape(rows, groups) + wrap(offset)
    normals = randn4x(counter, key % 2**64).reshape(rows, groups * 4)[:, :row_len]
    return normals.reshape(shape)
