#!/usr/bin/env bash
# What `make bench` needs beyond scripts/ensure-deps.sh (musl-gcc, jemalloc):
# mimalloc's shared library (Debian libmimalloc2.0), python3, and matplotlib
# for the PNG. Installs as root with apt-get (and matplotlib with pip);
# otherwise stops with the command to run, as scripts/ensure-deps.sh does.
set -euo pipefail

arch="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
missing_pkgs=()
[ -e "/usr/lib/$arch/libmimalloc.so.2" ] || missing_pkgs+=(libmimalloc2.0)
command -v python3 >/dev/null 2>&1 || missing_pkgs+=(python3)

scripts/apt-install.sh bench/ensure-deps "${missing_pkgs[@]}"

if ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
    echo "bench/ensure-deps: installing matplotlib with pip"
    python3 -m pip install -q matplotlib >/dev/null 2>&1 ||
        python3 -m pip install -q --user matplotlib >/dev/null 2>&1 ||
        python3 -m pip install -q --break-system-packages matplotlib >/dev/null 2>&1 || {
        echo "bench/ensure-deps: could not install matplotlib; run:" >&2
        echo "    python3 -m pip install matplotlib    (or: apt-get install python3-matplotlib)" >&2
        exit 1
    }
fi
