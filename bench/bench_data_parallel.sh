#!/usr/bin/env bash
# Data-parallel scaling on CPU with Gloo (issue #15): training tokens/s of
#   1 rank × 1 thread (batch B), 1 rank × 2 threads (batch 2B), 2 ranks × 1 thread (batch B each = 2B global)
# on a mid-size QAT config (hidden 256, 4 layers, seq 128; corpus: this repository's C++ sources, byte tokenizer),
# the scaling efficiency tokens/s(2 ranks) / (2 · tokens/s(1 rank × 1 thread)), and the all-reduce share of a step
# (one all-reduce of the whole gradient timed alone on the same process group, BITFORGE_DDP_PROFILE=1).
# Usage: bench/bench_data_parallel.sh [STEPS] [BATCH]     (from the repository root, after the build)
set -euo pipefail
STEPS=${1:-30}
B=${2:-4}
BIN=${BIN:-build/bitforge}
OUT=${OUT:-/tmp/bitforge_bench_dp}
rm -rf "$OUT"
mkdir -p "$OUT"
cat > "$OUT/mid.yaml" <<YAML
run: {name: mid, output_dir: $OUT}
data: {format: text_dir, path: ., glob: "*/*.cpp", tokenizer: byte, val_fraction: 0.05, output_dir: $OUT/data}
model: {hidden_size: 256, intermediate_size: 768, num_hidden_layers: 4, num_attention_heads: 4,
        num_key_value_heads: 4, max_position_embeddings: 256}
quant: {weight: binary, granularity: group, group_size: 128}
train: {max_steps: $STEPS, per_device_train_batch_size: $B, seq_len: 128, warmup_steps: 2, logging_steps: 5,
        eval_steps: 0, save_steps: 0, save_total_limit: 1, device: cpu, bf16: false}
eval: {max_batches: 1, batch_size: 4, seq_len: 128}
logging: {plot: false, json_metrics: true}
YAML
"$BIN" prepare-data -c "$OUT/mid.yaml" > "$OUT/prepare.log" 2>&1
tps() {  # mean tokens/s of the logged windows after the first (warm-up) one
  python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
v = [r["tokens_per_s"] for r in rows[1:]] or [r["tokens_per_s"] for r in rows]
print(f"{sum(v) / len(v):.1f}")
PY
}
run() {  # name, threads, batch, extra args...
  local name=$1 th=$2 b=$3
  shift 3
  OMP_NUM_THREADS=$th BITFORGE_DDP_PROFILE=1 "$BIN" train -c "$OUT/mid.yaml" --set run.name=$name -t "$th" \
    --set train.per_device_train_batch_size=$b "$@" > "$OUT/$name.log" 2>&1
  tps "$OUT/$name/student/metrics.jsonl"
}
a=$(run r1t1 1 "$B")
b=$(run r1t2 2 $((2 * B)))
c=$(run r2t1 1 "$B" --nproc-per-node 2)
share=$(grep -o "all-reduce share of a step <= [0-9.]*%" "$OUT/r2t1.log" | tail -1 | grep -o "[0-9.]*%")
ar=$(grep -o "all-reduce of the [0-9.]* MiB gradient: [0-9.]* ms" "$OUT/r2t1.log" | tail -1)
python3 - "$a" "$b" "$c" "$share" "$ar" "$(nproc)" <<'PY'
import sys
a, b, c = map(float, sys.argv[1:4])
print(f"machine: {sys.argv[6]} cores (shared)")
print(f"{'run':<28}{'tokens/s':>12}{'vs 1x1':>10}")
print(f"{'1 rank x 1 thread (B)':<28}{a:>12.1f}{1.0:>10.2f}")
print(f"{'1 rank x 2 threads (2B)':<28}{b:>12.1f}{b / a:>10.2f}")
print(f"{'2 ranks x 1 thread (2 x B)':<28}{c:>12.1f}{c / a:>10.2f}")
print(f"scaling efficiency (2 ranks): {c / (2 * a):.1%}; threads: {b / (2 * a):.1%}")
print(f"{sys.argv[5]}; all-reduce share of a 2-rank step: {sys.argv[4]} (upper bound: timed alone, not overlapped)")
PY

# On a GPU machine: configs/gpu-125m.yaml with NCCL at world size 1 (built-in launcher) vs without a process group,
# to show the process group and the Reducer cost nothing measurable (GPU_STEPS steps each).
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
  GPU_STEPS=${GPU_STEPS:-30}
  for mode in plain nccl1; do
    extra=()
    [ "$mode" = nccl1 ] && extra=(--set train.distributed_backend=nccl --nproc-per-node 1)
    "$BIN" train -c configs/gpu-125m.yaml --set run.name=dp-$mode --set run.output_dir="$OUT" \
      --set train.max_steps=$GPU_STEPS --set train.save_steps=0 --set train.eval_steps=0 --set train.logging_steps=5 \
      "${extra[@]}" > "$OUT/gpu-$mode.log" 2>&1
    echo "gpu-125m $mode: $(tps "$OUT/dp-$mode/student/metrics.jsonl") tokens/s"
  done
else
  echo "SKIP gpu-125m NCCL world-size-1 overhead: no GPU on this machine"
fi
