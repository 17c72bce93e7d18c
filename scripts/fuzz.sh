#!/usr/bin/env bash
# libFuzzer harnesses of bitforge's readers (tests/fuzz/fuzz_*.cpp), built with clang + ASan/UBSan.
#
#   scripts/fuzz.sh build                  # compile the harnesses into build-fuzz/ (clang-14, libclang-rt-14-dev)
#   scripts/fuzz.sh seeds                  # seed corpora in build-fuzz/seeds/<harness>/ (files the tests generate)
#   scripts/fuzz.sh smoke [SECONDS]        # each harness SECONDS (default 3) on its seeds; exit 77 when not built
#   scripts/fuzz.sh campaign [RUNS [SECS]] # each harness RUNS executions (default 1000000; at most SECS seconds
#                                          # when given); report in build-fuzz/campaign/report.txt: executions,
#                                          # crashes, leaks, hangs, out-of-memory
#
# Harnesses: safetensors, gguf, packed, shard, config, checkpoint, tokenizer, hf (the last needs LibTorch headers;
# it is skipped with a message when they cannot be compiled with clang). Environment: FUZZ_HARNESSES (a subset,
# space-separated), FUZZ_DIR (default
# build-fuzz), CXX (default clang++-14), BITFORGE_BINARY_DIR (the main build,
# used to generate seeds; default build).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FUZZ_DIR="${FUZZ_DIR:-$ROOT/build-fuzz}"
CXX="${CXX:-clang++-14}"
MAIN_BUILD="${BITFORGE_BINARY_DIR:-$ROOT/build}"
HARNESSES=(${FUZZ_HARNESSES:-safetensors gguf packed shard config checkpoint tokenizer hf})
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CXXFLAGS="-std=c++17 -O1 -g $SAN -fsanitize=fuzzer-no-link -I$ROOT -DSPDLOG_SHARED_LIB -DSPDLOG_COMPILED_LIB -DSPDLOG_FMT_EXTERNAL"
LIBS="-lyaml-cpp -lspdlog -lfmt -lsentencepiece -lsentencepiece_train -lpcre2-8 -lutf8proc -lxxhash -lz -pthread"
CORE=(export/safetensors.cpp export/mapped_file.cpp export/gguf.cpp export/ggml_quants.cpp export/bitpack.cpp
      export/packed_format.cpp export/model_export.cpp config/config.cpp config/memory_estimate.cpp trainer/checkpoint_io.cpp
      data/shard.cpp data/tokenizer.cpp data/hf_tokenizer.cpp data/prepare.cpp data/baseline.cpp data/loader.cpp data/corpus.cpp
      data/file_limits.cpp)

say() { printf '[fuzz] %s\n' "$*"; }

compile() {  # src obj [extra flags]: recompiles when the source or any header of the tree is newer
  local src="$1" obj="$2"; shift 2
  if [ -f "$obj" ] && [ -z "$(find "$ROOT/$src" "$ROOT"/export "$ROOT"/data "$ROOT"/trainer "$ROOT"/tests/fuzz -newer "$obj" -name '*.h' -o -newer "$obj" -path "$ROOT/$src" 2>/dev/null | head -1)" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$obj")"
  say "compile $src"
  $CXX $CXXFLAGS "$@" -c "$ROOT/$src" -o "$obj"
}

torch_flags() {
  local py="${BITFORGE_PYTHON:-$HOME/.cache/bitforge/venv/bin/python}"
  [ -x "$py" ] || return 1
  local inc lib
  inc="$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "include"))' 2>/dev/null)" || return 1
  lib="$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)" || return 1
  echo "-isystem $inc -isystem $inc/torch/csrc/api/include|-L$lib -Wl,-rpath,$lib -Wl,--no-as-needed -lstdc++ -ltorch -ltorch_cpu -lc10"
}

cmd_build() {
  command -v "$CXX" >/dev/null || { echo "$CXX not found (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 1; }
  mkdir -p "$FUZZ_DIR/obj" "$FUZZ_DIR/bin"
  local objs=()
  for src in "${CORE[@]}"; do
    local obj="$FUZZ_DIR/obj/${src//\//_}.o"
    compile "$src" "$obj"
    objs+=("$obj")
  done
  rm -f "$FUZZ_DIR/libfuzzcore.a"
  ar rcs "$FUZZ_DIR/libfuzzcore.a" "${objs[@]}"
  for h in "${HARNESSES[@]}"; do
    [ "$h" = hf ] && continue
    compile "tests/fuzz/fuzz_$h.cpp" "$FUZZ_DIR/obj/fuzz_$h.o"
    say "link fuzz_$h"
    $CXX $SAN -fsanitize=fuzzer "$FUZZ_DIR/obj/fuzz_$h.o" "$FUZZ_DIR/libfuzzcore.a" $LIBS -o "$FUZZ_DIR/bin/fuzz_$h"
  done
  # The HF reader is LibTorch code (it loads weights into a Transformer): its harness needs torch's headers, and the
  # main build's libraries (uninstrumented) for the trainer symbols hf_checkpoint.cpp references.
  local tf
  if [ ! -f "$MAIN_BUILD/trainer/libbitforge_trainer.a" ]; then
    say "fuzz_hf: needs the main build in $MAIN_BUILD (cmake --build build); skipped"
  elif tf="$(torch_flags)" && compile trainer/hf_checkpoint.cpp "$FUZZ_DIR/obj/trainer_hf_checkpoint.cpp.o" ${tf%%|*} \
      2>"$FUZZ_DIR/hf_build.log" && compile tests/fuzz/fuzz_hf.cpp "$FUZZ_DIR/obj/fuzz_hf.o" ${tf%%|*} 2>>"$FUZZ_DIR/hf_build.log"; then
    say "link fuzz_hf"
    if ! $CXX $SAN -fsanitize=fuzzer "$FUZZ_DIR/obj/fuzz_hf.o" "$FUZZ_DIR/obj/trainer_hf_checkpoint.cpp.o" \
        "$FUZZ_DIR/libfuzzcore.a" "$MAIN_BUILD/trainer/libbitforge_trainer.a" "$MAIN_BUILD/export/libbitforge_export.a" \
        "$MAIN_BUILD/config/libbitforge_config.a" "$MAIN_BUILD/data/libbitforge_data.a" \
        "$MAIN_BUILD/kernels/libbitforge_kernels.so" -Wl,-rpath,"$MAIN_BUILD/kernels" ${tf##*|} -lgomp $LIBS \
        -o "$FUZZ_DIR/bin/fuzz_hf" \
        2>>"$FUZZ_DIR/hf_build.log"; then
      say "fuzz_hf: link failed (see $FUZZ_DIR/hf_build.log); skipped"
    fi
  else
    say "fuzz_hf: LibTorch headers do not compile with $CXX here (see $FUZZ_DIR/hf_build.log); skipped"
  fi
  say "harnesses in $FUZZ_DIR/bin: $(ls "$FUZZ_DIR/bin" | tr '\n' ' ')"
}

cmd_seeds() {
  local S="$FUZZ_DIR/seeds" W
  W="$(mktemp -d /tmp/bitforge-fuzz-seeds.XXXXXX)"
  for h in "${HARNESSES[@]}"; do mkdir -p "$S/$h"; done
  cp "$ROOT"/configs/*.yaml "$S/config/" 2>/dev/null || true
  printf 'run:\n  name: ok\nmodel:\n  hidden_size: 64\n' > "$S/config/small.yaml"
  printf '{"model_type": "llama", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-06, "tie_word_embeddings": true}\n--bitforge-fuzz--\n{"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"}}\n' > "$S/hf/llama.json"
  printf '\x01' > "$S/tokenizer/byte-empty"
  if [ -x "$MAIN_BUILD/bitforge" ]; then
    # A tiny pipeline with the main build: the files the tests generate (checkpoint, packed, GGUF, shards, tokenizers).
    python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
with open(f"{w}/corpus.jsonl", "w") as f:
    for i in range(80):
        f.write(json.dumps({"text": f"Document {i}: the quick brown fox jumps over the lazy dog {i*7} times."}) + "\n")
for tok, vocab in (("byte", 0), ("sentencepiece_bpe", 300)):
    with open(f"{w}/{tok}.yaml", "w") as f:
        f.write(f"""model: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 64}}
quant: {{group_size: 32}}
data: {{format: jsonl, path: {w}/corpus.jsonl, tokenizer: {tok}, vocab_size: {vocab or 4096}, val_fraction: 0.2}}
train: {{max_steps: 2, per_device_train_batch_size: 2, seq_len: 16, warmup_steps: 1, eval_steps: 0, threads: 1}}
eval: {{seq_len: 16, max_batches: 1, batch_size: 1}}
export: {{dtype: fp32}}
logging: {{plot: false}}
run: {{name: {tok}, output_dir: {w}/runs, stages: [prepare-data, train, export]}}
""")
PY
    for tok in byte sentencepiece_bpe; do
      "$MAIN_BUILD/bitforge" run "$W/$tok.yaml" --log-level warn >/dev/null 2>&1 || say "seed run $tok failed (seeds from it skipped)"
      local R="$W/runs/$tok"
      cp "$R"/data/*.bin "$S/shard/" 2>/dev/null || true
      for f in "$R"/data/tokenizer.*; do [ -f "$f" ] && { case "$f" in *.bin) printf '\x01' ;; *) printf '\x00' ;; esac; cat "$f"; } > "$S/tokenizer/$tok-$(basename "$f")"; done
      cp "$R/export/model.packed.safetensors" "$S/packed/$tok.packed.safetensors" 2>/dev/null || true
      cp "$R/export/model.gguf" "$S/gguf/$tok.gguf" 2>/dev/null || true
      local ck
      ck="$(ls -d "$R"/student/checkpoints/step-* 2>/dev/null | tail -1)"
      if [ -n "$ck" ]; then
        cp "$ck/model.safetensors" "$S/safetensors/$tok-model.safetensors"
        cp "$ck/optimizer.safetensors" "$S/safetensors/$tok-optimizer.safetensors"
        { cat "$ck/COMPLETE"; printf '\n--bitforge-fuzz--\n'; cat "$ck/trainer_state.json"; printf '\n--bitforge-fuzz--\n'; cat "$ck/model.safetensors"; } > "$S/checkpoint/$tok"
        cp "$ck/config.yaml" "$S/config/$tok-checkpoint.yaml"
      fi
    done
  else
    say "no $MAIN_BUILD/bitforge: seeds from the repository only"
  fi
  rm -rf "$W"
  for h in "${HARNESSES[@]}"; do say "seeds/$h: $(ls "$S/$h" | wc -l) files"; done
}

run_one() {  # harness, extra libFuzzer args...; prints the log path
  local h="$1"; shift
  local out="$FUZZ_DIR/runs/$h" log="$FUZZ_DIR/runs/$h${LOG_TAG:-}.log" max_len=262144
  case "$h" in config|hf) max_len=8192 ;; esac  # text inputs: larger ones only slow the YAML/JSON parsers down
  mkdir -p "$out" "$FUZZ_DIR/artifacts/$h"
  ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    "$FUZZ_DIR/bin/fuzz_$h" "$out" "$FUZZ_DIR/seeds/$h" -artifact_prefix="$FUZZ_DIR/artifacts/$h/" \
      -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 -max_len="$max_len" -print_final_stats=1 "$@" >"$log" 2>&1
}

cmd_smoke() {
  local secs="${1:-3}" fail=0 ran=0
  [ -d "$FUZZ_DIR/bin" ] || { echo "SKIP: no fuzz build in $FUZZ_DIR (run scripts/fuzz.sh build)"; exit 77; }
  [ -d "$FUZZ_DIR/seeds" ] || cmd_seeds >/dev/null
  for h in "${HARNESSES[@]}"; do
    if [ ! -x "$FUZZ_DIR/bin/fuzz_$h" ]; then echo "fuzz_$h: not built, skipped"; continue; fi
    ran=$((ran + 1))
    if LOG_TAG=.smoke run_one "$h" -max_total_time="$secs"; then
      echo "fuzz_$h: ok, $(grep -o 'stat::number_of_executed_units: [0-9]*' "$FUZZ_DIR/runs/$h.smoke.log" | awk '{print $2}') executions in ${secs}s"
    else
      echo "fuzz_$h: FAILED (log $FUZZ_DIR/runs/$h.smoke.log)"; tail -30 "$FUZZ_DIR/runs/$h.smoke.log"; fail=1
    fi
  done
  [ "$ran" -gt 0 ] || { echo "SKIP: no harness built"; exit 77; }
  exit $fail
}

cmd_campaign() {
  local runs="${1:-1000000}" max_time="${2:-0}" rep="${FUZZ_REPORT:-$FUZZ_DIR/campaign/report.txt}"
  [ -d "$FUZZ_DIR/bin" ] || cmd_build
  [ -d "$FUZZ_DIR/seeds" ] || cmd_seeds
  mkdir -p "$FUZZ_DIR/campaign"
  printf '%-12s %12s %8s %8s %8s %8s %10s\n' harness executions crashes leaks hangs ooms seconds | tee "$rep"
  for h in "${HARNESSES[@]}"; do
    [ -x "$FUZZ_DIR/bin/fuzz_$h" ] || { printf '%-12s %s\n' "$h" "not built" | tee -a "$rep"; continue; }
    local t0=$SECONDS rc=0
    if [ "$max_time" -gt 0 ]; then run_one "$h" -runs="$runs" -max_total_time="$max_time" || rc=$?
    else run_one "$h" -runs="$runs" || rc=$?; fi
    local log="$FUZZ_DIR/runs/$h.log"
    local execs crashes leaks hangs ooms
    execs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}' || true)"
    crashes="$(grep -c -E 'ERROR: AddressSanitizer|runtime error:|deadly signal|uncaught exception|terminate called' "$log" || true)"
    leaks="$(grep -c 'ERROR: LeakSanitizer' "$log" || true)"
    hangs="$(grep -c 'ERROR: libFuzzer: timeout' "$log" || true)"
    ooms="$(grep -c -E 'out-of-memory|malloc\(' "$log" || true)"
    printf '%-12s %12s %8s %8s %8s %8s %10s%s\n' "$h" "${execs:-?}" "$crashes" "$leaks" "$hangs" "$ooms" \
      "$((SECONDS - t0))" "$([ $rc -ne 0 ] && echo "  (exit $rc, log $log)")" | tee -a "$rep"
  done
}

case "${1:-}" in
  build) cmd_build ;;
  seeds) cmd_seeds ;;
  smoke) shift; cmd_smoke "$@" ;;
  campaign) shift; cmd_campaign "$@" ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
