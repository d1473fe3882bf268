"""Small CUDA run of every reparametrize_kl kernel path, for compute-sanitizer.

    compute-sanitizer --tool memcheck python benchmarks/gpu_drivers/reparametrize_kl_driver.py
"""
import torch

import autoenc_fast  # noqa: F401
from autoenc_fast import reference as R
from autoenc_fast.reference.reparametrize_kl import reparametrize_kl_math

OP = torch.ops.autoenc_fast.reparametrize_kl
BACKWARD_OP = torch.ops.autoenc_fast.reparametrize_kl_backward


def check(shape, dtype):
    mu = torch.randn(shape, device="cuda", dtype=dtype)
    logvar = torch.randn(shape, device="cuda", dtype=dtype)
    eps = torch.randn(shape, device="cuda", dtype=dtype)
    seed = torch.tensor([12345, 2**32 - 2], device="cuda")
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    for args in [(eps, None), (None, seed), (None, None)]:
        z, kl = OP(mu, logvar, *args)
        eps_ref = args[0] if args[0] is not None else (
            R.philox_normal(shape, 12345, 2**32 - 2).to("cuda") if args[1] is not None else None)
        # eps and seed both None: no noise, z = mu (reparametrize_kl_math's eps=None).
        z_ref, kl_ref = reparametrize_kl_math(mu.float(), logvar.float(), eps_ref)
        torch.testing.assert_close(z.float(), z_ref, atol=tol, rtol=tol)
        torch.testing.assert_close(kl.float(), kl_ref.float(), atol=tol * 10, rtol=tol)
        grad_z, grad_kl = torch.randn_like(z), torch.randn_like(kl)
        # sigma * eps from z - mu (rounded as z is: only run), from eps, or re-drawn from the
        # seed (both against the float32 formula with the reference's noise).
        sources = [dict(z=z), dict(z=None, eps=args[0], seed=args[1])]
        for gz, gkl in [(grad_z, grad_kl), (grad_z, None), (None, grad_kl)]:
            for given in sources:
                grad_mu, grad_logvar = BACKWARD_OP(gz, gkl, mu, logvar, **given)
            sigma_eps = 0 if eps_ref is None else (0.5 * logvar.float()).exp() * eps_ref.float()
            gz32 = 0 if gz is None else gz.float()
            gkl32 = 0 if gkl is None else gkl.float().view(-1, *[1] * (mu.dim() - 1))
            torch.testing.assert_close(grad_mu.float(), gz32 + gkl32 * mu.float() + 0 * mu.float(), atol=tol,
                                       rtol=tol)
            expected = 0.5 * gz32 * sigma_eps + 0.5 * gkl32 * (logvar.float().exp() - 1) + 0 * mu.float()
            torch.testing.assert_close(grad_logvar.float(), expected, atol=tol * 10, rtol=tol)
    torch.cuda.synchronize()


for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    for shape in [(1, 1), (3, 37), (2, 3, 5, 7), (4, 5000), (0, 3), (3, 0)]:
        check(shape, dtype)
print("reparametrize_kl driver OK")
