"""Where a model training step spends its device time, fused against reference: the
profiler's kernels over a few steps, grouped by what they do (convolutions and matrix
products, our ops, copies and concatenations, other elementwise and reductions,
optimizer), then the largest kernels of each backend. It says where the fused GauGAN
generator gains or loses against the eager reference, which the step's wall clock
alone does not.

    python benchmarks/gpu_model_profile.py [--family gaugan_generator] [--device cuda]
                                           [--size cuda|cpu|quick] [--amp bf16]
                                           [--layout contiguous --layout channels_last] [--json FILE]

Each backend is profiled in each layout asked for (default: both), the model and its
inputs converted with `.to(memory_format=...)`. Why both: cuDNN's tensor-core
convolutions (TF32 in float32, bf16) run natively in channels_last, and the reference
GauGAN already runs its SPADE convolutions channels_last because the one-hot segmap is
(`one_hot(...).permute(0, 3, 1, 2)`), while the fused SPADE runs them in x's layout:
this says how much of a fused-vs-reference difference is layout and not the kernels.
For the GauGAN generator in NCHW a "fused seg-conv" variant also runs the fused SPADE's
convolutions in the segmap's layout (SPADE.conv_layout = "segmap"), as the reference does.

On the CPU (`--device cpu --size quick`) it profiles CPU time instead: a smoke run.
"""
from __future__ import annotations

import argparse
import re

import torch
from torch.profiler import ProfilerActivity, profile

from autoenc_fast.bench import LAYOUTS, MODEL_CONFIGS, make_model_step, write_json
from autoenc_fast.nn import SPADE

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


def profile_step(family: str, provider: str, device: torch.device, size: str, amp: str | None,
                 layout: str = "contiguous", spade_conv_layout: str = "x") -> dict[str, float]:
    """Self time (ms per step) of each kernel (CUDA) or aten op (CPU) over STEPS steps.
    spade_conv_layout sets the fused SPADE modules' conv_layout."""
    step = make_model_step(family, provider, device, size=size, amp=amp, layout=layout)
    for module in step.model.modules():
        if isinstance(module, SPADE):
            module.conv_layout = spade_conv_layout
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
    parser.add_argument("--layout", action="append", choices=list(LAYOUTS),
                        help="profile in this memory format (repeatable; default: both)")
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or device.type
    layouts = list(dict.fromkeys(args.layout or LAYOUTS))
    result = {"family": args.family, "device": str(device), "size": size, "amp": args.amp,
              "torch": torch.__version__}
    # Keys: "fused" / "reference" in the default layout (as before), "<provider> <layout>"
    # otherwise, and "fused seg-conv": the fused SPADE's convolutions in the segmap's layout
    # (channels_last, one-hot) for an NCHW model, as the reference runs them.
    runs = {}
    for layout in layouts:
        suffix = "" if layout == "contiguous" else f" {layout}"
        runs[f"fused{suffix}"] = ("fused", layout, "x")
        if layout == "contiguous" and args.family == "gaugan_generator":
            runs["fused seg-conv"] = ("fused", layout, "segmap")
        runs[f"reference{suffix}"] = ("reference", layout, "x")
    variants = list(runs)
    for variant, (provider, layout, conv_layout) in runs.items():
        result[variant] = profile_step(args.family, provider, device, size, args.amp, layout, conv_layout)
        if args.json:  # after every variant: the GPU check bounds this script in time
            write_json(args.json, result)
    print(f"{args.family} ({size} config{', bf16 autocast' if args.amp else ''}), "
          f"{'device' if device.type == 'cuda' else 'CPU'} ms per step, self time:")
    groups = {v: by_group(result[v]) for v in variants}
    first_reference = next(v for v in variants if v.startswith("reference"))
    names = sorted(set().union(*groups.values()), key=lambda g: -groups[first_reference].get(g, 0))
    width = max(12, *(len(v) + 2 for v in variants))
    print(f"  {'group':<32}" + "".join(f"{v:>{width}}" for v in variants))
    for name in names + ["total"]:
        cells = (sum(groups[v].values()) if name == "total" else groups[v].get(name, 0) for v in variants)
        print(f"  {name:<32}" + "".join(f"{ms:>{width}.3f}" for ms in cells))
    for variant in variants:
        print(f"largest {args.top} of {variant}:")
        for name, ms in sorted(result[variant].items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {ms:9.3f}  [{group_of(name)}] {name[:110]}")


if __name__ == "__main__":
    main()
