"""The package imports and tells the truth with or without its compiled extension."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import autoenc_fast
from autoenc_fast import _ext


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120, check=True)


def test_extension_is_built_and_registers_cpu_kernels():
    """CI builds the extension: the suite must not pass silently on the fallback."""
    assert _ext.LOADED, _ext.STATUS
    info = autoenc_fast.info()
    assert info["kernels"]["reparametrize_kl"]["cpu"] == "C++ CPU"
    assert info["torch"] == torch.__version__


def test_extension_for_another_torch_is_not_loaded(tmp_path):
    path = tmp_path / "_build_info.json"
    path.write_text(json.dumps({"torch_version": "1.0.0", "with_cuda": False}))
    loaded, why = _ext.load_extension(path)
    assert not loaded and "built for torch 1.0.0" in why and torch.__version__ in why
    loaded, why = _ext.load_extension(tmp_path / "missing.json")
    assert not loaded and "not built" in why


def test_missing_extension_falls_back_to_reference_with_one_warning():
    code = """
import warnings, torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import autoenc_fast
    from autoenc_fast import functional as F
    mu, lv = torch.randn(3, 10), torch.randn(3, 10)
    z, kl = F.reparametrize_kl(mu, lv, seed=(5, 0))
    F.reparametrize_kl(mu, lv)
    x = torch.randn(2, 3, 4, 4)
    assert F.channelwise_fc(x, torch.randn(3, 16, 16)).shape == x.shape
    assert F.spade_norm(x, torch.randn_like(x), torch.randn_like(x), negative_slope=0.2).shape == x.shape
ours = [w for w in caught if "autoenc_fast" in str(w.message)]
assert len(ours) == 1, [str(w.message) for w in caught]
assert "To get the fused kernels, unset AUTOENC_FAST_DISABLE_EXTENSION." in str(ours[0].message)
print(autoenc_fast.info()["kernels"]["reparametrize_kl"])
torch.save((mu, lv, z, kl), "fallback.pt")
"""
    result = run_python(code, AUTOENC_FAST_DISABLE_EXTENSION="1")
    assert "'cpu': 'reference'" in result.stdout
    mu, lv, z, kl = torch.load("fallback.pt")
    os.remove("fallback.pt")
    # The fallback draws the kernels' Philox noise: same z for the same seed.
    z_kernel, kl_kernel = autoenc_fast.functional.reparametrize_kl(mu, lv, seed=(5, 0))
    torch.testing.assert_close(z, z_kernel, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kl, kl_kernel, atol=1e-4, rtol=1e-4)


def test_fallback_warning_says_how_to_get_the_kernels_back():
    from autoenc_fast._ext import fallback_message

    missing = fallback_message("the compiled extension autoenc_fast._C is not built", disabled=False)
    assert "is not built; every op falls back" in missing
    assert "rebuild with `pip install --no-build-isolation -e .`" in missing
    disabled = fallback_message("AUTOENC_FAST_DISABLE_EXTENSION=1 is set", disabled=True)
    assert "unset AUTOENC_FAST_DISABLE_EXTENSION" in disabled and "pip install" not in disabled


def test_info_command_prints_versions_and_kernels():
    result = subprocess.run([sys.executable, "-m", "autoenc_fast", "info"], capture_output=True,
                            text=True, timeout=120, check=True)
    assert torch.__version__ in result.stdout
    assert "reparametrize_kl" in result.stdout and "C++ CPU" in result.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "autoenc_fast", "info", "--json"],
                                     capture_output=True, text=True, timeout=120, check=True).stdout)
    assert data["extension_loaded"] is True


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a source distribution needs beyond the Python package to build and to run the README's commands.
SDIST_TREES = ("csrc", "tests", "benchmarks", "scripts")


def _source_files(tree: str) -> set[str]:
    found = set()
    for root, dirs, files in os.walk(os.path.join(REPO, tree)):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        found.update(os.path.relpath(os.path.join(root, f), REPO) for f in files
                     if not f.endswith((".pyc", ".so")))
    return found


def test_sdist_holds_every_source_and_header(tmp_path):
    # Built from a copy, so the test does not rewrite this checkout's _build_info.json.
    import shutil
    import tarfile

    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("build", "dist", "*.so", "__pycache__", ".benchmarks", ".hypothesis",
                                    "*.egg-info", "_build_info.json")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        if os.path.exists(os.path.join(REPO, name)):
            shutil.copy(os.path.join(REPO, name), src / name)
    for name in (".ci", "autoenc_fast", *SDIST_TREES):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=ignore)
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=src,
                          capture_output=True, text=True, env={**os.environ, "AUTOENC_FAST_CUDA": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (archive,) = (tmp_path / "dist").iterdir()
    with tarfile.open(archive) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    expected = set().union(*(_source_files(tree) for tree in SDIST_TREES)) | {".ci/run", "MANIFEST.in"}
    missing = sorted(expected - members)
    assert not missing, f"the sdist lacks {missing}"
    assert any(m.endswith(".h") for m in members) and any(m.endswith(".cu") for m in members)


def run_setup_with_fake_torch(tmp_path, torch_source: str) -> subprocess.CompletedProcess:
    """`python setup.py --name` with a stand-in `torch` package first on the path."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(torch_source)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120)


def test_setup_without_torch_says_to_install_it_first(tmp_path):
    proc = run_setup_with_fake_torch(tmp_path, "raise ImportError(\"No module named 'torch'\")\n")
    assert proc.returncode != 0
    assert "cannot import torch" in proc.stderr and "install torch>=2.6 first" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_setup_refuses_a_torch_older_than_2_6(tmp_path):
    proc = run_setup_with_fake_torch(tmp_path, "__version__ = '2.5.1+cpu'\n")
    assert proc.returncode != 0
    assert "torch 2.5.1+cpu is too old" in proc.stderr and "Traceback" not in proc.stderr


def _autoenc_fast_ops_run(fn) -> set:
    """The autoenc_fast ops a call dispatches (by the profiler's record of them)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("autoenc_fast::")}


def test_a_device_without_a_kernel_in_this_build_runs_the_reference(monkeypatch):
    """A build without CUDA kernels used on CUDA tensors (or tensors on MPS/XPU) failed in the
    dispatcher ("Could not run ... with arguments from the 'CUDA' backend") while info()
    said "reference". Simulated here by hiding the CPU kernels from the functional API."""
    from autoenc_fast import functional as AF
    from autoenc_fast import reference as R

    x, gamma, beta = (torch.randn(2, 3, 4, 4, dtype=torch.float64) for _ in range(3))
    w = torch.randn(3, 16, 16, dtype=torch.float64)
    mu, logvar, eps = (torch.randn(4, 5, dtype=torch.float64) for _ in range(3))
    calls = {
        "channelwise_fc": (lambda: AF.channelwise_fc(x, w), lambda: R.channelwise_fc(x, w, None)),
        "spade_norm": (lambda: AF.spade_norm(x, gamma, beta), lambda: R.spade_norm(x, gamma, beta)),
        "spade_norm_merged": (lambda: AF.spade_norm_merged(x, torch.cat([gamma, beta], 1)),
                              lambda: R.spade_norm(x, gamma, beta)),
        "reparametrize_kl": (lambda: AF.reparametrize_kl(mu, logvar, eps)[1],
                             lambda: R.reparametrize_kl(mu, logvar, eps)[1]),
    }
    assert _autoenc_fast_ops_run(calls["channelwise_fc"][0])  # the kernels run when present
    for op, (ours, reference) in calls.items():
        monkeypatch.setitem(AF._HAS_KERNEL, (op, "cpu"), False)
        monkeypatch.setattr(AF, "_WARNED_NO_KERNEL", set())
        with pytest.warns(UserWarning, match=f"no CPU kernel for {op}; cpu tensors run its plain-PyTorch reference"):
            assert not _autoenc_fast_ops_run(ours)
        torch.testing.assert_close(ours(), reference())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per op and device
            ours()


def test_without_triton_no_cuda_kernel_is_claimed_for_reparametrize_kl():
    """The Triton kernels registered for CUDA even where triton cannot be imported (it is a
    dependency on Linux only): CUDA tensors then failed at the first call."""
    code = """
import sys
sys.modules["triton"] = None  # as if triton were not installed
import autoenc_fast
from autoenc_fast import _ext
print(_ext.has_kernel("reparametrize_kl", "CUDA"), autoenc_fast.info()["kernels"]["reparametrize_kl"]["cuda"])
"""
    assert run_python(code).stdout.split() == ["False", "reference"]
    assert _ext.has_kernel("reparametrize_kl", "CUDA")  # here triton is installed
