#!/usr/bin/env bash
# Configure and build bitforge (Release) into $BITFORGE_BUILD (default ./build). Calls setup first.
#   scripts/build.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cmake -S . -B "$BITFORGE_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$BITFORGE_PYTHON" "$@"
jobs="${BITFORGE_JOBS:-$(nproc)}"
cmake --build "$BITFORGE_BUILD" -j "$jobs"
