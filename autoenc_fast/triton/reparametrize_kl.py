r"""Triton kernels of autoenc_fast::reparametrize_kl (the op's CUDA implementation).

Forward, one pass over the inputs::

    s      = exp(logvar / 2)
    z      = mu + s * eps
    kl[b]  = -1/2 * sum_d (1 + logvar[b, d] - mu[b, d]^2 - s[b, d]^2)

Backward, one pass::

    dmu     = dz + dkl[b] * mu
    dlogvar = 1/2 * dz * s * eps + 1/2 * dkl[b] * (s^2 - 1)

with eps read when given, re-drawn from the seed when the forward drew it (the autograd's
choice on the GPU: no noise tensor stored, and none of z's rounding, which in bfloat16 is
|mu| / s times eps's own), or s * eps = z - mu from z.

Noise (when drawn here): element d of row b is lane d % 4 of
``randn4x(key, counter = offset + b * ceil(D / 4) + d // 4)``: one Philox-4x32-10
call gives four uint32 words, mapped to [0, 1] and paired through Box-Muller, exactly
as ``triton.language.randn4x`` does; csrc/philox.h is the C++ twin, so CPU and GPU
draw the same noise for the same (key, offset). The row's counters start on a fresh
group, so a tile that starts at a multiple of 4 draws whole groups.

Math in float32 (float64 for float64 inputs); KL partial sums per (row, slice) are
written to a buffer and added in a fixed order, so results do not depend on timing.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    for _ in tl.static_range(10):
        old_c0 = c0
        old_c2 = c2
        c0 = tl.umulhi(0xCD9E8D57, old_c2) ^ c1 ^ k0
        c2 = tl.umulhi(0xD2511F53, old_c0) ^ c3 ^ k1
        c1 = old_c2 * 0xCD9E8D57
        c3 = old_c0 * 0xD2511F53
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _uint_to_uniform(x):
    signed = x.to(tl.int32, bitcast=True)
    signed = tl.where(signed < 0, ~signed, signed)
    return signed.to(tl.float32) * 4.6566127342e-10


@triton.jit
def _box_muller(radius_u, angle_u, PRECISE: tl.constexpr):
    """PRECISE: libdevice's log/sin/cos/sqrt (about 1 ulp, like the C++ kernel's inline polynomials)
    instead of the approximate PTX instructions tl.log/tl.sin/tl.cos compile to, whose
    absolute error would make CPU and GPU noise differ by more than float rounding.
    The interpreter has no libdevice; there the tl functions are numpy's exact ones."""
    clamped = tl.maximum(radius_u, 1.0e-7)
    theta = 6.283185307179586 * angle_u
    if PRECISE:
        radius = libdevice.sqrt_rn(-2.0 * libdevice.log(clamped))
        return radius * libdevice.cos(theta), radius * libdevice.sin(theta)
    else:
        radius = tl.sqrt(-2.0 * tl.log(clamped))
        return radius * tl.cos(theta), radius * tl.sin(theta)


@triton.jit
def _randn4x(k0, k1, counter, PRECISE: tl.constexpr):
    """Four normal blocks for uint64 group counters (low and high words as c0, c1)."""
    c0 = (counter & 0xFFFFFFFF).to(tl.uint32)
    c1 = (counter >> 32).to(tl.uint32)
    zero = c0 * 0
    x0, x1, x2, x3 = _philox4x32_10(c0, c1, zero, zero, k0, k1)
    n0, n1 = _box_muller(_uint_to_uniform(x0), _uint_to_uniform(x1), PRECISE)
    n2, n3 = _box_muller(_uint_to_uniform(x2), _uint_to_uniform(x3), PRECISE)
    return n0, n1, n2, n3


@triton.jit
def _row_keys(seed_ptr, row, groups_per_row):
    """Philox key words and the row's first group counter for seed = (key, offset)."""
    key = tl.load(seed_ptr).to(tl.uint64, bitcast=True)
    offset = tl.load(seed_ptr + 1).to(tl.uint64, bitcast=True)
    k0 = (key & 0xFFFFFFFF).to(tl.uint32)
    k1 = (key >> 32).to(tl.uint32)
    return k0, k1, offset + row.to(tl.uint64) * groups_per_row.to(tl.uint64)


@triton.jit
def _row_noise(k0, k1, row_counter, start, BLOCK: tl.constexpr, PRECISE: tl.constexpr):
    """The row's noise for elements [start, start + BLOCK), start a multiple of 4."""
    group = row_counter + (start // 4 + tl.arange(0, BLOCK // 4)).to(tl.uint64)
    n0, n1, n2, n3 = _randn4x(k0, k1, group, PRECISE)
    # join(join(n0, n2), join(n1, n3))[g, j, k] is n_{2j+k}: element 4g + 2j + k.
    return tl.reshape(tl.join(tl.join(n0, n2), tl.join(n1, n3)), [BLOCK])


# An int argument equal to 1 is specialised into a Python constant; groups_per_row is
# converted to uint64 in the kernel, so it must stay a tensor.
@triton.jit(do_not_specialize=["groups_per_row"])
def _reparametrize_kl_fwd(mu_ptr, logvar_ptr, eps_ptr, seed_ptr, z_ptr, kl_partial_ptr,
                          row_len, groups_per_row, slice_len, n_slices,
                          NOISE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                          PRECISE: tl.constexpr):
    """NOISE: 0 none (z = mu), 1 eps given, 2 drawn here."""
    row = tl.program_id(0)
    part = tl.program_id(1)
    base = row.to(tl.int64) * row_len
    d_begin = part * slice_len
    d_end = tl.minimum(d_begin + slice_len, row_len)
    if NOISE == 2:
        k0, k1, row_counter = _row_keys(seed_ptr, row, groups_per_row)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for start in range(d_begin, d_end, BLOCK):
        d = start + tl.arange(0, BLOCK)
        mask = d < d_end
        mu = tl.load(mu_ptr + base + d, mask=mask, other=0.0).to(ACC)
        logvar = tl.load(logvar_ptr + base + d, mask=mask, other=0.0).to(ACC)
        std = tl.exp(0.5 * logvar)
        if NOISE == 1:
            z = mu + std * tl.load(eps_ptr + base + d, mask=mask, other=0.0).to(ACC)
        elif NOISE == 2:
            z = mu + std * _row_noise(k0, k1, row_counter, start, BLOCK, PRECISE).to(ACC)
        else:
            z = mu
        tl.store(z_ptr + base + d, z.to(z_ptr.dtype.element_ty), mask=mask)
        # Masked lanes load 0 and add 1 + 0 - 0 - exp(0) = 0.
        acc += 1.0 + logvar - mu * mu - std * std
    tl.store(kl_partial_ptr + row.to(tl.int64) * n_slices + part, -0.5 * tl.sum(acc, axis=0))


@triton.jit(do_not_specialize=["groups_per_row"])
def _reparametrize_kl_bwd(grad_z_ptr, grad_kl_ptr, mu_ptr, logvar_ptr, noise_ptr, seed_ptr, grad_mu_ptr,
                          grad_logvar_ptr, row_len, groups_per_row, slice_len,
                          HAS_GRAD_Z: tl.constexpr, HAS_GRAD_KL: tl.constexpr, NOISE: tl.constexpr,
                          ACC: tl.constexpr, BLOCK: tl.constexpr, PRECISE: tl.constexpr):
    """NOISE, where s * eps comes from: 0 none (z = mu), 1 eps at noise_ptr, 2 drawn here
    from seed_ptr as the forward drew it, 3 z - mu with z at noise_ptr."""
    row = tl.program_id(0)
    part = tl.program_id(1)
    base = row.to(tl.int64) * row_len
    d_begin = part * slice_len
    d_end = tl.minimum(d_begin + slice_len, row_len)
    if HAS_GRAD_Z and NOISE == 2:
        k0, k1, row_counter = _row_keys(seed_ptr, row, groups_per_row)
    if HAS_GRAD_KL:
        grad_kl = tl.load(grad_kl_ptr + row).to(ACC)
    for start in range(d_begin, d_end, BLOCK):
        d = start + tl.arange(0, BLOCK)
        mask = d < d_end
        mu = tl.load(mu_ptr + base + d, mask=mask, other=0.0).to(ACC)
        grad_mu = tl.zeros([BLOCK], dtype=ACC)
        grad_logvar = tl.zeros([BLOCK], dtype=ACC)
        if HAS_GRAD_Z:
            grad_z = tl.load(grad_z_ptr + base + d, mask=mask, other=0.0).to(ACC)
            if NOISE == 1 or NOISE == 2:
                std = tl.exp(0.5 * tl.load(logvar_ptr + base + d, mask=mask, other=0.0).to(ACC))
                if NOISE == 1:
                    eps = tl.load(noise_ptr + base + d, mask=mask, other=0.0).to(ACC)
                else:
                    eps = _row_noise(k0, k1, row_counter, start, BLOCK, PRECISE).to(ACC)
                sigma_eps = std * eps
            elif NOISE == 3:
                sigma_eps = tl.load(noise_ptr + base + d, mask=mask, other=0.0).to(ACC) - mu
            else:
                sigma_eps = tl.zeros([BLOCK], dtype=ACC)
            grad_mu += grad_z
            grad_logvar += 0.5 * grad_z * sigma_eps
        if HAS_GRAD_KL:
            logvar = tl.load(logvar_ptr + base + d, mask=mask, other=0.0).to(ACC)
            grad_mu += grad_kl * mu
            grad_logvar += 0.5 * grad_kl * (tl.exp(logvar) - 1.0)
        tl.store(grad_mu_ptr + base + d, grad_mu.to(grad_mu_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_logvar_ptr + base + d, grad_logvar.to(grad_logvar_ptr.dtype.element_ty), mask=mask)


def _acc_dtype(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _slices_per_row(rows: int, row_len: int, device: torch.device) -> int:
    """Split rows only when there are too few to fill the SMs: a split costs a
    second launch to add the partial KL sums."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if rows >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, max(rows, 1)), triton.cdiv(row_len, BLOCK)))


def _row_slices(mu, slices):
    """(rows, row_len, slice_len, n_slices) of the kernels' (row, slice) grid."""
    rows = mu.shape[0]
    row_len = mu.numel() // rows if rows else 0
    n_slices = slices or _slices_per_row(rows, row_len, mu.device)
    slice_len = triton.cdiv(triton.cdiv(row_len, n_slices), BLOCK) * BLOCK
    return rows, row_len, slice_len, triton.cdiv(row_len, slice_len)


def reparametrize_kl_forward(mu, logvar, eps=None, seed=None, slices=None):
    """Launch the forward kernel on contiguous copies of the inputs; returns (z, kl).
    `slices` overrides the number of programs per row (tests use it)."""
    mu, logvar = mu.contiguous(), logvar.contiguous()
    acc_tl, acc_torch = _acc_dtype(mu.dtype)
    z = torch.empty_like(mu)
    if mu.numel() == 0:
        return z, torch.zeros(mu.shape[0], dtype=acc_torch, device=mu.device)
    rows, row_len, slice_len, n_slices = _row_slices(mu, slices)
    noise = 1 if eps is not None else (2 if seed is not None else 0)
    eps = eps.contiguous() if eps is not None else mu
    seed = seed.to(mu.device).contiguous() if seed is not None else mu
    partial = torch.empty((rows, n_slices), dtype=acc_torch, device=mu.device)
    _reparametrize_kl_fwd[(rows, n_slices)](
        mu, logvar, eps, seed, z, partial, row_len, triton.cdiv(row_len, 4), slice_len, n_slices,
        NOISE=noise, ACC=acc_tl, BLOCK=BLOCK, PRECISE=not INTERPRETED, num_warps=NUM_WARPS)
    kl = partial[:, 0] if n_slices == 1 else partial.sum(dim=1)
    return z, kl


def reparametrize_kl_backward(grad_z, grad_kl, mu, logvar, z=None, eps=None, seed=None, slices=None):
    """Launch the backward kernel; returns (grad_mu, grad_logvar). s * eps comes from eps,
    else the noise re-drawn from seed, else z - mu (the op's schema, csrc/ops.cpp)."""
    mu, logvar = mu.contiguous(), logvar.contiguous()
    grad_mu, grad_logvar = torch.empty_like(mu), torch.empty_like(mu)
    if mu.numel() == 0:
        return grad_mu, grad_logvar
    rows, row_len, slice_len, n_slices = _row_slices(mu, slices)
    noise, source = ((1, eps.contiguous()) if eps is not None else (2, mu) if seed is not None
                     else (3, z.contiguous()) if z is not None else (0, mu))
    seed = seed.to(mu.device).contiguous() if seed is not None else mu
    acc_tl, _ = _acc_dtype(mu.dtype)
    _reparametrize_kl_bwd[(rows, n_slices)](
        grad_z.contiguous() if grad_z is not None else mu,
        grad_kl.contiguous() if grad_kl is not None else mu,
        mu, logvar, source, seed, grad_mu, grad_logvar, row_len, triton.cdiv(row_len, 4), slice_len,
        HAS_GRAD_Z=grad_z is not None, HAS_GRAD_KL=grad_kl is not None, NOISE=noise,
        ACC=acc_tl, BLOCK=BLOCK, PRECISE=not INTERPRETED, num_warps=NUM_WARPS)
    return grad_mu, grad_logvar
