"""Tiny CUDA driver of autoenc_fast::channelwise_fc for compute-sanitizer.

    compute-sanitizer --tool memcheck  python benchmarks/gpu_drivers/channelwise_fc_driver.py
    compute-sanitizer --tool racecheck python benchmarks/gpu_drivers/channelwise_fc_driver.py

Runs forward and backward once per case on small random inputs (every layout, with
and without bias, float32/float16/bfloat16/float64, a map wider than one 64-position
tile, an empty batch) through torch.ops.autoenc_fast and checks them against the
float64 einsum reference, with each variant of the kernel (1, 2 or 4 columns per thread,
4x4 micro-tiles, the paired backward). Exits non-zero on any mismatch.
"""
from __future__ import annotations

import os
import sys

import torch

import autoenc_fast  # noqa: F401  (registers the ops)
from autoenc_fast import reference

TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 6e-2}


def make_x(shape, layout, dtype):
    B, C, H, W = shape
    if layout == "strided":
        return torch.randn(B, 2 * C, H + 1, 2 * W, device="cuda", dtype=dtype)[:, ::2, 1:, ::2]
    x = torch.randn(shape, device="cuda", dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def check(name, actual, expected, dtype):
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    ok = torch.isfinite(actual).all().item() and err <= TOL[dtype] * scale
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max abs err {err:.3e}")
    return ok


def run_case(shape, layout, bias, dtype):
    B, C, H, W = shape
    P = H * W
    x = make_x(shape, layout, dtype)
    weight = (torch.randn(C, P, P, device="cuda") / P**0.5).to(dtype)
    b = torch.randn(C, P, device="cuda", dtype=dtype) if bias else None
    grad_y = make_x(shape, "channels_last" if layout != "channels_last" else "strided", dtype)
    y = torch.ops.autoenc_fast.channelwise_fc(x, weight, b)
    gx, gw, gb = torch.ops.autoenc_fast.channelwise_fc_backward(grad_y, x, weight)
    torch.cuda.synchronize()
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    b64 = (b if bias else torch.zeros(C, P, device="cuda")).double().requires_grad_()
    y64 = reference.channelwise_fc(x64, w64, b64 if bias else None)
    ex, ew, eb = torch.autograd.grad(y64, (x64, w64, b64), grad_y.double(), allow_unused=True)
    eb = grad_y.double().sum(0).reshape(C, P) if eb is None else eb
    tag = f"{shape} {layout} bias={bias} {dtype}"
    return all([check(f"y  {tag}", y, y64.detach(), dtype), check(f"gx {tag}", gx, ex, dtype),
                check(f"gw {tag}", gw, ew, dtype), check(f"gb {tag}", gb, eb, dtype)])


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    torch.manual_seed(0)
    ok = True
    # Every columns-per-thread variant of the kernel and the 4x4 micro-tiles
    # (AUTOENC_FAST_CHANNELWISE_FC_COLS), each with its own launch geometry, under the
    # sanitizer: the default (1) on every case, the variants on fewer (racecheck is slow
    # per launch, and the check has minutes).
    for cols in ("1", "2", "4", "4x4"):
        os.environ["AUTOENC_FAST_CHANNELWISE_FC_COLS"] = cols
        print(f"-- {cols} column(s) per thread")
        shapes = [(3, 4, 6, 6), (5, 3, 4, 4), (2, 2, 3, 5), (70, 2, 9, 9), (0, 2, 4, 4)]
        for shape in shapes if cols == "1" else [shapes[0], shapes[3]]:
            for layout in ["contiguous", "channels_last", "strided"]:
                ok &= run_case(shape, layout, True, torch.float32)
        for dtype in [torch.float16, torch.bfloat16, torch.float64] if cols == "1" else [torch.float64]:
            ok &= run_case((4, 3, 6, 6), "channels_last", False, dtype)
    os.environ.pop("AUTOENC_FAST_CHANNELWISE_FC_COLS")
    # The backward's two products in one launch (AUTOENC_FAST_CHANNELWISE_FC_PAIRED).
    os.environ["AUTOENC_FAST_CHANNELWISE_FC_PAIRED"] = "1"
    print("-- paired backward")
    for shape in [(3, 4, 6, 6), (70, 2, 9, 9)]:
        ok &= run_case(shape, "contiguous", True, torch.float32)
    os.environ.pop("AUTOENC_FAST_CHANNELWISE_FC_PAIRED")
    print("ALL OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
