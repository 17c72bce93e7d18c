#!/usr/bin/env bash
# End-to-end CPU speed of a pipeline's exported model: bitforge's packed runtime (build/bench/bench_generate on
# RUN_DIR/export/model.packed.safetensors) against stock llama.cpp's llama-bench on bitforge's own GGUF export of the
# same model (RUN_DIR/export/model.gguf), same machine, same thread counts, same tests (pp<P>: prompt processing of
# P tokens; tg<N>: N decode steps), one table of tokens/s and ratios.
#
#   usage: scripts/bench_e2e.sh [RUN_DIR] [THREADS ...]      (default runs/default, threads "1 2")
#   env:   P (default 128), N (default 128), REPS (default 5), BUILD_DIR (default build), ROUNDS (default 1: with R > 1
#          the bitforge / llama.cpp pair runs R times alternately per thread count and the table shows medians of the
#          tokens/s and of the per-round ratios — steadier on a machine whose speed drifts),
#          ACT_BITS (default 0: bitforge exact, as exported; 8: bitforge with per-token int8 activations, the class of
#          numerics llama.cpp always uses for Q1_0 — it quantizes activations to q8_0)
# Needs: the bench built (cmake --build build --target bench_generate) and llama.cpp's llama-bench
# (LLAMA_TARGETS=llama-bench scripts/build_llama_cpp.sh). Run it on an otherwise idle machine, with
# OMP_WAIT_POLICY=passive. A model without training: build/bench/bench_make_random_model RUN_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
RUN_DIR="${1:-runs/default}"
shift || true
THREADS=("$@")
[[ ${#THREADS[@]} -gt 0 ]] || THREADS=(1 2)
P="${P:-128}"; N="${N:-128}"; REPS="${REPS:-5}"; BUILD_DIR="${BUILD_DIR:-build}"; ACT_BITS="${ACT_BITS:-0}"
ROUNDS="${ROUNDS:-1}"
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
for r in $(seq 1 "$ROUNDS"); do
  for t in "${THREADS[@]}"; do
    echo "[bench_e2e] round $r/$ROUNDS, threads $t: bitforge packed runtime" >&2
    "$BENCH" "$PACKED" -p "$P" -n "$N" -t "$t" -r "$REPS" -a "$ACT_BITS" >"$tmp/bf.out"
    grep '^{' "$tmp/bf.out" >"$tmp/bf_${t}_$r.jsonl"
    [[ $r -gt 1 || $t != "${THREADS[0]}" ]] || grep -m1 '^CPU features' "$tmp/bf.out" >&2 || true
    echo "[bench_e2e] round $r/$ROUNDS, threads $t: llama.cpp llama-bench" >&2
    "$LLAMA_BENCH" -m "$GGUF" -p "$P" -n "$N" -t "$t" -r "$REPS" -o json >"$tmp/ll_${t}_$r.json" 2>"$tmp/ll_$t.err" \
      || { cat "$tmp/ll_$t.err" >&2; die "llama-bench failed"; }
  done
done
"$PY" - "$tmp" "$P" "$N" "$ACT_BITS" "$ROUNDS" "${THREADS[@]}" <<'PYEOF'
import json, sys, os, statistics as st
tmp, P, N, act, rounds, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
print("bitforge activations:", "per-token int8 (speed mode)" if act else "as exported (exact)")
print(f"{'test':<8} {'threads':>7} {'bitforge tok/s':>18} {'llama.cpp tok/s':>18} {'ratio':>7}" + ("  (medians of %d alternated rounds; ratio min..max)" % rounds if rounds > 1 else ""))
for t in threads:
    per = {}
    for r in range(1, rounds + 1):
        bf = {}
        for line in open(os.path.join(tmp, f"bf_{t}_{r}.jsonl")):
            x = json.loads(line); bf[x["test"]] = (x["tokens_per_s"], x["stddev"])
        ll = {}
        for x in json.load(open(os.path.join(tmp, f"ll_{t}_{r}.json"))):
            name = f"pp{x['n_prompt']}" if x["n_gen"] == 0 else f"tg{x['n_gen']}"
            ll[name] = (x["avg_ts"], x["stddev_ts"])
        for test in (f"pp{P}", f"tg{N}"):
            if test in bf and test in ll:
                per.setdefault(test, []).append((bf[test], ll[test]))
    for test, rs in per.items():
        b = st.median(x[0][0] for x in rs); l = st.median(x[1][0] for x in rs)
        ratios = [x[0][0] / x[1][0] for x in rs]
        if rounds > 1:
            print(f"{test:<8} {t:>7} {b:>18.1f} {l:>18.1f} {st.median(ratios):>6.2f}x  ({min(ratios):.2f}..{max(ratios):.2f})")
        else:
            (b, bs), (l, ls) = rs[0]
            print(f"{test:<8} {t:>7} {b:>10.1f} ± {bs:<5.1f} {l:>10.1f} ± {ls:<5.1f} {b/l:>6.2f}x")
PYEOF
