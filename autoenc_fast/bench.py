"""Benchmark cases shared by `autoenc-fast bench` and the pytest-benchmark suites.

Every case is one op at one shape, run by three providers — ours (the fused op),
eager (the plain-PyTorch reference) and compiled (torch.compile of the reference) —
in one of three modes: forward, backward (of a recorded forward) or full.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
from torch.utils.benchmark import Timer

PROVIDERS = ("ours", "eager", "compiled")
MODES = ("forward", "backward", "full")

REPARAMETRIZE_KL_SHAPES = [(64, 256), (512, 2304), (4096, 4096)]
REPARAMETRIZE_KL_QUICK_SHAPES = [(64, 256), (512, 2304)]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda asked for, but torch sees no CUDA GPU")
    return torch.device(device)


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn)


def reparametrize_kl_impl(provider: str) -> Callable:
    from . import functional as F
    from . import reference as R

    return {"ours": F.reparametrize_kl, "eager": R.reparametrize_kl,
            "compiled": _compiled(R.reparametrize_kl)}[provider]


def reparametrize_kl_bytes(shape, dtype: torch.dtype, mode: str) -> int:
    """Fewest bytes each mode must move: forward reads mu, logvar and writes z;
    backward reads dz, mu, logvar, z and writes dmu, dlogvar (kl terms are O(B))."""
    numel = 1
    for size in shape:
        numel *= size
    per_mode = {"forward": 3, "backward": 6, "full": 9}[mode]
    return per_mode * numel * torch.finfo(dtype).bits // 8


def make_reparametrize_kl(provider: str, mode: str, shape, device, dtype=torch.float32) -> Callable[[], None]:
    """A no-argument callable running one step; it synchronizes on CUDA."""
    fn = reparametrize_kl_impl(provider)
    mu = torch.randn(shape, device=device, dtype=dtype, requires_grad=mode != "forward")
    logvar = torch.randn(shape, device=device, dtype=dtype, requires_grad=mode != "forward")
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    if mode == "forward":
        def run():
            with torch.no_grad():
                fn(mu, logvar)
            sync()
        return run
    z, kl = fn(mu, logvar)
    grads = (torch.randn_like(z), torch.randn_like(kl))
    # Gradients are reset as optimizer.zero_grad(set_to_none=True) does, so every
    # provider's backward writes fresh .grad tensors instead of accumulating.
    if mode == "backward":
        def run():
            mu.grad = logvar.grad = None
            torch.autograd.backward((z, kl), grads, retain_graph=True)
            sync()
        return run

    def run():
        mu.grad = logvar.grad = None
        out = fn(mu, logvar)
        torch.autograd.backward(out, grads)
        sync()
    return run


def time_median_ms(run: Callable[[], None], min_run_time: float) -> float:
    run()  # warm-up: compilation and first-call costs stay out of the numbers
    return Timer("run()", globals={"run": run}).blocked_autorange(min_run_time=min_run_time).median * 1e3


def copy_gbps(num_bytes: int, device) -> float:
    """Bandwidth of a plain device copy moving the same bytes (read + write)."""
    src = torch.empty(max(num_bytes // 8, 1), dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def run():
        dst.copy_(src)
        sync()
    return 2 * src.numel() * 4 / (time_median_ms(run, 0.2) * 1e-3) / 1e9


def run_benchmarks(device: str = "auto", quick: bool = False, ops=None) -> list[dict]:
    """Median ms of every provider for every case, speedups, and GB/s on CUDA."""
    dev = resolve_device(device)
    rows = []
    if ops and "reparametrize_kl" not in ops:
        return rows
    shapes = REPARAMETRIZE_KL_QUICK_SHAPES if quick else REPARAMETRIZE_KL_SHAPES
    modes = ("full",) if quick else MODES
    min_run_time = 0.1 if quick else 0.5
    for shape in shapes:
        for mode in modes:
            times = {p: time_median_ms(make_reparametrize_kl(p, mode, shape, dev), min_run_time)
                     for p in PROVIDERS}
            row = {"op": "reparametrize_kl", "shape": list(shape), "mode": mode, "device": str(dev),
                   **{f"{p}_ms": times[p] for p in PROVIDERS},
                   "speedup_vs_eager": times["eager"] / times["ours"],
                   "speedup_vs_compiled": times["compiled"] / times["ours"]}
            if dev.type == "cuda":
                moved = reparametrize_kl_bytes(shape, torch.float32, mode)
                row["ours_gbps"] = moved / (times["ours"] * 1e-3) / 1e9
                row["copy_gbps"] = copy_gbps(moved, dev)
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'op':<18}{'shape':<14}{'mode':<10}{'ours ms':>10}{'eager ms':>10}{'compiled ms':>12}" \
             f"{'x eager':>9}{'x compiled':>11}"
    lines = [header]
    for r in rows:
        line = (f"{r['op']:<18}{'x'.join(map(str, r['shape'])):<14}{r['mode']:<10}{r['ours_ms']:>10.3f}"
                f"{r['eager_ms']:>10.3f}{r['compiled_ms']:>12.3f}{r['speedup_vs_eager']:>9.2f}"
                f"{r['speedup_vs_compiled']:>11.2f}")
        if "ours_gbps" in r:
            line += f"  {r['ours_gbps']:.0f} GB/s ({100 * r['ours_gbps'] / r['copy_gbps']:.0f}% of copy)"
        lines.append(line)
    return "\n".join(lines)
