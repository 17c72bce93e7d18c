#!/usr/bin/env bash
# The README's test command: install what is missing, build (CUDA sources too when nvcc is found), run ctest.
#   scripts/test.sh [ctest args]      e.g. scripts/test.sh -R BitLinear
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
source scripts/env.sh
cd "$BITFORGE_BUILD"
ctest --output-on-failure -LE slow -j "${BITFORGE_JOBS:-$(nproc)}" "$@"
