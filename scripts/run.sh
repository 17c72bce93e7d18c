#!/usr/bin/env bash
# The README's main job: install, build, then run the whole pipeline of a config (default: configs/default.yaml).
#   scripts/run.sh [CONFIG] [bitforge run options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
source scripts/env.sh
config="${1:-configs/default.yaml}"; shift || true
exec "$BITFORGE_BUILD/bitforge" run "$config" "$@"
