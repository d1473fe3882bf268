#!/usr/bin/env bash
# The GPU check, for an H100/H200 machine that has torch, triton, pytest, pytest-benchmark
# and ninja but no package registry. Builds for sm_90 only, runs the whole test suite (the
# GPU tests run for real there), compute-sanitizer memcheck (and racecheck for the CUDA C++
# kernels) on a small driver of each kernel, the CUDA benchmarks, and prints a short table
# last. Sized to finish in under 8 minutes. Logs and JSON go to $OUT (default: a temp dir).
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
FAILED=()
step() { printf '\n== %s (t=%ss)\n' "$1" "$SECONDS"; }
run_logged() {  # run_logged NAME LOG CMD...: run, keep the log, record a failure
  local name="$1" log="$2"
  shift 2
  if "$@" >"$log" 2>&1; then echo "$name: ok"; else echo "$name: FAILED (rc=$?)"; FAILED+=("$name"); fi
  tail -n 4 "$log"
}

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda)"

step "build for sm_90"
export TORCH_CUDA_ARCH_LIST="9.0" AUTOENC_FAST_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if ! "$PY" -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  grep -E "error" "$OUT/build.log" | head -30
  tail -n 30 "$OUT/build.log"
  echo "build FAILED"
  exit 1
fi
grep "autoenc_fast setup:" "$OUT/build.log"
"$PY" -m autoenc_fast info | tee "$OUT/info.txt"

step "tests"
run_logged "tests" "$OUT/tests.log" "$PY" -m pytest tests -q -p no:cacheprovider -x

step "compute-sanitizer"
for driver in benchmarks/gpu_drivers/*_driver.py; do
  name="$(basename "$driver" _driver.py)"
  tools="memcheck"
  # racecheck for the hand-written CUDA C++ kernels (shared memory); Triton's reductions are its own.
  if [ -f "csrc/cuda/$name.cu" ]; then tools="memcheck racecheck"; fi
  for tool in $tools; do
    run_logged "sanitizer $tool $name" "$OUT/sanitizer_${tool}_${name}.log" \
      timeout 240 compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" "$driver"
  done
done

step "benchmarks (pytest-benchmark, CUDA, full step)"
run_logged "pytest-benchmark" "$OUT/pytest_benchmark.log" "$PY" -m pytest benchmarks -q -p no:cacheprovider \
  -k "cuda and full" --benchmark-min-rounds=5 --benchmark-max-time=0.2 --benchmark-json="$OUT/pytest_benchmark.json" \
  --benchmark-columns=median,iqr,rounds --benchmark-sort=name

step "benchmarks (autoenc-fast bench, CUDA)"
"$PY" -m autoenc_fast bench --device cuda --json "$OUT/bench.json" | tee "$OUT/bench.txt"

printf '\n== summary (t=%ss): %s\n' "$SECONDS" "$([ ${#FAILED[@]} -eq 0 ] && echo "all passed" || echo "FAILED: ${FAILED[*]}")"
[ ${#FAILED[@]} -eq 0 ]
