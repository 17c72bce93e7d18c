#!/usr/bin/env bash
# bitforge setup: installs only what is missing, says what it does, and fails naming what it could not install.
#
#   scripts/setup.sh            # Debian packages + the cached Python environment with LibTorch (torch 2.11.0)
#
# Idempotent. The Python environment lives outside the clone (default ~/.cache/bitforge/venv, override with
# BITFORGE_VENV) so that a fresh clone or a CI run does not download gigabytes again.
# Prints nothing but progress; the caller sources scripts/env.sh afterwards to get BITFORGE_PYTHON.
set -euo pipefail

TORCH_VERSION="2.11.0"
VENV="${BITFORGE_VENV:-$HOME/.cache/bitforge/venv}"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- Debian packages ------------------------------------------------------------------------------------
# Package → a file it installs (checked instead of dpkg state so a hand-installed copy also counts).
declare -A DEBS=(
  [cmake]=/usr/bin/cmake
  [ninja-build]=/usr/bin/ninja
  [g++]=/usr/bin/g++
  [libyaml-cpp-dev]=/usr/include/yaml-cpp/yaml.h
  [libspdlog-dev]=/usr/include/spdlog/spdlog.h
  [libfmt-dev]=/usr/include/fmt/format.h
  [libgtest-dev]=/usr/include/gtest/gtest.h
  [libgmock-dev]=/usr/include/gmock/gmock.h
  [libbenchmark-dev]=/usr/include/benchmark/benchmark.h
  [libcli11-dev]=/usr/include/CLI/CLI.hpp
  [nlohmann-json3-dev]=/usr/include/nlohmann/json.hpp
  [libsentencepiece-dev]=/usr/include/sentencepiece_processor.h
  [libpcre2-dev]=/usr/include/pcre2.h
  [libutf8proc-dev]=/usr/include/utf8proc.h
  [python3.11-doc]=/usr/share/doc/python3.11/html/_sources/contents.rst.txt
  [gnuplot-nox]=/usr/bin/gnuplot
  [ccache]=/usr/bin/ccache
  [libxxhash-dev]=/usr/include/xxhash.h                 # checkpoint checksums (XXH3-64)
  [clang-14]=/usr/bin/clang++-14                        # scripts/fuzz.sh: libFuzzer harnesses with ASan/UBSan
  [libclang-rt-14-dev]=/usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a
)
missing=()
for pkg in "${!DEBS[@]}"; do
  [ -e "${DEBS[$pkg]}" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || die "apt-get update failed"
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/bitforge-apt.log 2>&1; then
    tail -20 /tmp/bitforge-apt.log >&2
    die "could not install Debian packages: ${missing[*]} (log: /tmp/bitforge-apt.log)"
  fi
  for pkg in "${missing[@]}"; do
    [ -e "${DEBS[$pkg]}" ] || die "package $pkg installed but ${DEBS[$pkg]} is still missing"
  done
fi

# --- Python environment with LibTorch -------------------------------------------------------------------
# Built with uv (PyPI), which keeps downloaded wheels in a cache and links them into an environment in seconds:
# a fresh environment (CI builds one from nothing on every run, see .ci/run) costs no download after the first.
PY_SYS="$(command -v python3 || true)"
[ -n "$PY_SYS" ] || die "python3 not found; install python3"
PY_PACKAGES=("torch==$TORCH_VERSION" numpy safetensors "transformers>=4.51" tokenizers sentencepiece protobuf xxhash)
UV_HOME="${BITFORGE_UV_HOME:-$HOME/.cache/bitforge/uv}"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$HOME/.cache/bitforge/uv-cache}"
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
UV="$UV_HOME/bin/uv"
if [ ! -x "$UV" ]; then
  say "installing uv (PyPI) into $UV_HOME"
  rm -rf "$UV_HOME"
  "$PY_SYS" -m venv "$UV_HOME" || die "python3 -m venv $UV_HOME failed (Debian: apt-get install python3-venv)"
  "$UV_HOME/bin/pip" install -q uv || die "pip install uv failed"
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating Python environment at $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$UV" venv -q --seed --python "$PY_SYS" "$VENV" || die "uv venv $VENV failed"
fi
# Checked from the installed metadata (no import: torch and transformers take seconds to import).
if ! "$VENV/bin/python" - "$TORCH_VERSION" <<'PYCHECK' 2>/dev/null
import sys
from importlib.metadata import version
for pkg in ("numpy", "safetensors", "transformers", "tokenizers", "sentencepiece", "protobuf", "xxhash"):
    version(pkg)
sys.exit(0 if version("torch").split("+")[0] == sys.argv[1] else 1)
PYCHECK
then
  say "installing ${PY_PACKAGES[*]} into $VENV (PyPI; several GB the first time, cached in $UV_CACHE_DIR afterwards)"
  "$UV" pip install -q --python "$VENV/bin/python" "${PY_PACKAGES[@]}" || die "uv pip install ${PY_PACKAGES[*]} failed"
fi

# --- CUDA toolkit (optional: the build compiles CUDA sources when nvcc is found; CMake checks it against torch) ---
cuda="nvcc not found: CUDA kernels will not be compiled"
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
  cuda="nvcc $("$NVCC" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
fi
say "ready: Debian packages, torch $TORCH_VERSION in $VENV, $cuda"
