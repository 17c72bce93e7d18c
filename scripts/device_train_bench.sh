#!/usr/bin/env bash
# One call on the lent GPU machine: GPU training measurements. Builds the full project's `bitforge` and
# `bench_train_throughput` (scripts/device_build.sh: the carried .debs, the machine's torch), then
#   1. bench_train_throughput configs/gpu-125m.yaml --steps STEPS: full-precision vs QAT tokens/s, step-time ratio,
#      MFU (CUDA, bf16 autocast), with nvidia-smi dmon sampling clocks/power/utilisation alongside;
#   2. time permitting, configs/gpu-cpu-tiny.yaml trained on cuda (bf16 autocast), cuda (fp32) and cpu (fp32) with
#      the same seed, data order and initial weights, and the loss curves compared step by step.
# Every stage has a hard timeout inside a whole-script deadline (BITFORGE_DEADLINE_S, default 530 s), so that a
# hang cannot outlive the device call. Logs in OUT_DIR (7 files: summary.txt probe.txt build.log bench.txt
# dmon.txt tiny.log tiny_compare.txt).
#   scripts/device_train_bench.sh OUT_DIR [STEPS=20]
# From the development machine: scripts/device_fetch_debs.sh once, then the device tool's run with carry [".deb"],
# timeout_s <= 560 and the command `bash scripts/device_train_bench.sh $OUT 30` (95 s on the H100 machine on
# 2026-11-23, build 57 s included, cold start aside). To build the last commit rather than a working tree with
# someone's uncommitted edits: `git archive HEAD | tar -x -C .src` into a folder .git/info/exclude ignores, carry
# [".deb", ".src"], and run `ln -sfn "$PWD/.deb" .src/.deb && cd .src && bash scripts/device_train_bench.sh $OUT 30`.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out="$(mkdir -p "${1:?OUT_DIR}" && cd "$1" && pwd)"
steps="${2:-20}"
deadline="${BITFORGE_DEADLINE_S:-530}"
build="build-device"
export BITFORGE_JOBS="${BITFORGE_JOBS:-$(nproc)}"
log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$out/summary.txt"; }
left() { echo $((deadline - SECONDS)); }
# cap SECONDS: the smaller of SECONDS and what is left before the deadline minus a margin (never below 1).
cap() { local l=$(($(left) - ${2:-10})); [ "$l" -lt "$1" ] && echo $((l > 1 ? l : 1)) || echo "$1"; }

log "device_train_bench in $PWD ($(cat .src_commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)), steps=$steps, deadline ${deadline}s"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  nproc; free -g | head -2
  timeout 60 python3 -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
} >"$out/probe.txt" 2>&1
log "probe: $(sed -n 2p "$out/probe.txt")"

# --- build ------------------------------------------------------------------------------------------------
t=$(cap 380 120)
if ! timeout "$t" bash scripts/device_build.sh "$build" bitforge bench_train_throughput >"$out/build.log" 2>&1; then
  log "build FAILED or timed out (limit ${t}s); tail of build.log:"
  grep -E 'error|Error|FAILED' "$out/build.log" | head -20 | tee -a "$out/summary.txt"
  tail -15 "$out/build.log" | tee -a "$out/summary.txt"
  exit 1
fi
log "built bitforge bench_train_throughput in $build ($(grep -c 'Building' "$out/build.log") compile steps)"
# shellcheck disable=SC1090
source "$build/device_env.sh"
bf="$build/bitforge"
bench="$build/bench/bench_train_throughput"

# --- 1. training throughput, gpu-125m -----------------------------------------------------------------------
nvidia-smi dmon -s pucm -d 1 >"$out/dmon.txt" 2>&1 &
dmon=$!
t=$(cap 200 20)
log "bench_train_throughput configs/gpu-125m.yaml --steps $steps (limit ${t}s)"
timeout "$t" "$bench" configs/gpu-125m.yaml --steps "$steps" >"$out/bench.txt" 2>&1
log "bench rc=$?: $(tr '\n' ';' <"$out/bench.txt")"
kill "$dmon" 2>/dev/null
nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv >>"$out/probe.txt" 2>&1
if [ "$(left)" -gt 200 ]; then  # the small model too: how much per-step overhead there is at that size
  t=$(cap 60 150)
  echo "== configs/default.yaml (small model)" >>"$out/bench.txt"
  timeout "$t" "$bench" configs/default.yaml --steps 50 >>"$out/bench.txt" 2>&1
  log "bench default.yaml rc=$?: $(sed -n '/default.yaml (small/,$p' "$out/bench.txt" | tr '\n' ';')"
fi

# --- 2. tiny loss curve: cuda bf16, cuda fp32, cpu fp32 -----------------------------------------------------
if [ "$(left)" -lt 90 ]; then
  log "skipping the tiny loss-curve comparison: $(left)s left"
  exit 0
fi
rm -rf runs/gpu-cpu-tiny*
: >"$out/tiny.log"
t=$(cap 90 60)
timeout "$t" "$bf" prepare-data -c configs/gpu-cpu-tiny.yaml >>"$out/tiny.log" 2>&1
log "tiny prepare-data rc=$? (limit ${t}s)"
variants=()
for v in cuda-bf16 cuda-fp32 cpu-fp32; do
  if [ "$(left)" -lt 25 ]; then log "skipping tiny $v: $(left)s left"; continue; fi
  dev="${v%-*}"
  bf16=false
  [ "$v" = cuda-bf16 ] && bf16=true
  t=$(cap 120 10)
  echo "== $v" >>"$out/tiny.log"
  timeout "$t" "$bf" train -c configs/gpu-cpu-tiny.yaml --set "run.name=gpu-cpu-tiny-$v" --set "train.device=$dev" \
    --set "train.bf16=$bf16" --set "train.threads=$(nproc)" >>"$out/tiny.log" 2>&1
  rc=$?
  log "tiny $v rc=$rc (limit ${t}s): $(grep -E 'done:|final val' "$out/tiny.log" | tail -1)"
  [ "$rc" = 0 ] && variants+=("$v")
done
timeout 30 python3 - "${variants[@]}" >"$out/tiny_compare.txt" 2>&1 <<'EOF'
import json, sys
runs = {}
for v in sys.argv[1:]:
    tr, val, tps = {}, None, []
    for line in open(f"runs/gpu-cpu-tiny-{v}/student/metrics.jsonl"):
        j = json.loads(line)
        if "loss" in j:
            tr[j["step"]] = j["loss"]; tps.append(j.get("tokens_per_s", 0))
        if "val_loss" in j:
            val = j["val_loss"]
    runs[v] = (tr, val, tps)
names = list(runs)
if not names:
    sys.exit("no tiny run finished")
steps = sorted(set.intersection(*[set(r[0]) for r in runs.values()]))
print("step " + " ".join(f"{n:>11}" for n in names))
for s in steps:
    print(f"{s:>4} " + " ".join(f"{runs[n][0][s]:11.5f}" for n in names))
print("final val loss: " + ", ".join(f"{n} {runs[n][1]}" for n in names))
print("median train tokens/s (logging windows of 1 step): " +
      ", ".join(f"{n} {sorted(runs[n][2])[len(runs[n][2]) // 2]:.0f}" for n in names))
ref = "cpu-fp32" if "cpu-fp32" in runs else names[0]
for n in names:
    if n == ref:
        continue
    d = [abs(runs[n][0][s] - runs[ref][0][s]) for s in steps]
    print(f"{n} vs {ref}: step-1 |dloss| {d[0]:.2e}, max |dloss| {max(d):.2e} (step {steps[d.index(max(d))]}), "
          f"last-step |dloss| {d[-1]:.2e}, mean |dloss| {sum(d) / len(d):.2e}")
EOF
log "tiny compare rc=$?"
tail -4 "$out/tiny_compare.txt" | tee -a "$out/summary.txt"
log "done"
