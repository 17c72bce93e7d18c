# Sourced by the other scripts: where the cached Python environment (with LibTorch) lives.
BITFORGE_VENV="${BITFORGE_VENV:-$HOME/.cache/bitforge/venv}"
BITFORGE_PYTHON="$BITFORGE_VENV/bin/python"
BITFORGE_BUILD="${BITFORGE_BUILD:-build}"
export BITFORGE_VENV BITFORGE_PYTHON BITFORGE_BUILD
# ccache keeps object files across fresh clones on the same machine (CI builds from a clean clone).
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/bitforge/ccache}"
export CCACHE_SLOPPINESS="pch_defines,time_macros,include_file_mtime,include_file_ctime"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}"
