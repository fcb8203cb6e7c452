#!/usr/bin/env bash
# Makes sure the tools `make test` needs are here: musl-gcc, the Rust musl
# target, and jemalloc's shared library. Installs what it can (as root with
# apt-get; rustup for the target); otherwise stops with the command to run.
set -euo pipefail

missing_pkgs=()
command -v musl-gcc >/dev/null 2>&1 || missing_pkgs+=(musl-tools)
[ -e "$(scripts/jemalloc-path.sh)" ] || missing_pkgs+=(libjemalloc2)
command -v valgrind >/dev/null 2>&1 || missing_pkgs+=(valgrind)

scripts/apt-install.sh ensure-deps "${missing_pkgs[@]}"

if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    echo "ensure-deps: adding the Rust target x86_64-unknown-linux-musl"
    rustup target add x86_64-unknown-linux-musl || {
        echo "ensure-deps: run: rustup target add x86_64-unknown-linux-musl" >&2
        exit 1
    }
fi
