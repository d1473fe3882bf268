"""Loading of the compiled extension ``autoenc_fast._C``.

``import autoenc_fast`` never fails because the extension is missing or was built for
another torch: the functional API then falls back to the reference implementations,
and one warning says what is missing and how to rebuild.
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path

import torch

BUILD_INFO_PATH = Path(__file__).with_name("_build_info.json")
REBUILD_HINT = "rebuild with `pip install --no-build-isolation -e .` in the autoenc_fast checkout"


def read_build_info(path: Path = BUILD_INFO_PATH) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_extension(path: Path = BUILD_INFO_PATH) -> tuple[bool, str]:
    """Import autoenc_fast._C if it exists and matches the running torch.

    Returns (loaded, why): why says what was loaded, or what is missing.
    Set AUTOENC_FAST_DISABLE_EXTENSION=1 to run on the references alone.
    """
    if os.environ.get("AUTOENC_FAST_DISABLE_EXTENSION") == "1":
        return False, "AUTOENC_FAST_DISABLE_EXTENSION=1 is set"
    info = read_build_info(path)
    if info is None:
        return False, f"the compiled extension autoenc_fast._C is not built ({path.name} missing)"
    if info.get("torch_version") != torch.__version__:
        return False, (f"autoenc_fast._C was built for torch {info.get('torch_version')} "
                       f"but torch {torch.__version__} is running")
    try:
        importlib.import_module("autoenc_fast._C")
    except ImportError as error:
        return False, f"autoenc_fast._C failed to load: {error}"
    return True, f"autoenc_fast._C built for torch {info['torch_version']}"


def fallback_message(status: str, disabled: bool) -> str:
    """The one warning when the extension is not loaded: why, and the way back to the
    kernels (a rebuild, or, when AUTOENC_FAST_DISABLE_EXTENSION asked for it, unsetting it)."""
    remedy = "unset AUTOENC_FAST_DISABLE_EXTENSION" if disabled else REBUILD_HINT
    return (f"autoenc_fast: {status}; every op falls back to its plain-PyTorch reference (slower). "
            f"To get the fused kernels, {remedy}.")


LOADED, STATUS = load_extension()
if not LOADED:
    warnings.warn(fallback_message(STATUS, os.environ.get("AUTOENC_FAST_DISABLE_EXTENSION") == "1"),
                  RuntimeWarning, stacklevel=2)


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when autoenc_fast::<op> has a kernel registered for the dispatch key."""
    if not LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"autoenc_fast::{op}", dispatch_key)
