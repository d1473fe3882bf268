"""autoenc_fast::reparametrize_kl against its reference, on every backend we can run."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (TOLERANCES, assert_double_backward_refused, compile_for_sm90, devices, requires_cuda,
                      run_under_triton_interpreter)

from autoenc_fast import functional as F
from autoenc_fast import nn as afnn
from autoenc_fast import reference as R
from autoenc_fast.reference.philox import philox4x32_10, philox_normal

OP = torch.ops.autoenc_fast.reparametrize_kl
BACKWARD_OP = torch.ops.autoenc_fast.reparametrize_kl_backward
SHAPES = [(1,), (7,), (1, 1), (5, 13), (3, 4, 5), (2, 3, 4, 5), (64, 256), (3, 70001)]
# KL sums many terms: float32 gets the reduction tolerance of DESIGN.md.
KL_TOLERANCES = {**TOLERANCES, torch.float32: dict(atol=1e-4, rtol=1e-4)}


def cpu_dtypes():
    return [torch.float32, torch.float64]


def make_inputs(shape, dtype, device, requires_grad=False):
    mu = torch.randn(shape, dtype=dtype, device=device) * 1.5
    logvar = torch.randn(shape, dtype=dtype, device=device)
    eps = torch.randn(shape, dtype=dtype, device=device)
    if requires_grad:
        mu.requires_grad_()
        logvar.requires_grad_()
    return mu, logvar, eps


def reference64(mu, logvar, eps):
    """The reference in float64 on the CPU: the ground truth."""
    z, kl = R.reparametrize_kl(mu.detach().cpu().double(), logvar.detach().cpu().double(),
                               eps.detach().cpu().double() if eps is not None else None)
    return z, kl


def assert_close_to(actual, expected, tolerances, dtype):
    torch.testing.assert_close(actual.detach().cpu().double(), expected, **tolerances[dtype])


# ---------------------------------------------------------------- forward, explicit eps


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", cpu_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_with_eps(shape, dtype, device):
    mu, logvar, eps = make_inputs(shape, dtype, device)
    z, kl = F.reparametrize_kl(mu, logvar, eps)
    z_ref, kl_ref = reference64(mu, logvar, eps)
    assert z.shape == mu.shape and z.dtype == dtype and kl.shape == (shape[0],)
    assert kl.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close_to(z, z_ref, TOLERANCES, dtype)
    assert_close_to(kl, kl_ref, KL_TOLERANCES, dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded_eps", "channels_last"])
def test_non_contiguous_inputs(layout, device):
    dtype = torch.float64
    if layout == "transposed":
        mu, logvar, eps = (t.transpose(1, 2) for t in make_inputs((4, 9, 6), dtype, device))
    elif layout == "sliced":
        mu, logvar, eps = (t[:, ::3, 1:] for t in make_inputs((4, 30, 7), dtype, device))
    elif layout == "expanded_eps":
        mu, logvar, _ = make_inputs((4, 33), dtype, device)
        eps = torch.randn(1, 33, dtype=dtype, device=device).expand(4, 33)
    else:
        mu, logvar, eps = (t.contiguous(memory_format=torch.channels_last)
                           for t in make_inputs((3, 5, 4, 6), dtype, device))
    assert not mu.is_contiguous() or not eps.is_contiguous()
    z, kl = F.reparametrize_kl(mu, logvar, eps)
    z_ref, kl_ref = reference64(mu, logvar, eps)
    assert_close_to(z, z_ref, TOLERANCES, dtype)
    assert_close_to(kl, kl_ref, KL_TOLERANCES, dtype)


@pytest.mark.parametrize("device", devices())
def test_empty_batch_and_empty_rows(device):
    mu, logvar, eps = make_inputs((0, 5), torch.float32, device, requires_grad=True)
    z, kl = F.reparametrize_kl(mu, logvar)
    assert z.shape == (0, 5) and kl.shape == (0,)
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == (0, 5)
    mu, logvar, eps = make_inputs((4, 0), torch.float32, device)
    z, kl = F.reparametrize_kl(mu, logvar, eps)
    assert z.shape == (4, 0)
    torch.testing.assert_close(kl.cpu(), torch.zeros(4))


@pytest.mark.parametrize("shape", [(0,), (0, 5), (4, 0), (0, 2, 3)])
def test_reference_and_fallback_take_empty_tensors(shape):
    mu, logvar, eps = make_inputs(shape, torch.float64, "cpu")
    z_ref, kl_ref = R.reparametrize_kl(mu, logvar, eps)
    z, kl = F.reparametrize_kl(mu, logvar, eps)
    assert z_ref.shape == z.shape == shape and kl_ref.shape == kl.shape == (shape[0],)
    torch.testing.assert_close(kl, kl_ref)


@pytest.mark.parametrize("device", devices())
def test_nan_in_gives_nan_out_like_the_reference(device):
    mu, logvar, eps = make_inputs((3, 10), torch.float32, device)
    mu[0, 3] = float("nan")
    logvar[2, 7] = float("nan")
    z, kl = F.reparametrize_kl(mu, logvar, eps)
    z_ref, kl_ref = R.reparametrize_kl(mu, logvar, eps)
    torch.testing.assert_close(z, z_ref, equal_nan=True)
    assert torch.isnan(kl).tolist() == torch.isnan(kl_ref).tolist() == [True, False, True]


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_cpu_exp_of_logvar_over_the_whole_float_range(direction):
    """z = exp(logvar / 2) and the KL gradient's exp(logvar) (the CPU kernel's own
    inline exp for float32) hold to float64's exp within 2 ulp (3 through the gradient's
    extra roundings) from overflow to inf down through the denormals to zero; inf, -inf
    and NaN come out as torch.exp's. CPU only: the Triton kernel uses tl.exp, a faster
    approximation not meant to hold 2 ulp, and the float32 tolerances elsewhere hold it."""
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 88.72, 88.73, -87.3, -103.0, -104.5])
    logvar = torch.cat([torch.empty(20_000).uniform_(-220.0, 190.0), specials]).reshape(2, -1)
    mu, eps = torch.zeros_like(logvar), torch.ones_like(logvar)
    if direction == "forward":
        got, exact = F.reparametrize_kl(mu, logvar, eps)[0], torch.exp(0.5 * logvar.double())
    else:
        logvar.requires_grad_(True)
        _, kl = F.reparametrize_kl(mu, logvar, eps)
        # dkl/dlogvar = (e^logvar - 1) / 2: with a KL gradient of 2, adding 1 gives e^logvar.
        (grad_logvar,) = torch.autograd.grad(kl, logvar, torch.full_like(kl, 2.0))
        got, exact = grad_logvar + 1.0, torch.exp(logvar.detach().double())
    exact32 = exact.float()
    torch.testing.assert_close(got.isnan(), exact32.isnan())
    torch.testing.assert_close(got.isinf(), exact32.isinf())
    normal = exact32.isfinite() & (exact32.abs() >= torch.finfo(torch.float32).tiny)
    ulps = 2.0
    if direction == "backward":  # (e^lv - 1) + 1 rounds twice more, and loses digits below 1
        normal &= exact32 >= 1.0
        ulps = 3.0
    ulp = torch.finfo(torch.float32).eps * exact[normal].abs()
    assert ((got[normal].double() - exact[normal]).abs() <= ulps * ulp).all()
    denormal = exact32.isfinite() & ~normal & (exact32.abs() < torch.finfo(torch.float32).tiny)
    if direction == "forward":
        assert ((got[denormal].double() - exact[denormal]).abs() <= 2 * 2.0**-149).all()


def test_half_types_on_cpu_go_through_float32():
    for dtype in (torch.float16, torch.bfloat16):
        mu, logvar, eps = make_inputs((6, 40), dtype, "cpu")
        z, kl = F.reparametrize_kl(mu, logvar, eps)
        z_ref, kl_ref = reference64(mu, logvar, eps)
        assert z.dtype == dtype and kl.dtype == torch.float32
        assert_close_to(z, z_ref, TOLERANCES, dtype)
        assert_close_to(kl, kl_ref, KL_TOLERANCES, dtype)


# ---------------------------------------------------------------- the drawn noise


def test_reference_philox_matches_random123_known_answers():
    """Known-answer vectors of Philox-4x32-10 published with Random123."""
    cases = [
        ([0, 0, 0, 0], 0, [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, 0xFFFFFFFFFFFFFFFF, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], (0x299F31D0 << 32) | 0xA4093822,
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for counter, key, expected in cases:
        words = philox4x32_10([torch.tensor([c]) for c in counter], key)
        assert [int(w) for w in words] == expected


def noise_of(device, shape, seed, dtype=torch.float32):
    """z for mu = 0, logvar = 0 is the noise itself."""
    zeros = torch.zeros(shape, dtype=dtype, device=device)
    z, _ = F.reparametrize_kl(zeros, zeros.clone(), seed=seed)
    return z


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", [(1, 3), (4, 37), (3, 2, 5, 7), (2, 5000)])
def test_kernel_noise_equals_reference_philox(shape, device):
    key, offset = int(torch.randint(0, 2**62, ())) * 3, 2**32 - 7  # counters cross 2**32
    noise = noise_of(device, shape, (key, offset))
    expected = philox_normal(shape, key, offset)
    assert (noise != 0).all()  # every element written (a normal is never exactly 0)
    torch.testing.assert_close(noise.cpu(), expected, atol=2e-5, rtol=2e-5)


def test_cpu_avx512_and_avx2_noise_code_agree_bit_for_bit(tmp_path):
    """The C++ kernel picks its AVX-512 noise code at run time where the CPU has it;
    AUTOENC_FAST_CPU_NO_AVX512=1 forces the AVX2 code. Both must draw the same bits and
    the reference's noise (on a CPU without AVX-512 both runs take the AVX2 code)."""
    from autoenc_fast import _ext

    if not _ext.LOADED:
        pytest.skip(f"extension not loaded: {_ext.STATUS}")
    key, offset = int(torch.randint(0, 2**62, ())), 2**32 - 9  # counters cross 2**32
    script = ("import sys, torch, autoenc_fast; "
              "z, _ = torch.ops.autoenc_fast.reparametrize_kl(torch.zeros(3, 1001), torch.zeros(3, 1001), None, "
              f"torch.tensor([{key}, {offset}])); torch.save(z, sys.argv[1])")
    draws = {}
    for name, extra in (("default", {}), ("avx2", {"AUTOENC_FAST_CPU_NO_AVX512": "1"})):
        env = {k: v for k, v in os.environ.items() if k != "AUTOENC_FAST_CPU_NO_AVX512"}
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, env={**env, **extra},
                       timeout=120)
        draws[name] = torch.load(tmp_path / name)
    assert torch.equal(draws["default"], draws["avx2"])
    torch.testing.assert_close(draws["avx2"], philox_normal((3, 1001), key, offset), atol=2e-5, rtol=2e-5)


def test_float64_noise_is_the_float32_noise_widened():
    a = noise_of("cpu", (5, 21), (99, 3), torch.float64)
    b = noise_of("cpu", (5, 21), (99, 3), torch.float32)
    torch.testing.assert_close(a, b.double(), atol=0, rtol=0)


def test_noise_statistics_over_a_million_draws():
    from scipy import stats

    noise = noise_of("cpu", (64, 2**14 + 3), int(torch.randint(0, 2**62, ())))
    flat = noise.double().flatten()
    n = flat.numel()
    assert n >= 1_000_000
    assert abs(flat.mean().item()) < 5 / n**0.5
    assert abs(flat.std().item() - 1) < 5 * (0.5 / n) ** 0.5
    assert stats.kstest(flat.numpy(), "norm").pvalue > 1e-4
    # Neighbours share a Philox call (cos and sin of one angle, two radii): no correlation.
    for lag in (1, 2, 3, 4):
        corr = torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()
        assert abs(corr) < 5 / n**0.5, f"lag {lag}: correlation {corr}"
    rows = noise.double()
    corr_rows = torch.corrcoef(torch.stack([rows[:-1].flatten(), rows[1:].flatten()]))[0, 1].item()
    assert abs(corr_rows) < 5 / n**0.5


@pytest.mark.parametrize("device", devices())
def test_generator_reproduces_and_advances(device):
    mu, logvar, _ = make_inputs((8, 50), torch.float32, device)
    torch.manual_seed(1234)
    first, _ = F.reparametrize_kl(mu, logvar)
    second, _ = F.reparametrize_kl(mu, logvar)
    torch.manual_seed(1234)
    again, _ = F.reparametrize_kl(mu, logvar)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    gen = torch.Generator(device=device).manual_seed(7)
    a, _ = F.reparametrize_kl(mu, logvar, generator=gen)
    b, _ = F.reparametrize_kl(mu, logvar, generator=gen)
    gen.manual_seed(7)
    a_again, _ = F.reparametrize_kl(mu, logvar, generator=gen)
    assert torch.equal(a, a_again) and not torch.equal(a, b)


@pytest.mark.parametrize("device", devices())
def test_explicit_seed_forms_agree(device):
    mu, logvar, _ = make_inputs((3, 11), torch.float32, device)
    by_int, _ = F.reparametrize_kl(mu, logvar, seed=42)
    by_pair, _ = F.reparametrize_kl(mu, logvar, seed=(42, 0))
    by_tensor, _ = F.reparametrize_kl(mu, logvar, seed=torch.tensor([42, 0]))
    by_numpy, _ = F.reparametrize_kl(mu, logvar, seed=np.int64(42))
    by_int32, _ = F.reparametrize_kl(mu, logvar, seed=torch.tensor([42, 0], dtype=torch.int32))
    for other in (by_pair, by_tensor, by_numpy, by_int32):
        assert torch.equal(by_int, other)
    shifted, _ = F.reparametrize_kl(mu, logvar, seed=(42, 1))
    assert not torch.equal(by_int, shifted)


def test_triton_kernels_under_the_interpreter_match_cpu(tmp_path):
    """The Triton kernels, interpreted on the CPU, against the C++ kernel and the reference."""
    cases = {}
    for name, shape, dtype in [("f32", (3, 37), torch.float32), ("f64", (2, 3, 5), torch.float64),
                               ("row1", (5, 1), torch.float32)]:
        mu, logvar, eps = make_inputs(shape, dtype, "cpu")
        seed = torch.tensor([int(torch.randint(0, 2**62, ())), 2**32 - 3])
        cases[name + "_eps"] = dict(mu=mu, logvar=logvar, eps=eps, grad_z=torch.randn_like(mu),
                                    grad_kl=torch.randn(shape[0], dtype=dtype))
        cases[name + "_drawn"] = dict(mu=mu, logvar=logvar, seed=seed, grad_z=torch.randn_like(mu),
                                      grad_kl=torch.randn(shape[0], dtype=dtype))
        cases[name + "_drawn_kl_only"] = dict(mu=mu, logvar=logvar, seed=seed,
                                              grad_kl=torch.randn(shape[0], dtype=dtype))
        cases[name + "_mean"] = dict(mu=mu, logvar=logvar, grad_z=torch.randn_like(mu))
    mu, logvar, _ = make_inputs((2, 5000), torch.float32, "cpu")  # rows split over 3 programs
    cases["split_drawn"] = dict(mu=mu, logvar=logvar, seed=torch.tensor([77, 5]), slices=3,
                                grad_z=torch.randn_like(mu), grad_kl=torch.randn(2))
    torch.save(cases, tmp_path / "cases.in")
    run_under_triton_interpreter("triton_interpret_run.py", tmp_path / "cases.out")
    results = torch.load(tmp_path / "cases.out")
    for name, case in cases.items():
        got = results[name]
        z_cpu, kl_cpu = OP(case["mu"], case["logvar"], case.get("eps"), case.get("seed"))
        dtype = case["mu"].dtype
        tol = dict(atol=3e-5, rtol=3e-5) if dtype == torch.float32 else dict(atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got["z"], z_cpu, **tol, msg=f"{name}: z")
        torch.testing.assert_close(got["kl"], kl_cpu, **tol, msg=f"{name}: kl")
        sources = dict(z=dict(z=z_cpu), eps=dict(eps=case.get("eps")), seed=dict(seed=case.get("seed")))
        compared = 0
        for source, given in sources.items():
            if all(value is not None for value in given.values()):
                grads_cpu = BACKWARD_OP(case.get("grad_z"), case.get("grad_kl"), case["mu"], case["logvar"],
                                        **{"z": None} | given)
                for what, actual, expected in zip(("grad_mu", "grad_logvar"), got["grads_" + source], grads_cpu):
                    torch.testing.assert_close(actual, expected, **tol, msg=f"{name}, from {source}: {what}")
                compared += 1
        assert compared == 1 + ("eps" in case) + ("seed" in case)
    # Our scheme is Triton's randn4x: same normals for the same key and counters.
    ours = philox_normal((1, 256), 1234, 0).flatten()
    torch.testing.assert_close(results["triton_randn4x"], ours, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", "fp64"])
def test_triton_kernels_compile_for_sm90_without_a_gpu(dtype):
    """The kernels as the GPU runs them (PRECISE: libdevice's log/sin/cos, which the
    interpreter cannot run) compile to sm_90 machine code here, with no GPU, for every
    noise mode and dtype."""
    tl = pytest.importorskip("triton.language")
    from autoenc_fast.triton import reparametrize_kl as kernels

    data = f"*{dtype}"
    acc = tl.float64 if dtype == "fp64" else tl.float32
    acc_ptr = "*fp64" if dtype == "fp64" else "*fp32"
    for noise in (0, 1, 2):
        compile_for_sm90(kernels._reparametrize_kl_fwd,
                         {"mu_ptr": data, "logvar_ptr": data, "eps_ptr": data, "seed_ptr": "*i64", "z_ptr": data,
                          "kl_partial_ptr": acc_ptr, "row_len": "i32", "groups_per_row": "i32",
                          "slice_len": "i32", "n_slices": "i32"},
                         {"NOISE": noise, "ACC": acc, "BLOCK": kernels.BLOCK, "PRECISE": True})
    for has_grad_z, has_grad_kl in ((True, True), (True, False), (False, True)):
        for noise in (0, 1, 2, 3):
            compile_for_sm90(kernels._reparametrize_kl_bwd,
                             {"grad_z_ptr": data, "grad_kl_ptr": acc_ptr, "mu_ptr": data, "logvar_ptr": data,
                              "noise_ptr": data, "seed_ptr": "*i64", "grad_mu_ptr": data, "grad_logvar_ptr": data,
                              "row_len": "i32", "groups_per_row": "i32", "slice_len": "i32"},
                             {"HAS_GRAD_Z": has_grad_z, "HAS_GRAD_KL": has_grad_kl, "NOISE": noise, "ACC": acc,
                              "BLOCK": kernels.BLOCK, "PRECISE": True})


@requires_cuda
def test_cpu_and_cuda_draw_the_same_noise():
    for shape in [(4, 37), (3, 5, 6, 7), (2, 10000)]:
        seed = (int(torch.randint(0, 2**62, ())), 5)
        torch.testing.assert_close(noise_of("cuda", shape, seed).cpu(), noise_of("cpu", shape, seed),
                                   atol=1e-5, rtol=1e-5)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(5, 13), (64, 256), (3, 70001)])
def test_cuda_half_types_against_reference(dtype, shape):
    mu, logvar, eps = make_inputs(shape, dtype, "cuda", requires_grad=True)
    z, kl = F.reparametrize_kl(mu, logvar, eps)
    z_ref, kl_ref = reference64(mu, logvar, eps)
    assert kl.dtype == torch.float32
    assert_close_to(z, z_ref, TOLERANCES, dtype)
    assert_close_to(kl, kl_ref, KL_TOLERANCES if dtype == torch.float32 else TOLERANCES, dtype)
    grad_z, grad_kl = torch.randn_like(z), torch.randn_like(kl)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    mu64, lv64 = (t.detach().cpu().double().requires_grad_() for t in (mu, logvar))
    z64, kl64 = R.reparametrize_kl(mu64, lv64, eps.cpu().double())
    torch.autograd.backward((z64, kl64), (grad_z.cpu().double(), grad_kl.cpu().double()))
    loose = dict(atol=5e-2, rtol=5e-2) if dtype != torch.float32 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mu.grad.cpu().double(), mu64.grad, **loose)
    torch.testing.assert_close(logvar.grad.cpu().double(), lv64.grad, **loose)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("uses", ["both", "z_only", "kl_only"])
@pytest.mark.parametrize("noise", ["eps", "drawn"])
def test_gradcheck_float64(uses, noise, device):
    mu, logvar, eps = make_inputs((3, 7), torch.float64, device, requires_grad=True)
    seed = torch.tensor([11, 0], device=device)

    def fn(mu, logvar):
        z, kl = OP(mu, logvar, eps if noise == "eps" else None, None if noise == "eps" else seed)
        return {"both": (z, kl), "z_only": (z,), "kl_only": (kl,)}[uses]

    assert torch.autograd.gradcheck(fn, (mu, logvar))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("uses", ["both", "z_only", "kl_only"])
def test_gradcheck_float64_with_a_given_eps_that_requires_grad(uses, device):
    # dz/deps = sigma: a given eps that requires grad gets its gradient (it came back None
    # before, silently), and gradcheck covers all three inputs.
    mu, logvar, eps = make_inputs((3, 7), torch.float64, device, requires_grad=True)
    eps.requires_grad_(True)

    def fn(mu, logvar, eps):
        z, kl = OP(mu, logvar, eps, None)
        return {"both": (z, kl), "z_only": (z,), "kl_only": (kl,)}[uses]

    assert torch.autograd.gradcheck(fn, (mu, logvar, eps))
    z, _ = OP(mu, logvar, eps, None)
    (grad_eps,) = torch.autograd.grad(z.sum(), eps)
    torch.testing.assert_close(grad_eps, (0.5 * logvar.detach()).exp())


@pytest.mark.parametrize("device", devices())
def test_gradients_match_reference(device):
    mu, logvar, eps = make_inputs((6, 33), torch.float64, device, requires_grad=True)
    z, kl = F.reparametrize_kl(mu, logvar, eps)
    grad_z, grad_kl = torch.randn_like(z), torch.randn_like(kl)
    torch.autograd.backward((z, kl), (grad_z, grad_kl))
    mu_r, lv_r = mu.detach().clone().requires_grad_(), logvar.detach().clone().requires_grad_()
    z_r, kl_r = R.reparametrize_kl(mu_r, lv_r, eps)
    torch.autograd.backward((z_r, kl_r), (grad_z, grad_kl))
    torch.testing.assert_close(mu.grad, mu_r.grad, **TOLERANCES[torch.float64])
    torch.testing.assert_close(logvar.grad, lv_r.grad, **TOLERANCES[torch.float64])


@pytest.mark.parametrize("device", devices())
def test_backward_noise_sources_agree(device):
    # sigma * eps from z - mu, from eps, or re-drawn from the seed: the same gradients as the
    # float64 reference's autograd with the drawn eps, which reaches every element.
    mu, logvar, _ = make_inputs((5, 4099), torch.float64, device)
    key, offset = int(torch.randint(0, 2**62, ())), 2**32 - 3  # counters cross 2**32
    seed = torch.tensor([key, offset], device=device)
    z, _ = OP(mu, logvar, None, seed)
    eps = philox_normal(mu.shape, key, offset).double().to(device)
    grad_z, grad_kl = torch.randn_like(mu), torch.randn(5, dtype=torch.float64, device=device)
    mu_r, lv_r = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    z_r, kl_r = R.reparametrize_kl(mu_r, lv_r, eps)
    expected = torch.autograd.grad((z_r, kl_r), (mu_r, lv_r), (grad_z, grad_kl))
    for given in (dict(z=z), dict(z=None, eps=eps), dict(z=None, seed=seed), dict(z=z, seed=seed)):
        for actual, want in zip(BACKWARD_OP(grad_z, grad_kl, mu, logvar, **given), expected):
            torch.testing.assert_close(actual, want, atol=1e-5, rtol=1e-5)  # noise to float32's rounding
    no_noise = BACKWARD_OP(grad_z, None, mu, logvar, None)  # the forward drew none: z = mu
    assert torch.equal(no_noise[0], grad_z) and not no_noise[1].any()


def test_backward_through_eps_keeps_logvar_gradient_where_z_rounds_away_the_noise():
    # |mu| / sigma = 2e7: in float32 z = mu + sigma * eps keeps almost none of the noise, and
    # z - mu with it; the autograd gives the backward eps itself and matches float64.
    mu = torch.full((4, 64), 1000.0).requires_grad_()
    logvar = torch.full((4, 64), -20.0).requires_grad_()
    eps, grad_z = torch.randn(4, 64), torch.randn(4, 64)
    z, _ = F.reparametrize_kl(mu, logvar, eps)
    (grad_logvar,) = torch.autograd.grad(z, logvar, grad_z)
    expected = 0.5 * grad_z.double() * (0.5 * logvar.detach().double()).exp() * eps.double()
    torch.testing.assert_close(grad_logvar.double(), expected, atol=0, rtol=1e-5)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_types_redraw_the_noise_for_logvar_gradient(dtype):
    # z in bfloat16 keeps 8 bits: z - mu would lose |mu| / sigma times more of sigma * eps
    # (2.5 % of the gradient here); the autograd re-draws eps from the seed instead.
    shape, key, offset = (512, 2304), 1234, 77
    mu = (torch.randn(shape, device="cuda") * 2).to(dtype).requires_grad_()
    logvar = torch.full(shape, -4.0, device="cuda", dtype=dtype).requires_grad_()
    z, _ = F.reparametrize_kl(mu, logvar, seed=(key, offset))
    grad_z = torch.randn_like(z)
    (grad_logvar,) = torch.autograd.grad(z, logvar, grad_z)
    eps = philox_normal(shape, key, offset).double().cuda()
    expected = 0.5 * grad_z.double() * (0.5 * logvar.detach().double()).exp() * eps
    error = ((grad_logvar.double() - expected).norm() / expected.norm()).item()
    assert error < {torch.bfloat16: 6e-3, torch.float16: 1e-3}[dtype], error


@pytest.mark.parametrize("device", devices())
def test_double_backward_raises_naming_the_op(device):
    mu, logvar, eps = make_inputs((3, 5), torch.float64, device, requires_grad=True)
    assert_double_backward_refused(lambda: sum(t.square().sum() for t in F.reparametrize_kl(mu, logvar, eps)),
                                   (mu, logvar), "reparametrize_kl")


# ---------------------------------------------------------------- registration


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    mu, logvar, eps = make_inputs((4, 9), torch.float32, device, requires_grad=True)
    seed = torch.tensor([5, 6], device=device)
    for args in [(mu, logvar, eps, None), (mu, logvar, None, seed), (mu, logvar, None, None)]:
        torch.library.opcheck(OP, args)
    z = torch.randn(4, 9, device=device)
    grad_z, grad_kl = torch.randn(4, 9, device=device), torch.randn(4, device=device)
    for gz, gkl in [(grad_z, grad_kl), (grad_z, None), (None, grad_kl)]:
        torch.library.opcheck(BACKWARD_OP, (gz, gkl, mu.detach(), logvar.detach(), z))
    for noise in [dict(eps=eps.detach()), dict(seed=seed), dict()]:  # the other sources of sigma * eps
        torch.library.opcheck(BACKWARD_OP, (grad_z, grad_kl, mu.detach(), logvar.detach(), None), noise)


def test_compile_fullgraph_aot_eager():
    torch._dynamo.reset()
    mu, logvar, eps = make_inputs((8, 24), torch.float32, "cpu", requires_grad=True)

    def step(mu, logvar, eps):
        z, kl = F.reparametrize_kl(mu, logvar, eps)
        return (z * z).sum() + kl.mean()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(mu, logvar, eps)
    loss.backward()
    grads = (mu.grad.clone(), logvar.grad.clone())
    mu.grad = logvar.grad = None
    step(mu, logvar, eps).backward()
    torch.testing.assert_close(loss, step(mu, logvar, eps))
    torch.testing.assert_close(grads, (mu.grad, logvar.grad))


def test_compile_fullgraph_draws_fresh_noise_and_reproduces_by_seed():
    torch._dynamo.reset()
    mu, logvar, _ = make_inputs((4, 16), torch.float32, "cpu")
    compiled = torch.compile(lambda m, l: F.reparametrize_kl(m, l)[0], backend="aot_eager", fullgraph=True)
    torch.manual_seed(3)
    a, b = compiled(mu, logvar), compiled(mu, logvar)
    torch.manual_seed(3)
    assert torch.equal(a, compiled(mu, logvar)) and not torch.equal(a, b)


def test_compile_inductor_module():
    torch._dynamo.reset()
    module = afnn.Reparametrize().eval()
    mu, logvar, _ = make_inputs((8, 32), torch.float32, "cpu")
    compiled = torch.compile(module, fullgraph=True)
    z, kl = compiled(mu, logvar)
    z_ref, kl_ref = R.Reparametrize().eval()(mu, logvar)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(kl, kl_ref, **KL_TOLERANCES[torch.float32])


# ---------------------------------------------------------------- module


@pytest.mark.parametrize("device", devices())
def test_module_train_eval(device):
    mu, logvar, _ = make_inputs((5, 12), torch.float32, device)
    module = afnn.Reparametrize()
    z_train, kl_train = module(mu, logvar)
    assert not torch.allclose(z_train, mu)
    module.eval()
    z_eval, kl_eval = module(mu, logvar)
    assert torch.equal(z_eval, mu)
    torch.testing.assert_close(kl_eval, kl_train)
    ref = R.Reparametrize().eval()
    torch.testing.assert_close(kl_eval, ref(mu, logvar)[1], **KL_TOLERANCES[torch.float32])
    sampling = afnn.Reparametrize(sample_in_eval=True).eval()
    assert not torch.allclose(sampling(mu, logvar)[0], mu)
    assert "sample_in_eval=True" in repr(sampling)


@pytest.mark.parametrize("device", devices())
def test_module_given_eps_matches_reference_twin(device):
    mu, logvar, eps = make_inputs((6, 10), torch.float64, device)
    z, kl = afnn.Reparametrize()(mu, logvar, eps=eps)
    z_ref, kl_ref = R.Reparametrize()(mu, logvar, eps=eps)
    torch.testing.assert_close(z, mu + (0.5 * logvar).exp() * eps, **TOLERANCES[torch.float64])
    torch.testing.assert_close(z, z_ref, **TOLERANCES[torch.float64])
    torch.testing.assert_close(kl, kl_ref, **TOLERANCES[torch.float64])
    # eval mode does not sample: the given noise is unused and z is mu
    assert torch.equal(afnn.Reparametrize().eval()(mu, logvar, eps=eps)[0], mu)
    assert torch.equal(R.Reparametrize().eval()(mu, logvar, eps=eps)[0], mu)


def test_eval_mode_gradient_has_no_noise_term():
    mu, logvar, _ = make_inputs((3, 8), torch.float64, "cpu", requires_grad=True)
    z, kl = afnn.Reparametrize().eval()(mu, logvar)
    torch.autograd.backward((z, kl), (torch.ones_like(z), torch.ones_like(kl)))
    torch.testing.assert_close(mu.grad, 1 + mu.detach())
    torch.testing.assert_close(logvar.grad, 0.5 * (logvar.detach().exp() - 1))


# ---------------------------------------------------------------- bad input


BAD_INPUTS = [
    ("shape", lambda mu, lv: (mu, lv[:, :-1], None), "logvar.*shape"),
    ("integer", lambda mu, lv: (mu.long(), lv.long(), None), "mu.*floating"),
    ("mixed", lambda mu, lv: (mu, lv.double(), None), "logvar.*dtype"),
    ("zero_dim", lambda mu, lv: (mu[0, 0], lv[0, 0], None), "mu.*at least one dimension"),
    ("eps_shape", lambda mu, lv: (mu, lv, torch.randn(3)), "eps.*shape"),
    ("eps_dtype", lambda mu, lv: (mu, lv, mu.double()), "eps.*dtype"),
    ("device", lambda mu, lv: (mu, lv.to("meta"), None), "logvar.*device"),
]


@pytest.mark.parametrize("name,make,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_the_argument(name, make, message):
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    args = make(mu, logvar)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        F.reparametrize_kl(*args)
    if name != "device":  # the C++ kernel checks too, when called directly
        with pytest.raises(RuntimeError, match=message):
            OP(*args, torch.tensor([1, 2]) if args[2] is None else None)


@pytest.mark.parametrize("seed", [3.5, "abc", True, (1, 2, 3), (1, 2.0), torch.tensor([1.0, 2.0]),
                                  torch.tensor([1, 2, 3])], ids=repr)
def test_bad_python_seed_names_the_argument(seed):
    mu = torch.randn(2, 3)
    with pytest.raises(TypeError, match=r"`seed` must be an int key, a \(key, offset\) pair"):
        F.reparametrize_kl(mu, mu, seed=seed)
    with pytest.raises(TypeError, match=r"`seed` must be an int key, a \(key, offset\) pair"):
        R.reparametrize_kl(mu, mu, seed=seed)


def test_non_tensor_eps_names_it():
    mu = torch.randn(2, 3)
    with pytest.raises(TypeError, match="`eps` must be a tensor of mu's shape; got list"):
        F.reparametrize_kl(mu, mu, mu.tolist())


def test_bad_seed_names_the_argument():
    mu = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="seed.*int64 tensor of two"):
        OP(mu, mu, None, torch.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="seed.*int64 tensor of two"):
        OP(mu, mu, None, torch.tensor([1, 2, 3]))
    # A seed on another device would pick that device's kernel (a meta seed: the fake one,
    # which returned uninitialised CPU tensors).
    with pytest.raises((RuntimeError, ValueError), match="`seed` must be on the CPU or on mu's device cpu; got meta"):
        OP(mu, mu, None, torch.tensor([1, 2], device="meta"))
