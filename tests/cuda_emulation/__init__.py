"""Builds the project's CUDA C++ kernels (csrc/cuda/*.cu) for the CUDA emulator in emu.h, so
that the suite runs their logic on the CPU: the ops register as `autoenc_fast_emu::<name>`
and take CPU tensors.

A .cu file is rewritten into C++ by a few textual rules (below), compiled with
torch.utils.cpp_extension.load (ninja) into build/cuda_emulation, and imported once per
test session. The rewrite is deliberately small: whatever it cannot express fails the
build loudly, and the GPU check stays the judge of the real thing.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD = ROOT / "build" / "cuda_emulation"
KERNEL_FILES = ("channelwise_fc.cu", "spade_norm.cu")
# The kernels' cap on grid.y and grid.z (CUDA's 65535), shrunk so that the grid-stride
# loops behind it (more rows or samples than blocks) run at the tests' small shapes.
EMULATED_MAX_GRID_YZ = 3
_MAX_GRID_YZ = re.compile(r"constexpr int64_t kMaxGridYZ = 65535;")


def split_top_level(text: str) -> list[str]:
    """Splits a launch configuration at the commas outside any parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


# kernel<template args><<<grid, block[, shared[, stream]]>>>(
_LAUNCH = re.compile(r"(?P<kernel>\b[A-Za-z_]\w*(?:<[^;{}<>]*>)?)<<<(?P<config>.*?)>>>\(", re.DOTALL)
_DYNAMIC_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?(?P<type>[\w:\s]+?)\s+(?P<name>\w+)\[\];")


def _launch(match: re.Match) -> str:
    config = split_top_level(match["config"])
    if not 2 <= len(config) <= 4:
        raise ValueError(f"cannot read the launch configuration <<<{match['config']}>>>")
    config += ["0", "c10::cuda::CUDAStream{}"][len(config) - 2:]
    kernel = match["kernel"]
    name = kernel.split("<")[0]
    return (f'::emu::launch("{name}", {", ".join(config)}, '
            f"[](auto... emu_args) {{ {kernel}(emu_args...); }}, ")


def rewrite(source: str) -> str:
    """The .cu source as C++ for emu.h: launches become emu::launch calls, dynamic shared
    memory a pointer into the block's buffer, outputs are allocated poisoned, the
    c10/cuda headers give way to emu.h's stand-ins, and the kernels accept CPU tensors."""
    out = re.sub(r"#include <c10/cuda/[\w.]+>\n", "", source)
    out = _MAX_GRID_YZ.sub(f"constexpr int64_t kMaxGridYZ = {EMULATED_MAX_GRID_YZ};", out)
    # The op's shared headers (argument checks, output allocation) inline, so that their
    # allocations are poisoned too.
    out = re.sub(r'#include "\.\./(\w+_checks\.h)"\n',
                 lambda m: (ROOT / "csrc" / m[1]).read_text().replace("#pragma once\n", ""), out)
    out = _LAUNCH.sub(_launch, out)
    out = _DYNAMIC_SHARED.sub(lambda m: f"{m['type']}* {m['name']} = ::emu::dynamic_shared<{m['type']}>();", out)
    out = out.replace("at::empty(", "::emu::empty_poisoned(")
    out = out.replace(".is_cuda()", ".is_cpu()")
    if "<<<" in out or "__shared__ unsigned" in out:
        raise ValueError("the rewrite left CUDA syntax behind")
    return '#include "emu.h"\n' + out


def sanitizing() -> bool:
    """Whether this process runs under AddressSanitizer (LD_PRELOAD of libasan: the
    emulated kernels are then built with -fsanitize=address,alignment, the CPU side of
    compute-sanitizer's memcheck: a load or store past a tensor's allocation, or a vector
    load from a misaligned address, stops the process)."""
    return "libasan" in os.environ.get("LD_PRELOAD", "")


@functools.lru_cache(maxsize=None)
def load():
    """Compiles (or reuses) the emulated kernels and returns torch.ops.autoenc_fast_emu."""
    from torch.utils.cpp_extension import load as load_extension

    asan = sanitizing()
    build = BUILD / ("asan" if asan else "plain")
    build.mkdir(parents=True, exist_ok=True)
    sources = []
    for name in KERNEL_FILES:
        target = build / (Path(name).stem + "_emulated.cpp")
        source = (ROOT / "csrc" / "cuda" / name).read_text()
        if len(_MAX_GRID_YZ.findall(source)) != 1:
            raise ValueError(f"{name} must declare `constexpr int64_t kMaxGridYZ = 65535;` once")
        text = rewrite(source)
        if not target.exists() or target.read_text() != text:  # ninja rebuilds what changed
            target.write_text(text)
        sources.append(str(target))
    flags = ["-O1", "-fno-strict-aliasing", "-Wno-unknown-pragmas"]
    if asan:
        # And misaligned vector loads, which fault on the GPU and pass silently on the CPU.
        flags += ["-fsanitize=address,alignment", "-fno-sanitize-recover=alignment", "-fno-omit-frame-pointer"]
    load_extension(name="autoenc_fast_cuda_emulated" + ("_asan" if asan else ""), sources=sources,
                   build_directory=str(build), extra_include_paths=[str(HERE), str(ROOT / "csrc" / "cuda")], extra_cflags=flags,
                   extra_ldflags=["-fsanitize=address,alignment"] if asan else [], is_python_module=False,
                   verbose=False)
    return torch.ops.autoenc_fast_emu
