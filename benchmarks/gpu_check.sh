#!/usr/bin/env bash
# The GPU check, for an H100/H200 machine that has torch, triton, pytest and ninja but no
# package registry. Builds for sm_90 only, runs the CUDA tests (the CPU suite runs in CI),
# compute-sanitizer memcheck on a small driver of every kernel and racecheck on the CUDA
# C++ ones, then the CUDA benchmarks, and prints a short table last. Sized to finish in
# under 8 minutes.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh
#
# $OUT (default: a temporary folder) receives at most eight files, the most the device tool
# brings back: the benchmarks' JSON files, the short table (summary.txt), the whole console
# output (check.txt) and every log in one archive (logs.tar.gz).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
LOGS="$(mktemp -d)"
PY="${PYTHON:-python3}"
FAILED=()
step() { printf '\n== %s (t=%ss)\n' "$1" "$SECONDS"; }
INCOMPLETE=()
run_logged() {  # run_logged NAME LOG CMD...: run, keep the log, record a failure (or a timeout)
  local name="$1" log="$2" rc=0
  shift 2
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    echo "$name: ok"
  elif [ "$rc" -eq 124 ] && ! grep -qE '^(=+ (Invalid|Race|Error)|FAIL)' "$log"; then
    # `timeout` stopped it before the end: nothing failed in what ran; the rest is unchecked
    echo "$name: stopped at its time limit (incomplete, no failure seen)"
    INCOMPLETE+=("$name")
  else
    echo "$name: FAILED (rc=$rc)"
    FAILED+=("$name")
  fi
  tail -n 6 "$log"
}
sanitizer_refused() {  # on gVisor machines compute-sanitizer refuses the device: not our kernels' fault
  if grep -q "Device not supported" "$1"; then
    echo "compute-sanitizer: the device was refused on this machine (not a kernel failure; not checked)"
    if [ ${#FAILED[@]} -gt 0 ]; then unset 'FAILED[-1]'; fi  # the memcheck run just recorded
    return 0
  fi
  return 1
}

check() {
  step "machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda)"

  step "build for sm_90"
  export TORCH_CUDA_ARCH_LIST="9.0" AUTOENC_FAST_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
  if ! "$PY" -m pip install -q --no-build-isolation --no-deps -e . >"$LOGS/build.log" 2>&1; then
    grep -E "error" "$LOGS/build.log" | head -30
    tail -n 30 "$LOGS/build.log"
    echo "build FAILED"
    return 1
  fi
  grep "autoenc_fast setup:" "$LOGS/build.log"
  "$PY" -m autoenc_fast info | tee "$LOGS/info.txt"

  step "compute-sanitizer"
  # One process per tool with every driver in it: starting torch under the sanitizer is the slow part.
  drivers=(benchmarks/gpu_drivers/*_driver.py)
  compiled=()
  for driver in "${drivers[@]}"; do
    name="$(basename "$driver" _driver.py)"
    if [ -f "csrc/cuda/$name.cu" ]; then compiled+=("$driver"); fi
  done
  # Bounded, so the measurements after them keep their time inside the 8 minutes.
  run_logged "memcheck (${#drivers[@]} drivers)" "$LOGS/sanitizer_memcheck.log" \
    timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" benchmarks/gpu_drivers/run_all.py "${drivers[@]}"
  if sanitizer_refused "$LOGS/sanitizer_memcheck.log"; then
    echo "racecheck skipped: the sanitizer cannot run here"
  elif [ ${#compiled[@]} -gt 0 ]; then
    run_logged "racecheck (${#compiled[@]} CUDA C++ drivers)" "$LOGS/sanitizer_racecheck.log" \
      timeout 80 compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" benchmarks/gpu_drivers/run_all.py "${compiled[@]}"
  fi

  step "tests (the CUDA ones)"
  run_logged "tests" "$LOGS/tests.log" "$PY" -m pytest tests -q -p no:cacheprovider -k "cuda or gpu" -rfE

  step "device time per step (profiler), every op"
  # Bounded too; its JSON is rewritten after every row, so a cut keeps what was measured.
  timeout 180 "$PY" benchmarks/gpu_kernel_times.py --json "$OUT/kernel_times.json" 2>&1 | grep -v -i warn \
    | tee "$LOGS/kernel_times.txt" || echo "device times: stopped at t=${SECONDS}s (time budget)"

  # Where the GauGAN generator step's device time goes, fused against reference, each with the
  # model in NCHW and in channels_last (issue 5's target is missed on the H200 at 0.88x eager
  # and the wall clock alone does not say why; the reference runs its SPADE convolutions
  # channels_last, following the one-hot segmap, the fused SPADE in x's layout; the "fused
  # seg-conv" row runs them as the reference does, SPADE.conv_layout = "segmap"). No
  # compilation: seconds. It runs before the benchmarks, which may be cut for time.
  step "GauGAN generator step: device time by kernel group, fused vs reference, NCHW and channels_last"
  timeout 150 "$PY" benchmarks/gpu_model_profile.py --json "$OUT/gaugan_profile.json" 2>&1 | grep -v -i warn \
    | tee "$LOGS/gaugan_profile.txt" || echo "GauGAN profile: stopped at t=${SECONDS}s"

  step "benchmarks (autoenc-fast bench, CUDA: ops forward + backward, model training steps)"
  # Bounded so the check ends inside its 8 minutes (issue 2) whatever came before.
  timeout $((SECONDS < 460 ? 470 - SECONDS : 10)) "$PY" -m autoenc_fast bench --device cuda --json "$OUT/bench.json" 2>&1 \
    | tee "$LOGS/bench.txt" || echo "benchmarks: stopped at t=${SECONDS}s (time budget)"

  # The model steps under bfloat16 autocast compile every model once more: run them only while
  # the check is well inside its 8 minutes, and never past 7.5.
  if [ "$SECONDS" -lt 330 ]; then
    step "model training steps under bfloat16 autocast (autoenc-fast bench --amp bf16)"
    every_model=$("$PY" -c 'from autoenc_fast.bench import MODEL_CONFIGS; print(*(f"--model {f}" for f in MODEL_CONFIGS))')
    # shellcheck disable=SC2086  # one word per flag and family name
    timeout $((450 - SECONDS)) "$PY" -m autoenc_fast bench --device cuda $every_model --amp bf16 \
      --json "$OUT/bench_bf16.json" 2>&1 | tee "$LOGS/bench_bf16.txt" \
      || echo "bf16 model steps: stopped at t=${SECONDS}s (time budget)"
  else
    echo "bf16 model steps skipped: t=${SECONDS}s, over the time budget for them"
  fi

  step "short table (benchmarks/gpu_summary.py, from the JSON files above)"
  "$PY" benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.txt" || echo "short table: FAILED"

  if [ ${#INCOMPLETE[@]} -gt 0 ]; then echo "stopped at their time limits: ${INCOMPLETE[*]}"; fi
  printf '\n== summary (t=%ss): %s\n' "$SECONDS" "$([ ${#FAILED[@]} -eq 0 ] && echo "all passed" || echo "FAILED: ${FAILED[*]}")"
  [ ${#FAILED[@]} -eq 0 ]
}

check 2>&1 | tee "$OUT/check.txt"
status=${PIPESTATUS[0]}
rm -f "$OUT"/*.tmp  # a JSON file being rewritten when its step hit its time limit
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
exit "$status"
