#!/usr/bin/env bash
# Long fuzzing campaign: every libFuzzer harness of tests/fuzz/ for RUNS executions (default 10^6) with ASan/UBSan
# and leak detection; prints executions, crashes, leaks, hangs and OOMs per harness (build-fuzz/campaign/report.txt).
#   bench/fuzz_campaign.sh [RUNS]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/fuzz.sh" build
"$ROOT/scripts/fuzz.sh" seeds
exec "$ROOT/scripts/fuzz.sh" campaign "${1:-1000000}"
