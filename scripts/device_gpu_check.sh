#!/usr/bin/env bash
# One call on the lent GPU machine: what the machine is, the build (scripts/device_build.sh), the CUDA kernel
# tests (+ CPU kernel tests and the Python op-loading check), compute-sanitizer memcheck/racecheck on the CUDA
# tests, the GPU BitLinear benchmark and an Nsight Compute speed-of-light pass over the quantizer kernels.
# Every log goes to OUT_DIR: probe, summary, build, test, memcheck, racecheck, bench, ncu (8 files at most, for
# the device tool).
#   scripts/device_gpu_check.sh OUT_DIR [bench args...]        e.g. scripts/device_gpu_check.sh "$OUT"
# From the development machine: scripts/device_fetch_debs.sh once, then the device tool's run with carry [".deb"]
# and the command `bash scripts/device_gpu_check.sh $OUT` (about 3 minutes on the H100 machine, cold start aside).
# Falls back to -DBITFORGE_KERNELS_ONLY=ON (tests only, no benchmark) when the full configure/build fails.
set -uo pipefail
cd "$(dirname "$0")/.."
out="$(mkdir -p "${1:?OUT_DIR}" && cd "$1" && pwd)"
shift
build=build-device
jobs="$(nproc)"
log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$out/summary.txt"; }

{
  echo "== os"; cat /etc/os-release; uname -a; nproc; free -g
  echo "== gpu"; nvidia-smi
  echo "== tools"; for t in python3 nvcc compute-sanitizer cuobjdump cmake ninja pkg-config dpkg g++; do
    echo "$t: $(command -v $t || echo missing)"; done
  ls /usr/local/cuda/bin 2>/dev/null | tr '\n' ' '; echo
  python3 -c 'import torch;print("torch", torch.__version__, torch.version.cuda, torch.utils.cmake_prefix_path, torch.cuda.is_available())'
  nvcc --version || /usr/local/cuda/bin/nvcc --version; cmake --version | head -1; g++ --version | head -1
} >"$out/probe.txt" 2>&1
log "probe done: $(grep -m1 PRETTY_NAME "$out/probe.txt"); $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"

tests=(bitforge_kernels test_kernels_bitlinear_cuda test_kernels_bitlinear_ops)
kernels_only=0
if ! timeout 330 bash scripts/device_build.sh "$build" "${tests[@]}" >"$out/build.log" 2>&1; then
  log "full configure/build FAILED (tail of build.log below); retrying with BITFORGE_KERNELS_ONLY=ON"
  tail -25 "$out/build.log" | tee -a "$out/summary.txt"
  build=build-device-kernels
  kernels_only=1
  BITFORGE_KERNELS_ONLY=1 timeout 300 bash scripts/device_build.sh "$build" "${tests[@]}" >>"$out/build.log" 2>&1 ||
    { log "kernels-only build FAILED too"; tail -25 "$out/build.log" | tee -a "$out/summary.txt"; exit 1; }
fi
log "built ${tests[*]} in $build"

bench_pid=""
if [ "$kernels_only" = 0 ]; then  # the benchmark's ~30 trainer/data/export files compile while the tests run
  (nice cmake --build "$build" -j "$jobs" --target bench_bitlinear >/tmp/bitforge_build_bench.log 2>&1
   rc=$?; echo "== bench_bitlinear (rc=$rc)" >>"$out/build.log"; cat /tmp/bitforge_build_bench.log >>"$out/build.log"
   echo $rc >/tmp/bitforge_bench_rc) &
  bench_pid=$!
fi

# shellcheck disable=SC1090
source "$build/device_env.sh"
export BITFORGE_SOURCE_DIR="$PWD" BITFORGE_BINARY_DIR="$PWD/$build" BITFORGE_PYTHON="$(command -v python3)"
{
  timeout 180 "$build/tests/test_kernels_bitlinear_cuda" --gtest_color=no; echo "test_kernels_bitlinear_cuda rc=$?"
  timeout 180 "$build/tests/test_kernels_bitlinear_ops" --gtest_color=no --gtest_brief=1; echo "test_kernels_bitlinear_ops rc=$?"
  timeout 60 python3 tests/python/test_ops_load.py
  rc=$?
  echo "py_test_ops_load rc=$rc"
  if [ "$rc" != 0 ]; then  # where it fails: Python traceback, native backtrace, without the carried libraries
    echo "== faulthandler"; timeout 60 python3 -X faulthandler tests/python/test_ops_load.py
    echo "== without LD_LIBRARY_PATH"; env -u LD_LIBRARY_PATH timeout 60 python3 tests/python/test_ops_load.py
    echo "rc=$?"
    echo "== NEEDED"; readelf -d "$build/kernels/libbitforge_kernels.so" | grep -E 'NEEDED|RUNPATH'
    python3 -c 'import torch; print(torch.__config__.show())' | head -12
    if command -v cuda-gdb >/dev/null; then
      echo "== cuda-gdb"; timeout 150 cuda-gdb -batch -ex 'set pagination off' -ex run -ex bt -ex 'info sharedlibrary' \
        --args python3 tests/python/test_ops_load.py 2>&1 | grep -v -E '^\[(New|Thread)' | tail -150
    fi
  fi
} >"$out/test.log" 2>&1
log "tests: $(grep -E 'rc=|PASSED|FAILED' "$out/test.log" | tr '\n' ';')"

cs="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
if [ -x "$cs" ]; then
  # No caching allocator: every tensor is its own cudaMalloc, so an access past a tensor's end is caught.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 "$cs" --tool memcheck --error-exitcode 99 \
    "$build/tests/test_kernels_bitlinear_cuda" --gtest_color=no >"$out/memcheck.log" 2>&1
  log "memcheck rc=$? : $(grep -E 'ERROR SUMMARY|PASSED|FAILED' "$out/memcheck.log" | tr '\n' ';')"
  timeout 120 "$cs" --tool racecheck --error-exitcode 99 "$build/tests/test_kernels_bitlinear_cuda" --gtest_color=no \
    --gtest_filter='*EverySetting*:*OddShapes*:*Activation*' >"$out/racecheck.log" 2>&1
  log "racecheck rc=$? : $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED' "$out/racecheck.log" | tr '\n' ';')"
else
  log "compute-sanitizer not found"
fi

if [ -n "$bench_pid" ]; then
  wait "$bench_pid"
  if [ "$(cat /tmp/bitforge_bench_rc 2>/dev/null)" = 0 ]; then
    log "bench_bitlinear built"
    timeout 200 "$build/bench/bench_bitlinear" --device cuda "$@" 2>&1 | tee "$out/bench.txt"
    log "bench rc=${PIPESTATUS[0]}"
    # Nsight Compute on the bitforge kernels of one short pass (GEMMs excluded), clocks left as found.
    if command -v ncu >/dev/null; then
      timeout 120 ncu --clock-control none --kernel-name regex:'quantize|scatter|anchor|codes' --launch-count 30 \
        --section SpeedOfLight --section LaunchStats --section Occupancy \
        "$build/bench/bench_bitlinear" --device cuda --shapes 4096x14336 --iters 1 --warmup 0 >"$out/ncu.txt" 2>&1
      log "ncu rc=$?"
    fi
  else
    log "bench_bitlinear build FAILED"; tail -30 /tmp/bitforge_build_bench.log | tee -a "$out/summary.txt"
  fi
fi
command -v cuobjdump >/dev/null && cuobjdump --dump-resource-usage "$build/kernels/libbitforge_kernels.so" 2>&1 |
  grep -A1 -i bitforge | cut -c1-400 >>"$out/probe.txt"
log "done"
