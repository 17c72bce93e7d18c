#!/usr/bin/env bash
# End-to-end CPU speed of a pipeline's exported model: bitforge's packed runtime (build/bench/bench_generate on
# RUN_DIR/export/model.packed.safetensors) against stock llama.cpp's llama-bench on bitforge's own GGUF export of the
# same model (RUN_DIR/export/model.gguf), same machine, same thread counts, same tests (pp<P>: prompt processing of
# P tokens; tg<N>: N decode steps), one table of tokens/s and ratios.
#
#   usage: scripts/bench_e2e.sh [RUN_DIR] [THREADS ...]      (default runs/default, threads "1 2")
#   env:   P (default 128), N (default 128), REPS (default 5), BUILD_DIR (default build),
#          ACT_BITS (default 0: bitforge exact, as exported; 8: bitforge with per-token int8 activations, the class of
#          numerics llama.cpp always uses for Q1_0 — it quantizes activations to q8_0)
# Needs: the bench built (cmake --build build --target bench_generate) and llama.cpp's llama-bench
# (LLAMA_TARGETS=llama-bench scripts/build_llama_cpp.sh). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
RUN_DIR="${1:-runs/default}"
shift || true
THREADS=("$@")
[[ ${#THREADS[@]} -gt 0 ]] || THREADS=(1 2)
P="${P:-128}"; N="${N:-128}"; REPS="${REPS:-5}"; BUILD_DIR="${BUILD_DIR:-build}"; ACT_BITS="${ACT_BITS:-0}"
PACKED="$RUN_DIR/export/model.packed.safetensors"
GGUF="$RUN_DIR/export/model.gguf"
BENCH="$BUILD_DIR/bench/bench_generate"
LLAMA_BENCH="${BITFORGE_LLAMA_CPP_DIR:-$HOME/.cache/bitforge/llama.cpp}/build-${LLAMA_CPP_PYTHON_VERSION:-0.3.36}/bin/llama-bench"
die() { echo "[bench_e2e] ERROR: $*" >&2; exit 1; }
[[ -f "$PACKED" ]] || die "$PACKED not found (run the pipeline: scripts/run.sh)"
[[ -f "$GGUF" ]] || die "$GGUF not found (the pipeline's export writes it)"
[[ -x "$BENCH" ]] || die "$BENCH not found (cmake --build $BUILD_DIR --target bench_generate)"
[[ -x "$LLAMA_BENCH" ]] || die "$LLAMA_BENCH not found (LLAMA_TARGETS=llama-bench scripts/build_llama_cpp.sh)"
PY="${BITFORGE_PYTHON:-python3}"
[[ -x "$PY" ]] || PY=python3

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for t in "${THREADS[@]}"; do
  echo "[bench_e2e] threads $t: bitforge packed runtime" >&2
  "$BENCH" "$PACKED" -p "$P" -n "$N" -t "$t" -r "$REPS" -a "$ACT_BITS" | grep '^{' >"$tmp/bf_$t.jsonl"
  echo "[bench_e2e] threads $t: llama.cpp llama-bench" >&2
  "$LLAMA_BENCH" -m "$GGUF" -p "$P" -n "$N" -t "$t" -r "$REPS" -o json >"$tmp/ll_$t.json" 2>"$tmp/ll_$t.err" \
    || { cat "$tmp/ll_$t.err" >&2; die "llama-bench failed"; }
done
"$PY" - "$tmp" "$P" "$N" "$ACT_BITS" "${THREADS[@]}" <<'PYEOF'
import json, sys, os
tmp, P, N, act, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
print("bitforge activations:", "per-token int8 (speed mode)" if act else "as exported (exact)")
print(f"{'test':<8} {'threads':>7} {'bitforge tok/s':>18} {'llama.cpp tok/s':>18} {'ratio':>7}")
for t in threads:
    bf = {}
    for line in open(os.path.join(tmp, f"bf_{t}.jsonl")):
        r = json.loads(line); bf[r["test"]] = (r["tokens_per_s"], r["stddev"])
    ll = {}
    for r in json.load(open(os.path.join(tmp, f"ll_{t}.json"))):
        name = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
        ll[name] = (r["avg_ts"], r["stddev_ts"])
    for test in (f"pp{P}", f"tg{N}"):
        if test in bf and test in ll:
            b, l = bf[test], ll[test]
            print(f"{test:<8} {t:>7} {b[0]:>10.1f} ± {b[1]:<5.1f} {l[0]:>10.1f} ± {l[1]:<5.1f} {b[0]/l[0]:>6.2f}x")
PYEOF
