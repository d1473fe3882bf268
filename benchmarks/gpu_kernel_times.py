"""Device time of one forward + backward step of every op, per provider, from the
profiler's kernel records: what the GPU spends, without the CPU's launch overhead
that dominates wall-clock medians at these sizes. GB/s counts the fewest bytes the
step must move (bench.py) over that device time. spade_norm rows also time the Triton
candidate kernels (autoenc_fast/triton/spade_norm.py, two-kernel and fused passes)
against the CUDA C++ ones, and a step whose gamma and beta are the two halves of one
tensor, as nn.SPADE makes them, through spade_norm (autograd concatenates their
gradients) and through spade_norm_merged; channelwise_fc rows also torch.bmm on a permuted copy, every
provider in bfloat16. Our kernels' variants that an environment variable selects are
timed beside the default (ENV_VARIANTS): channelwise_fc with 2 and 4 columns per thread,
with 4x4 micro-tiles, and with the backward's two products in one launch; spade_norm with
the split kernels and with one block per group.

    python benchmarks/gpu_kernel_times.py [--json FILE]
    python benchmarks/gpu_kernel_times.py --device cpu --quick   # smoke run (the test suite's)
"""
import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from autoenc_fast.bench import PROVIDERS, _cases, copy_gbps, write_json

STEPS = 10


def device_ms(run, device: torch.device) -> float:
    """Kernel time per call of run (ms): CUDA kernels on a GPU; on the CPU, a smoke run,
    the self time of the aten and autoenc_fast ops."""
    cuda = device.type == "cuda"
    for _ in range(3):
        run()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(STEPS):
            run()
    total_us = 0.0
    for event in prof.key_averages():
        if cuda:
            total_us += getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        elif event.key.startswith("aten::") or "autoenc_fast" in event.key:
            total_us += event.self_cpu_time_total
    return total_us / STEPS / 1e3


def triton_spade_norm_full(shape, device, fused=False):
    """A full step of the Triton candidate SPADE kernels (autoenc_fast.triton.spade_norm; fused:
    one program per group for both passes), batch statistics and slope 0.2 as the bench's
    spade_norm case (which also updates the running statistics, a few C-element ops), to
    choose between them and the CUDA C++ ones."""
    from autoenc_fast.triton.spade_norm import SpadeNormTriton

    x, gamma, beta = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
    grad_y = torch.randn(shape, device=device)

    def run():
        for t in (x, gamma, beta):
            t.grad = None
        torch.autograd.backward(SpadeNormTriton.apply(x, gamma, beta, False, 1e-5, 0.2, fused), grad_y)
    return run


def spade_norm_halves_full(shape, device, merged: bool):
    """A full step with gamma and beta the two channel halves of one (N, 2C, H, W) leaf, as
    nn.SPADE's merged convolution makes them: spade_norm on its two views (autograd then
    concatenates their gradients) or spade_norm_merged (the op returns the gradient whole).
    Batch statistics and slope 0.2, as the bench's case."""
    from autoenc_fast.functional import spade_norm, spade_norm_merged

    N, C, H, W = shape
    x = torch.randn(shape, device=device, requires_grad=True)
    gamma_beta = torch.randn(N, 2 * C, H, W, device=device, requires_grad=True)
    grad_y = torch.randn(shape, device=device)

    def run():
        x.grad = gamma_beta.grad = None
        y = (spade_norm_merged(x, gamma_beta, negative_slope=0.2) if merged
             else spade_norm(x, *gamma_beta.chunk(2, dim=1), negative_slope=0.2))
        y.backward(grad_y)
    return run


# Variants of our CUDA kernels, each selected by environment variables the kernels read
# per call: op -> {name: {variable: value}}.
ENV_VARIANTS = {
    "channelwise_fc": {"cols2": {"AUTOENC_FAST_CHANNELWISE_FC_COLS": "2"},
                       "cols4": {"AUTOENC_FAST_CHANNELWISE_FC_COLS": "4"},
                       "micro4x4": {"AUTOENC_FAST_CHANNELWISE_FC_COLS": "4x4"},
                       "paired": {"AUTOENC_FAST_CHANNELWISE_FC_PAIRED": "1"},
                       "paired_micro4x4": {"AUTOENC_FAST_CHANNELWISE_FC_PAIRED": "1",
                                           "AUTOENC_FAST_CHANNELWISE_FC_COLS": "4x4"}},
    "spade_norm": {"split": {"AUTOENC_FAST_SPADE_NORM_FUSED": "0"},
                   "per_group": {"AUTOENC_FAST_SPADE_NORM_FUSED": "1"}},
}


def env_variants(row: dict, prefix: str, op: str, make, shape, device, *dtype) -> str:
    """Our full step under each of the op's ENV_VARIANTS, recorded in row as
    "<prefix>ours_<name>_device_ms"; returns the line's text for them. (On the CPU the
    variables change nothing: the smoke run's check of this code.)"""
    text = ""
    for name, variables in ENV_VARIANTS.get(op, {}).items():
        os.environ.update(variables)
        try:
            ms = device_ms(make("ours", "full", shape, device, *dtype), device)
        finally:
            for variable in variables:
                del os.environ[variable]
        row[f"{prefix}ours_{name}_device_ms"] = ms
        text += f"  ours/{name} {ms:.4f} ms"
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--device", default="cuda", help="cuda; cpu is a smoke run of this script")
    parser.add_argument("--quick", action="store_true", help="the bench's small shapes (smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    # channelwise_fc's second dtype: bfloat16 on CUDA (issue 3); the CPU kernels have
    # float64 instead, which keeps the smoke run on the same code path.
    second = torch.bfloat16 if device.type == "cuda" else torch.float64
    second_name = str(second).split(".")[-1]
    rows = []
    print(f"{'op':<18}{'shape':<16}" + "".join(f"{p + ' ms':>13}" for p in PROVIDERS) + f"{'ours GB/s':>11}{'copy GB/s':>11}")
    for op, shape, make, moved in _cases(device, quick=args.quick):
        times = {p: device_ms(make(p, "full", shape, device), device) for p in PROVIDERS}
        row = {"op": op, "shape": list(shape), **{f"{p}_device_ms": t for p, t in times.items()}}
        line = f"{op:<18}{'x'.join(map(str, shape)):<16}" + "".join(f"{times[p]:>13.4f}" for p in PROVIDERS)
        if moved and device.type == "cuda":
            row["ours_gbps"] = moved / (times["ours"] * 1e-3) / 1e9
            row["copy_gbps"] = copy_gbps(moved, device)
            line += f"{row['ours_gbps']:>11.0f}{row['copy_gbps']:>11.0f}"
        line += env_variants(row, "", op, make, shape, device)
        if op == "channelwise_fc":  # issue 3's other baseline, its bfloat16 case, the kernel's variants
            row["bmm_device_ms"] = device_ms(make("bmm", "full", shape, device), device)
            line += f"  bmm {row['bmm_device_ms']:.4f} ms"
            other = {p: device_ms(make(p, "full", shape, device, second), device) for p in (*PROVIDERS, "bmm")}
            row.update({f"{second_name}_{p}_device_ms": t for p, t in other.items()})
            line += "\n" + f"{'  ' + second_name:<34}" + "".join(f"{other[p]:>13.4f}" for p in PROVIDERS) \
                + f"  bmm {other['bmm']:.4f} ms" + env_variants(row, f"{second_name}_", op, make, shape, device, second)
        if op == "spade_norm":  # gamma and beta as halves of one tensor: two views, or spade_norm_merged
            for name, merged in (("halves", False), ("merged", True)):
                row[f"{name}_device_ms"] = device_ms(spade_norm_halves_full(shape, device, merged), device)
            line += f"  halves {row['halves_device_ms']:.4f} ms, merged {row['merged_device_ms']:.4f} ms"
        if op == "spade_norm" and device.type == "cuda":  # CUDA C++ (ours) against the Triton candidate
            row["triton_device_ms"] = device_ms(triton_spade_norm_full(shape, device), device)
            row["triton_fused_device_ms"] = device_ms(triton_spade_norm_full(shape, device, fused=True), device)
            line += (f"  triton {row['triton_device_ms']:.4f} ms ({row['triton_device_ms'] / times['ours']:.2f}x ours),"
                     f" fused {row['triton_fused_device_ms']:.4f} ms")
        rows.append(row)
        print(line, flush=True)
        if args.json:  # after every row: the GPU check bounds this script in time
            write_json(args.json, rows)


if __name__ == "__main__":
    main()
