#!/usr/bin/env bash
# Configure and build bitforge with its CUDA kernels on a lent GPU machine that has no internet and none of
# bitforge's Debian -dev packages: unpacks the .deb files carried in .deb/ (scripts/device_fetch_debs.sh)
# into .deb/root and points CMake and pkg-config at it; builds against that machine's python3 + torch.
#   scripts/device_build.sh [BUILD_DIR=build-device] [TARGET...]     (no target = configure only)
# Environment: PYTHON (default: python3 on PATH, the one holding torch there); BITFORGE_CXX (C++ compiler);
# BITFORGE_KERNELS_ONLY=1 configures -DBITFORGE_KERNELS_ONLY=ON (kernels + their tests: needs only GoogleTest from
# .deb/); BITFORGE_CUDA_ARCHITECTURES (default 90a); BITFORGE_JOBS (default nproc).
# Writes BUILD_DIR/device_env.sh (LD_LIBRARY_PATH for the unpacked libraries): source it before running binaries.
# scripts/device_gpu_check.sh runs this, the tests, compute-sanitizer and the GPU benchmark in one call.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-device}"
shift || true
repo="$PWD"
root="$repo/.deb/root"
libdir="$root/usr/lib/x86_64-linux-gnu"

# 1. Unpack the carried packages (again when the checkout moved: .pc files hold absolute paths).
if [ "$(cat "$root/.unpacked" 2>/dev/null)" != "$root" ]; then
  command -v dpkg >/dev/null || { echo "device_build: dpkg not found" >&2; exit 1; }
  ls .deb/*.deb >/dev/null || { echo "device_build: no .deb/*.deb (run scripts/device_fetch_debs.sh here, carry .deb)" >&2; exit 1; }
  rm -rf "$root"
  mkdir -p "$root"
  for f in .deb/*.deb; do dpkg -x "$f" "$root"; done
  # zlib1g-dev's libz.so points at /lib/x86_64-linux-gnu/libz.so.1.2.13 (Debian 12's runtime): use this machine's.
  if [ -L "$libdir/libz.so" ] && [ ! -e "$libdir/libz.so" ]; then
    for z in /lib/x86_64-linux-gnu/libz.so.1 /usr/lib/x86_64-linux-gnu/libz.so.1; do
      if [ -e "$z" ]; then ln -sf "$z" "$libdir/libz.so"; break; fi
    done
  fi
  # .pc files name /usr; point them at the unpacked tree.
  find "$root" -name '*.pc' -exec sed -i -e "s|^prefix=/usr\$|prefix=$root/usr|" \
    -e "s|^exec_prefix=/usr\$|exec_prefix=$root/usr|" -e "s|^libdir=/usr/|libdir=$root/usr/|" \
    -e "s|^includedir=/usr/|includedir=$root/usr/|" -e "s|-I/usr/include|-I$root/usr/include|" {} +
  echo "$root" >"$root/.unpacked"
fi

# 2. pkg-config: this machine's, else the carried pkgconf through a wrapper for its shared library. Named
# explicitly: CMake would otherwise find the carried binary first (in the prefix) and run it without its library.
export PKG_CONFIG_PATH="$libdir/pkgconfig:$root/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
pkg_config="$(command -v pkg-config || true)"
if [ -z "$pkg_config" ]; then
  mkdir -p "$root/bin"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' "$libdir" \
    "$root/usr/bin/pkgconf" >"$root/bin/pkg-config"
  chmod +x "$root/bin/pkg-config"
  pkg_config="$root/bin/pkg-config"
fi

# 3. Tools: nvcc (PATH or /usr/local/cuda), Ninja when present.
nvcc="$(command -v nvcc || true)"
[ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
[ -z "$nvcc" ] && { echo "device_build: nvcc not found" >&2; exit 1; }
generator=("Unix Makefiles")
command -v ninja >/dev/null && generator=(Ninja)
# C/C++ compiler: the first of $BITFORGE_CXX, g++ on PATH, /usr/bin/g++ whose `-lstdc++` links the shared
# libstdc++. Seen on the H100 machine (2026-11-23): its environment sets CC/CXX/CUDAHOSTCXX to /opt/gcc/bin/g++,
# whose lib/gcc/x86_64-linux-gnu/13/libstdc++.so is a dangling link, so -lstdc++ took libstdc++.a from that
# folder and libbitforge_kernels.so carried its own static libstdc++. Python loading it next to torch's
# libstdc++.so.6 then crashed in the first TORCH_CHECK message (SIGSEGV in ostream::_M_insert<long>: two copies of
# the locale facets); the C++ test executables linked the same way worked.
shared_libstdcxx() {
  printf 'int bitforge_probe() { return 0; }\n' >/tmp/bitforge_probe.cc &&
    "$1" -shared -fPIC /tmp/bitforge_probe.cc -Wl,--no-as-needed -lstdc++ -o /tmp/bitforge_probe.so 2>/dev/null &&
    readelf -d /tmp/bitforge_probe.so | grep -q 'NEEDED.*libstdc++'
}
cxx=""
for c in ${BITFORGE_CXX:-} "$(command -v g++ || true)" /usr/bin/g++; do
  if [ -n "$c" ] && [ -x "$c" ] && shared_libstdcxx "$c"; then cxx="$c"; break; fi
done
[ -z "$cxx" ] && { echo "device_build: no g++ links the shared libstdc++ (set BITFORGE_CXX)" >&2; exit 1; }
cc="$(dirname "$cxx")/$(basename "$cxx" | sed 's/g++/gcc/; s/c++$/cc/')"
[ -x "$cc" ] || cc="$(command -v gcc)"
echo "device_build: C++ compiler $cxx, C compiler $cc (environment had CC=${CC:-} CXX=${CXX:-} CUDAHOSTCXX=${CUDAHOSTCXX:-})"
# The same compiler everywhere: with nvcc's host compiler left at another g++, CMake adds that compiler's library
# folder (-L) to every link of CUDA code, and -lstdc++ finds the static archive there again.
export CC="$cc" CXX="$cxx" CUDAHOSTCXX="$cxx"
# CMake detects compilers once per build folder: start it afresh if it was configured with other ones.
if [ -f "$build/CMakeCache.txt" ] &&
   ! grep -qsx "set(CMAKE_CUDA_HOST_COMPILER \"$cxx\")" "$build"/CMakeFiles/*/CMakeCUDACompiler.cmake; then
  echo "device_build: $build was configured with another host compiler; reconfiguring from scratch"
  rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
fi
kernels_only=OFF
[ "${BITFORGE_KERNELS_ONLY:-0}" = 1 ] && kernels_only=ON

cmake -S . -B "$build" -G "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="${PYTHON:-$(command -v python3)}" -DCMAKE_CUDA_COMPILER="$nvcc" -DBITFORGE_CUDA=ON \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_C_COMPILER="$cc" -DCMAKE_CUDA_HOST_COMPILER="$cxx" \
  -DBITFORGE_CUDA_ARCHITECTURES="${BITFORGE_CUDA_ARCHITECTURES:-90a}" -DBITFORGE_KERNELS_ONLY="$kernels_only" \
  -DCMAKE_PREFIX_PATH="$root/usr" -DZLIB_ROOT="$root/usr" -DPKG_CONFIG_EXECUTABLE="$pkg_config"
echo "export LD_LIBRARY_PATH=$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" >"$build/device_env.sh"

if [ $# -gt 0 ]; then
  cmake --build "$build" -j "${BITFORGE_JOBS:-$(nproc)}" --target "$@"
  so="$build/kernels/libbitforge_kernels.so"
  if [ -f "$so" ] && ! readelf -d "$so" | grep -q 'NEEDED.*libstdc++'; then
    echo "device_build: $so does not link libstdc++.so (static copy?): Python cannot load it safely" >&2
    echo "link command:" >&2
    (cd "$build" && cmake --build . --target help >/dev/null 2>&1; ninja -t commands kernels/libbitforge_kernels.so 2>/dev/null |
      tail -1) >&2 || true
    exit 1
  fi
fi
