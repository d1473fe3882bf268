"""Where a model training step spends its device time, fused against reference: the
profiler's kernels over a few steps, grouped by what they do (convolutions and matrix
products, our ops, copies and concatenations, other elementwise and reductions,
optimizer), then the largest kernels of each backend. It says where the fused GauGAN
generator gains or loses against the eager reference, which the step's wall clock
alone does not.

    python benchmarks/gpu_model_profile.py [--family gaugan_generator] [--device cuda]
                                           [--size cuda|cpu|quick] [--amp bf16] [--json FILE]

On the CPU (`--device cpu --size quick`) it profiles CPU time instead: a smoke run.
"""
from __future__ import annotations

import argparse
import json
import re

import torch
from torch.profiler import ProfilerActivity, profile

from autoenc_fast.bench import MODEL_CONFIGS, make_model_step

STEPS = 5
# First match wins: kernel (or, on the CPU, aten op) name -> group.
GROUPS = [
    ("autoenc_fast ops", r"autoenc_fast|_reparametrize_kl_"),  # C++ kernels live in namespace autoenc_fast
    ("optimizer", r"multi_tensor_apply|adam|Adam|foreach|lerp|addcdiv|addcmul"),
    ("convolution / matmul", r"conv|gemm|cudnn|cutlass|sm90_|xmma|implicit|wgrad|dgrad|winograd|mkldnn|addmm|mm\b"),
    ("copy / cat / layout", r"copy|cat|Cat|contiguous|transpose|nchwToNhwc|nhwcToNchw|permute|clone"),
    ("normalization (eager)", r"batch_norm|BatchNorm|welford|bn_|instance_norm"),
    ("interpolate", r"upsample|nearest"),
]


def group_of(name: str) -> str:
    for group, pattern in GROUPS:
        if re.search(pattern, name):
            return group
    return "other elementwise / reductions"


def profile_step(family: str, provider: str, device: torch.device, size: str, amp: str | None) -> dict[str, float]:
    """Self time (ms per step) of each kernel (CUDA) or aten op (CPU) over STEPS steps."""
    step = make_model_step(family, provider, device, size=size, amp=amp)
    for _ in range(3):
        step()
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(STEPS):
            step()
    times = {}
    for event in prof.key_averages():
        if cuda:
            us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        else:
            us = event.self_cpu_time_total if event.key.startswith("aten::") or "autoenc_fast" in event.key else 0
        if us > 0:
            times[event.key] = us / STEPS / 1e3
    return times


def by_group(times: dict[str, float]) -> dict[str, float]:
    groups: dict[str, float] = {}
    for name, ms in times.items():
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + ms
    return groups


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="gaugan_generator", choices=sorted(MODEL_CONFIGS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default=None, help="a MODEL_CONFIGS size (default: the device's)")
    parser.add_argument("--amp", default=None, choices=[None, "bf16"])
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or device.type
    result = {"family": args.family, "device": str(device), "size": size, "amp": args.amp,
              "torch": torch.__version__}
    for provider in ("fused", "reference"):
        times = profile_step(args.family, provider, device, size, args.amp)
        result[provider] = times
    print(f"{args.family} ({size} config{', bf16 autocast' if args.amp else ''}), "
          f"{'device' if device.type == 'cuda' else 'CPU'} ms per step, self time:")
    groups = {p: by_group(result[p]) for p in ("fused", "reference")}
    names = sorted(set(groups["fused"]) | set(groups["reference"]), key=lambda g: -groups["reference"].get(g, 0))
    print(f"  {'group':<32}{'fused':>10}{'reference':>11}")
    for name in names:
        print(f"  {name:<32}{groups['fused'].get(name, 0):>10.3f}{groups['reference'].get(name, 0):>11.3f}")
    print(f"  {'total':<32}{sum(groups['fused'].values()):>10.3f}{sum(groups['reference'].values()):>11.3f}")
    for provider in ("fused", "reference"):
        print(f"largest {args.top} of {provider}:")
        for name, ms in sorted(result[provider].items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {ms:9.3f}  [{group_of(name)}] {name[:110]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
