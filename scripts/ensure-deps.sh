#!/usr/bin/env bash
# Makes sure the tools `make test` needs are here: musl-gcc, the Rust musl
# target, and jemalloc's shared library. Installs what it can (as root with
# apt-get; rustup for the target); otherwise stops with the command to run.
set -euo pipefail

missing_pkgs=()
command -v musl-gcc >/dev/null 2>&1 || missing_pkgs+=(musl-tools)
[ -e "$(scripts/jemalloc-path.sh)" ] || missing_pkgs+=(libjemalloc2)
command -v valgrind >/dev/null 2>&1 || missing_pkgs+=(valgrind)

if [ ${#missing_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "ensure-deps: installing ${missing_pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_pkgs[@]}" >/dev/null
    else
        echo "ensure-deps: missing ${missing_pkgs[*]}; run:" >&2
        echo "    sudo apt-get install -y ${missing_pkgs[*]}" >&2
        exit 1
    fi
fi

if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    echo "ensure-deps: adding the Rust target x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl || {
        echo "ensure-deps: run: rustup target add x86_64-unknown-linux-musl" >&2
        exit 1
    }
fi
