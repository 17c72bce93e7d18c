#!/usr/bin/env bash
# Decode tokens/s of `bitforge generate` (a packed model, 200 tokens, greedy), best of 3 runs per cell, with the
# default threads (-t 0: all cores, passive OpenMP wait), with libgomp's spinning wait (the old default) and with
# -t 1, each without and with one competing busy process (python3 -c "while True: pass"). README "Threads".
#   scripts/measure_decode_threads.sh [MODEL=runs/default/export/model.packed.safetensors]
set -uo pipefail
cd "$(dirname "$0")/.."
B=${BITFORGE_BUILD:-build}/bitforge
M=${1:-runs/default/export/model.packed.safetensors}
one() { # "ENV=..." then extra bitforge args
  local e=$1; shift
  best=0
  for i in 1 2 3; do
    v=$(env $e $B generate -m $M -p "The" -n 200 "$@" 2>&1 >/dev/null | grep -o 'decode [0-9]* tokens in [0-9.]* ms ([0-9.]* tokens/s' | grep -o '([0-9.]*' | tr -d '(')
    best=$(python3 -c "print(max($best, ${v:-0}))")
  done
  echo "$best"
}
echo "load before: $(uptime)"
for comp in 0 1; do
  if [ $comp = 1 ]; then python3 -c "while True: pass" & CP=$!; sleep 0.5; fi
  a=$(one X=1)                          # default: -t 0 (all cores), re-exec with OMP_WAIT_POLICY=passive
  b=$(one GOMP_SPINCOUNT=300000)       # -t 0 with libgomp's default spinning (the behaviour before this change)
  c=$(one X=1 -t 1)                     # one thread
  echo "competitor=$comp  default(-t 0, passive)=$a  -t 0 spinning(old)=$b  -t 1=$c"
  if [ $comp = 1 ]; then kill $CP; fi
done
echo "load after: $(uptime)"
