"""Build of autoenc_fast's compiled extension, ``autoenc_fast._C``.

The schemas, the autograd (csrc/autograd) and the C++ CPU kernels are always built.
The CUDA sources (csrc/cuda/*.cu) are added when torch is a CUDA build and a CUDA
toolkit is found, or when AUTOENC_FAST_CUDA=1; AUTOENC_FAST_CUDA=0 builds the CPU
kernels only. TORCH_CUDA_ARCH_LIST is honoured (torch's BuildExtension reads it).
AUTOENC_FAST_CPU_ARCH=generic leaves out the AVX2 code path for a build meant to run on
another x86 machine.

Build isolation must be off (``pip install --no-build-isolation -e .``): the
extension is compiled against the torch that is already installed, not a fresh one
pip would download into an isolated build environment.
"""
import glob
import json
import os
import platform
import sys

from setuptools import setup

MIN_TORCH = (2, 6)
INSTALL_TORCH_FIRST = ("autoenc_fast compiles against the torch already installed (build isolation is off): "
                       "install torch>={0}.{1} first, e.g. `pip install torch`, then rerun "
                       "`pip install --no-build-isolation -e .`".format(*MIN_TORCH))
try:
    import torch
except ImportError as error:  # a bare traceback from the import is what users met before
    sys.exit(f"autoenc_fast setup: cannot import torch ({error}). {INSTALL_TORCH_FIRST}")


def torch_release(version):
    """(major, minor) of a torch version string such as '2.13.0+cpu' or '2.6.0a0+git1234'."""
    import re

    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


if (torch_release(torch.__version__) or MIN_TORCH) < MIN_TORCH:
    sys.exit(f"autoenc_fast setup: torch {torch.__version__} is too old. {INSTALL_TORCH_FIRST}")

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def log(message):
    print(f"autoenc_fast setup: {message}", file=sys.stderr)


def want_cuda():
    """Return (build CUDA?, why)."""
    choice = os.environ.get("AUTOENC_FAST_CUDA", "").strip()
    if choice == "0":
        return False, "AUTOENC_FAST_CUDA=0"
    if choice == "1":
        return True, "AUTOENC_FAST_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    if CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    toolkit = toolkit_cuda_version(CUDA_HOME)
    if toolkit is not None and toolkit.split(".")[0] != torch.version.cuda.split(".")[0]:
        # torch's BuildExtension refuses a toolkit of another major version; say so up front.
        return False, (f"the CUDA toolkit at {CUDA_HOME} is {toolkit} but torch {torch.__version__} was built "
                       f"with CUDA {torch.version.cuda}: point CUDA_HOME at a CUDA "
                       f"{torch.version.cuda.split('.')[0]}.x toolkit for the CUDA kernels")
    return True, f"torch {torch.__version__} is a CUDA {torch.version.cuda} build and CUDA_HOME={CUDA_HOME}"


def toolkit_cuda_version(cuda_home):
    """'13.0' from `nvcc --version` ("... release 13.0, V13.0.48"), or None."""
    import re
    import subprocess

    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def cpu_supports_avx2():
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return all(f" {flag}" in flags for flag in ("avx2", "fma", "f16c"))


def cpu_flags():
    """-O3, OpenMP for at::parallel_for, and AVX2 for at::vec where the host has it.

    No -std flag: torch's BuildExtension adds the standard its headers need (C++17 up
    to torch 2.9, C++20 from 2.10 on); forcing C++17 breaks the newer headers."""
    flags = ["-O3", "-fopenmp"]
    arch = os.environ.get("AUTOENC_FAST_CPU_ARCH", "auto")
    if arch != "generic" and cpu_supports_avx2():
        # The same macros torch uses for its own AVX2 kernels: at::vec then uses AVX2
        # intrinsics and SLEEF (exported by libtorch_cpu) for exp/log/sin/cos. F16C (every
        # AVX2 CPU has it): with those macros c10::Half converts with its intrinsics.
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
        log("CPU kernels: AVX2 + FMA + F16C (this machine has them; AUTOENC_FAST_CPU_ARCH=generic to disable)")
    else:
        log("CPU kernels: generic x86/ARM code (no AVX2 path)")
    return flags


def cuda_include_dirs():
    """The CUDA torch wheels carry the CUDA headers (cuBLAS, cuSPARSE...) that
    ATen/cuda/CUDAContext.h pulls in; a bare toolkit may lack them."""
    dirs = []
    for site in sys.path:
        dirs += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def write_build_info(with_cuda):
    info = {
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "with_cuda": with_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
    }
    with open(os.path.join(HERE, "autoenc_fast", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=1)


def extensions():
    with_cuda, why = want_cuda()
    # Schemas, autograd (device-independent) and the CPU kernels: every build has them.
    cpu_sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/autograd/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    write_build_info(with_cuda)
    extra = {"cxx": cpu_flags()}
    if not with_cuda:
        log(f"building the CPU kernels only ({why})")
        return [CppExtension("autoenc_fast._C", cpu_sources, extra_compile_args=extra,
                             extra_link_args=["-fopenmp"])]
    log(f"building CPU and CUDA kernels ({why}); "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default: this machine)')}")
    extra["nvcc"] = ["-O3", "-lineinfo"]
    return [CUDAExtension("autoenc_fast._C", cpu_sources + cuda_sources, extra_compile_args=extra,
                          include_dirs=cuda_include_dirs(), extra_link_args=["-fopenmp"],
                          define_macros=[("AUTOENC_FAST_WITH_CUDA", "1")])]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
