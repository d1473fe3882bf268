"""What runs where: versions and the available kernels of every op."""
from __future__ import annotations

import importlib.util
import platform

import torch

from . import _ext

OPS = ("reparametrize_kl", "channelwise_fc", "spade_norm")


def _triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    return triton.__version__


def info() -> dict:
    """Versions, the extension's build and which kernel each op uses per device.

    ``kernels[op]`` maps a device type to "C++ CPU", "CUDA C++", "Triton" or
    "reference" (the plain-PyTorch fallback).
    """
    from .ops import CUDA_BACKENDS

    build = _ext.read_build_info() or {}
    cuda_available = torch.cuda.is_available()
    kernels = {}
    for op in OPS:
        cpu = "C++ CPU" if _ext.has_kernel(op, "CPU") else "reference"
        cuda = CUDA_BACKENDS.get(op, "reference") if _ext.has_kernel(op, "CUDA") else "reference"
        kernels[op] = {"cpu": cpu, "cuda": cuda}
    return {
        "autoenc_fast": __import__("autoenc_fast").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "extension_loaded": _ext.LOADED,
        "extension_status": _ext.STATUS,
        "built_with_cuda": bool(build.get("with_cuda")),
        "built_cuda_arch_list": build.get("cuda_arch_list"),
        "cuda_available": cuda_available,
        "cuda_device": torch.cuda.get_device_name() if cuda_available else None,
        "cpu_threads": torch.get_num_threads(),
        "kernels": kernels,
    }


def format_info(data: dict) -> str:
    lines = [f"{key:>22}: {value}" for key, value in data.items() if key != "kernels"]
    lines.append(f"{'kernels':>22}:")
    for op, where in data["kernels"].items():
        lines.append(f"{op:>22}  cpu: {where['cpu']:<10} cuda: {where['cuda']}")
    return "\n".join(lines)
