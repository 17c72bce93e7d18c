#!/usr/bin/env bash
# Configure (only when needed) and build bitforge (Release) into $BITFORGE_BUILD (default ./build). Calls setup first.
#   scripts/build.sh [extra cmake -D options]      (extra options force a configure)
# Configure runs when the build directory has no build.ninja, when it was configured against another Python
# environment, or when options are given; after that ninja re-runs CMake by itself when a CMakeLists.txt changes.
# The configure log goes to $BITFORGE_BUILD/configure.log; its warnings, if any, are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
need_configure=0
[ -f "$BITFORGE_BUILD/build.ninja" ] || need_configure=1
# (the cache types the entry FILEPATH or UNINITIALIZED depending on how it was first given: compare the value only)
[ "$(sed -n 's/^Python3_EXECUTABLE:[A-Z]*=//p' "$BITFORGE_BUILD/CMakeCache.txt" 2>/dev/null)" = "$BITFORGE_PYTHON" ] ||
  need_configure=1
[ $# -eq 0 ] || need_configure=1
if [ "$need_configure" = 1 ]; then
  mkdir -p "$BITFORGE_BUILD"
  start=$SECONDS
  if ! cmake -S . -B "$BITFORGE_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
       -DPython3_EXECUTABLE="$BITFORGE_PYTHON" "$@" >"$BITFORGE_BUILD/configure.log" 2>&1; then
    tail -40 "$BITFORGE_BUILD/configure.log" >&2
    echo "[build] configure failed (log: $BITFORGE_BUILD/configure.log)" >&2
    exit 1
  fi
  grep -A4 "CMake Warning" "$BITFORGE_BUILD/configure.log" || true
  echo "[build] configured in $((SECONDS - start)) s: $(grep -m1 'bitforge: torch' "$BITFORGE_BUILD/configure.log" | sed 's/^-- //')"
fi
jobs="${BITFORGE_JOBS:-$(nproc)}"
cmake --build "$BITFORGE_BUILD" -j "$jobs"
