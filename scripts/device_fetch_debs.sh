#!/usr/bin/env bash
# Run HERE (a Debian machine with internet), before a call to the lent GPU machine, which has no internet and
# none of bitforge's Debian -dev packages. Downloads them as .deb files into .deb/ (git-ignored; never commit
# it), ~3.5 MB. Carry `.deb` with the call; scripts/device_build.sh unpacks them there into .deb/root.
#   scripts/device_fetch_debs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deb
cd .deb
# -dev packages for find_package/pkg-config, runtime libraries that the binaries link, pkgconf (in case the
# GPU machine has no pkg-config). zlib's runtime is on every machine and is not carried.
apt-get download \
  libyaml-cpp-dev libyaml-cpp0.7 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libcli11-dev nlohmann-json3-dev \
  libsentencepiece-dev libsentencepiece0 libgtest-dev libgmock-dev zlib1g-dev pkgconf pkgconf-bin libpkgconf3
ls -l
