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

if [ ${#missing_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench/ensure-deps: installing ${missing_pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
    else
        echo "bench/ensure-deps: missing ${missing_pkgs[*]}; run:" >&2
        echo "    sudo apt-get install -y ${missing_pkgs[*]}" >&2
        exit 1
    fi
fi

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
