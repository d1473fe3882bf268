#!/usr/bin/env bash
# One entry point for the README's commands and CI; each command sets up what it needs.
#
#   bash scripts/dev.sh main              trains the small VAE on the embedded digits (the main job)
#   bash scripts/dev.sh test              the test suite (CI runs this)
#   bash scripts/dev.sh bench             the pytest-benchmark suites on this machine
#   bash scripts/dev.sh cuda-build-check  build against the CUDA torch and check the CUDA kernels register
#
# Environments live outside the clone and are reused:
#   AUTOENC_FAST_ENV_ROOT (default ~/.cache/autoenc_fast)/venv-cpu   torch $CPU_TORCH (default 2.13.0)
#   AUTOENC_FAST_ENV_ROOT/venv-cuda                                  torch $CUDA_TORCH (default 2.14.1, CUDA 13.0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_ROOT="${AUTOENC_FAST_ENV_ROOT:-$HOME/.cache/autoenc_fast}"
CPU_TORCH="${CPU_TORCH:-2.13.0}"
CUDA_TORCH="${CUDA_TORCH:-2.14.1}"
PYTHON="${PYTHON:-python3}"

say() { printf '\n== %s\n' "$*" >&2; }

# make_venv DIR TORCH_VERSION: a venv holding that torch and the build tools.
make_venv() {
  local dir="$1" torch_version="$2"
  if [ ! -x "$dir/bin/python" ]; then
    say "creating $dir"
    "$PYTHON" -m venv "$dir"
  fi
  if ! "$dir/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
    say "installing torch==$torch_version into $dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "torch==$torch_version"
  fi
  "$dir/bin/pip" install -q --disable-pip-version-check setuptools wheel ninja numpy
}

# The CPU environment with autoenc_fast built in place (editable) and the test extras.
setup_cpu() {
  local venv="$ENV_ROOT/venv-cpu"
  make_venv "$venv" "$CPU_TORCH"
  say "building autoenc_fast against torch $CPU_TORCH"
  (cd "$ROOT" && "$venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation -e ".[test,train]")
  VENV_PY="$venv/bin/python"
}

# The main job: train the small VAE on the embedded digits into a new run folder; it
# prints the fused-vs-reference time of a training step at the end.
cmd_main() {
  setup_cpu
  cd "$ROOT"
  "$VENV_PY" -m autoenc_fast info
  "$VENV_PY" -m autoenc_fast train vae --epochs 40 --out "runs/vae-$(date +%Y%m%d-%H%M%S)" "$@"
}

cmd_test() {
  setup_cpu
  cd "$ROOT"
  "$VENV_PY" -m pytest tests -q "$@"
}

cmd_bench() {
  setup_cpu
  cd "$ROOT"
  "$VENV_PY" -m pytest benchmarks -q "$@"
}

# Compiles the CUDA kernels (nothing CUDA runs without a GPU) in a copy of the tree,
# so the CPU build in the clone stays as it is, and checks that every op has a CUDA kernel.
cmd_cuda_build_check() {
  local venv="$ENV_ROOT/venv-cuda" build
  make_venv "$venv" "$CUDA_TORCH"
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' RETURN
  cp -r "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/csrc" "$ROOT/autoenc_fast" "$build/"
  rm -f "$build"/autoenc_fast/*.so "$build/autoenc_fast/_build_info.json"
  say "building the CUDA extension (TORCH_CUDA_ARCH_LIST=8.0;9.0) with torch $CUDA_TORCH"
  if ! (cd "$build" && CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="8.0;9.0" AUTOENC_FAST_CUDA=1 \
      MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/python" setup.py build_ext --inplace >"$build/build.log" 2>&1); then
    grep -E "error|Error" "$build/build.log" | head -40 >&2 || tail -40 "$build/build.log" >&2
    return 1
  fi
  grep "autoenc_fast setup:" "$build/build.log" >&2 || true
  (cd "$build" && PYTHONPATH="$build" "$venv/bin/python" "$ROOT/scripts/check_cuda_registration.py")
}

command="${1:-}"
shift || true
case "$command" in
  main) cmd_main "$@" ;;
  test) cmd_test "$@" ;;
  bench) cmd_bench "$@" ;;
  cuda-build-check) cmd_cuda_build_check "$@" ;;
  *) echo "usage: bash scripts/dev.sh {main|test|bench|cuda-build-check} [args...]" >&2; exit 2 ;;
esac
