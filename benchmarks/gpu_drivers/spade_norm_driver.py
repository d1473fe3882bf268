"""Small CUDA run of every spade_norm op, forward + backward, for compute-sanitizer:

    compute-sanitizer --tool memcheck  python benchmarks/gpu_drivers/spade_norm_driver.py
    compute-sanitizer --tool racecheck python benchmarks/gpu_drivers/spade_norm_driver.py

Covers batch (train, eval) and instance norm, NCHW and channels_last, float32 and
bfloat16, odd sizes (scalar path) and sizes that take the 16-byte packed path, the
single-process op (in NCHW both its paths, the split kernels and one block per group,
AUTOENC_FAST_SPADE_NORM_FUSED), spade_norm_merged in float32 (gamma_beta's halves read in
place and its gradient written by halves, channels_last included) and the stats/apply pieces
of the synchronized path, and the running statistics the forward updates;
checks each result against the float64 reference and exits non-zero on a mismatch.
"""
from __future__ import annotations

import os
import sys

import torch

import autoenc_fast.functional as AF
import autoenc_fast.reference as R
from autoenc_fast import _ext

SHAPES = [(2, 3, 5, 7), (2, 16, 8, 8), (3, 40, 4, 6)]
TOL = {torch.float32: 1e-3, torch.bfloat16: 1e-1}


def check(name, got, want, tol):
    err = (got.double() - want).abs().max().item() if got.numel() else 0.0
    ok = err <= tol * (1 + want.abs().max().item() if want.numel() else 1)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max abs err {err:.3g}")
    return ok


def run_case(shape, dtype, channels_last, norm, training):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    make = lambda: torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=fmt)  # noqa: E731
    x, gamma, beta, grad = make(), make(), make(), make()
    rm = torch.randn(shape[1], device="cuda") if norm == "batch" else None
    rv = torch.rand(shape[1], device="cuda") + 0.5 if norm == "batch" else None
    kw = dict(norm=norm, training=training, negative_slope=0.2)
    outs, running = [], []
    for fn, cast in ((AF.spade_norm, lambda t: t), (R.spade_norm, lambda t: t.double())):
        leaves = [cast(t).detach().clone().requires_grad_() for t in (x, gamma, beta)]
        stats = {} if rm is None else dict(running_mean=cast(rm).clone(), running_var=cast(rv).clone())
        y = fn(*leaves, **stats, **kw)
        y.backward(cast(grad))
        outs.append([y] + [t.grad for t in leaves])
        running.append(list(stats.values()))
    name = f"{norm}-{'train' if training else 'eval'} {tuple(shape)} {dtype} {'NHWC' if channels_last else 'NCHW'}"
    tol = TOL[dtype]
    ok = all(check(f"{name} {part}", a, b, tol) for part, a, b in zip(("y", "dx", "dgamma", "dbeta"), *outs))
    # the running statistics the op updates in place (update_running_kernel) in training
    ok &= all(check(f"{name} {part}", a, b, tol) for part, a, b in zip(("running_mean", "running_var"), *running))
    if dtype == torch.float32:  # nn.SPADE's path: gamma and beta as one tensor, read and written by halves
        leaves = [x.detach().clone().requires_grad_(),
                  torch.cat([gamma, beta], dim=1).contiguous(memory_format=fmt).requires_grad_()]
        stats = {} if rm is None else dict(running_mean=rm.clone(), running_var=rv.clone())
        y = AF.spade_norm_merged(*leaves, **stats, **kw)
        y.backward(grad)
        merged = [y, leaves[0].grad, *leaves[1].grad.chunk(2, dim=1)]
        ok &= all(check(f"{name} merged {part}", a, b, tol)
                  for part, a, b in zip(("y", "dx", "dgamma", "dbeta"), merged, outs[1]))
    return ok


def run_pieces(shape, dtype, channels_last):
    """The synchronized path's ops (stats, apply) on their own."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=fmt)
    ok = True
    for instance in (False, True):
        mean, var = torch.ops.autoenc_fast.spade_norm_stats(x, instance)
        dims = (2, 3) if instance else (0, 2, 3)
        xd = x.double()
        want_mean = xd.mean(dims)
        ok &= check(f"stats mean instance={instance} {tuple(shape)} {dtype}", mean, want_mean, TOL[dtype])
        ok &= check(f"stats var instance={instance} {tuple(shape)} {dtype}", var,
                    xd.var(dims, unbiased=False), TOL[dtype])
    return ok


def main():
    if not torch.cuda.is_available() or not _ext.has_kernel("spade_norm", "CUDA"):
        print("needs a CUDA GPU and autoenc_fast built with CUDA kernels")
        return 2
    ok = True
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            for shape in SHAPES:
                # NCHW runs both paths of the single-process op; channels_last has one.
                for fused in ("0", "1") if not channels_last else ("0",):
                    os.environ["AUTOENC_FAST_SPADE_NORM_FUSED"] = fused
                    print(f"-- AUTOENC_FAST_SPADE_NORM_FUSED={fused}")
                    for norm, training in (("batch", True), ("batch", False), ("instance", True)):
                        ok &= run_case(shape, dtype, channels_last, norm, training)
                os.environ.pop("AUTOENC_FAST_SPADE_NORM_FUSED")
                ok &= run_pieces(shape, dtype, channels_last)
    torch.cuda.synchronize()
    print("all ok" if ok else "MISMATCHES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
