#!/usr/bin/env bash
# Builds a stock llama.cpp (CPU only) outside the clone, to check bitforge's GGUF export against it.
#
# The llama.cpp sources come from the llama-cpp-python source distribution on PyPI (it vendors a pinned
# llama.cpp under vendor/llama.cpp), downloaded with pip into a cache outside the repository:
#   $BITFORGE_LLAMA_CPP_DIR (default ~/.cache/bitforge/llama.cpp)/
#     llama_cpp_python-$VERSION.tar.gz     the sdist
#     llama_cpp_python-$VERSION/           unpacked (vendor/llama.cpp is the tree that is built)
#     build-$VERSION/                      CMake build (bin/: libllama, libggml*, tools, llama_logits)
# Nothing from llama.cpp is ever copied into the repository.
#
# Builds libllama + libggml (shared), the targets in LLAMA_TARGETS (default: llama-simple test-backend-ops)
# and scripts/llama_logits.cpp compiled against the built libllama (→ build-$VERSION/bin/llama_logits).
# Idempotent: re-running reuses the sdist, the unpacked tree and the build directory.
#
# Environment:
#   LLAMA_CPP_PYTHON_VERSION  sdist version (default 0.3.36)
#   LLAMA_CPP_SDIST           use this local .tar.gz instead of downloading (it is copied into the cache)
#   LLAMA_TARGETS             extra CMake targets (default "llama-simple test-backend-ops"; "" = library only)
#   JOBS                      parallel build jobs (default 2)
# Prints the directory holding the binaries on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/env.sh

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${BITFORGE_LLAMA_CPP_DIR:-$HOME/.cache/bitforge/llama.cpp}"
TARGETS="${LLAMA_TARGETS-llama-simple test-backend-ops}"
JOBS="${JOBS:-2}"
SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"
SRC="$CACHE/llama_cpp_python-$VERSION"
LLAMA="$SRC/vendor/llama.cpp"
BUILD="$CACHE/build-$VERSION"

say() { echo "[build_llama_cpp] $*" >&2; }
die() { echo "[build_llama_cpp] ERROR: $*" >&2; exit 1; }

for tool in cmake c++ tar; do command -v "$tool" >/dev/null || die "'$tool' not found (apt-get install cmake g++)"; done
GEN=()
if command -v ninja >/dev/null; then GEN=(-G Ninja); fi

mkdir -p "$CACHE"

# 1. The sdist.
if [[ ! -s "$SDIST" ]]; then
  if [[ -n "${LLAMA_CPP_SDIST:-}" ]]; then
    [[ -s "$LLAMA_CPP_SDIST" ]] || die "LLAMA_CPP_SDIST=$LLAMA_CPP_SDIST does not exist"
    say "copying $LLAMA_CPP_SDIST -> $SDIST"
    cp "$LLAMA_CPP_SDIST" "$SDIST.tmp" && mv "$SDIST.tmp" "$SDIST"
  else
    [[ -x "$BITFORGE_PYTHON" ]] || die "$BITFORGE_PYTHON not found (run scripts/setup.sh first)"
    say "downloading llama-cpp-python==$VERSION sdist from PyPI into $CACHE"
    tmp="$(mktemp -d "$CACHE/dl.XXXXXX")"
    "$BITFORGE_PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" \
      || die "pip download of llama-cpp-python==$VERSION failed"
    f="$(ls "$tmp"/llama_cpp_python-*.tar.gz 2>/dev/null | head -1)"
    [[ -n "$f" ]] || die "pip download produced no llama_cpp_python-*.tar.gz in $tmp"
    mv "$f" "$SDIST"
    rm -rf "$tmp"
  fi
else
  say "sdist present: $SDIST"
fi

# 2. Unpack (marker file so an interrupted unpack is redone).
if [[ ! -f "$SRC/.bitforge_unpacked" ]]; then
  say "unpacking $SDIST"
  rm -rf "$SRC"
  tar -xzf "$SDIST" -C "$CACHE" || die "cannot unpack $SDIST"
  [[ -f "$LLAMA/CMakeLists.txt" ]] || die "$SDIST has no vendor/llama.cpp/CMakeLists.txt"
  touch "$SRC/.bitforge_unpacked"
else
  say "sources present: $SRC"
fi

# 3. What this llama.cpp knows.
commit="$(grep -m1 -o 'ggml-org/llama.cpp@[0-9a-f]*' "$SRC/CHANGELOG.md" 2>/dev/null || true)"
ggml_ver="$(sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)).*/\2/p' "$LLAMA/ggml/CMakeLists.txt" | paste -sd.)"
say "llama-cpp-python $VERSION vendors ${commit:-llama.cpp (commit unknown)}, ggml $ggml_ver"
for t in "Q1_0 *= 41" "TQ2_0 *= 35" "TQ1_0 *= 34"; do
  if grep -Eq "GGML_TYPE_$t," "$LLAMA/ggml/include/ggml.h"; then say "  ggml.h knows GGML_TYPE_${t// /}"
  else say "  WARNING: ggml.h has no GGML_TYPE_${t// /}"; fi
done

# 4. Configure + build (CPU only).
if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
  say "configuring $BUILD"
  cmake -S "$LLAMA" -B "$BUILD" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="${commit#ggml-org/llama.cpp@}" \
    >"$CACHE/configure-$VERSION.log" 2>&1 \
    || { tail -30 "$CACHE/configure-$VERSION.log" >&2; die "CMake configure failed (log: $CACHE/configure-$VERSION.log)"; }
else
  say "build directory configured: $BUILD"
fi
say "building llama $TARGETS (-j$JOBS)"
start=$SECONDS
# shellcheck disable=SC2086
cmake --build "$BUILD" -j "$JOBS" --target llama $TARGETS || die "llama.cpp build failed"
say "llama.cpp build took $((SECONDS - start)) s"

# 5. scripts/llama_logits.cpp against the built libllama.
BIN="$BUILD/bin"
lib_dir="$(dirname "$(find "$BUILD" -name 'libllama.so' -print -quit)")"
[[ -n "$lib_dir" && -f "$lib_dir/libllama.so" ]] || die "libllama.so not found under $BUILD"
out="$BIN/llama_logits"
if [[ ! -x "$out" || "$ROOT/scripts/llama_logits.cpp" -nt "$out" || "$lib_dir/libllama.so" -nt "$out" ]]; then
  say "compiling scripts/llama_logits.cpp -> $out"
  mkdir -p "$BIN"
  c++ -std=c++17 -O2 -Wall -Wextra -o "$out" "$ROOT/scripts/llama_logits.cpp" \
    -I"$LLAMA/include" -I"$LLAMA/ggml/include" \
    -L"$lib_dir" -lllama -lggml -lggml-base -Wl,-rpath,"$lib_dir" \
    || die "compiling llama_logits failed"
else
  say "llama_logits up to date"
fi
echo "$BIN"
