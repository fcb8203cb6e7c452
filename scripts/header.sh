#!/usr/bin/env bash
# scripts/header.sh check|update
#
# build.rs generates the C header from the sources into cargo's OUT_DIR
# (target/release/build/pools-<hash>/out/pools.h); include/pools.h is the
# committed copy that the C tests, the demo and `make install` use.
#   check   (make check-header) diff the two; exit 1 when they differ
#   update  (make header) copy the generated header over include/pools.h
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in check|update) ;; *) echo "usage: $0 check|update" >&2; exit 2 ;; esac

# The build-script-executed message names the OUT_DIR of this build.
json="$("${CARGO:-cargo}" build --release -p pools --lib --message-format=json-render-diagnostics)"
out_dir="$(printf '%s\n' "$json" | grep '"reason":"build-script-executed"' |
    grep -o '"out_dir":"[^"]*/build/pools-[0-9a-f]*/out"' | sed 's/^"out_dir":"//; s/"$//' | tail -n1)"
gen="$out_dir/pools.h"
[ -n "$out_dir" ] && [ -f "$gen" ] || { echo "$0: cargo did not report the generated header" >&2; exit 1; }

if [ "$mode" = update ]; then
    if cmp -s "$gen" include/pools.h; then
        echo "include/pools.h is already what the sources generate"
    else
        cp "$gen" include/pools.h
        echo "include/pools.h updated from $gen: review it (git diff include/pools.h) and commit it"
    fi
    exit 0
fi

if ! diff -u --label include/pools.h --label "generated ($gen)" include/pools.h "$gen"; then
    echo "" >&2
    echo "include/pools.h (committed) differs from the header the sources generate (diff above)." >&2
    echo "If you changed the C API on purpose: make header, review, commit include/pools.h." >&2
    exit 1
fi
echo "include/pools.h matches the header the sources generate"
