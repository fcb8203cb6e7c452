#!/usr/bin/env bash
# scripts/check-layers-selftest.sh (make check-layers-selftest)
# Runs scripts/check-layers.py --why on the fixtures under scripts/testdata/
# and compares its output and exit status with each fixture's `expected`:
#   layers-ok     three layers, plus every form that must not count as an
#                 edge (comments, strings, #[cfg(test)] items and modules)
#   layers-cycle  a -> b -> c -> a, through a nested `use crate::{..}` group,
#                 a child file's `super::super::` and a top-level `super::`
# Then adds one upward import to a copy of layers-ok and expects a failure;
# and gives a copy of layers-ok a `## Layers` diagram in its crate docs:
# the true one must pass, one that puts mid above top must fail (an import
# against the diagram, though the graph has no cycle), and one that leaves a
# module out must fail.
set -euo pipefail
cd "$(dirname "$0")/.."
check="${CHECK_LAYERS:-scripts/check-layers.py}"  # another copy, to test the test
fail=0
for d in scripts/testdata/layers-*/; do
    d=${d%/}
    got="$( (python3 "$check" "$d/src" --why; echo "exit $?") 2>&1 || true)"
    if [ "$got" = "$(cat "$d/expected")" ]; then
        echo "check-layers selftest: $d: as expected ($(tail -n1 "$d/expected"))"
    else
        echo "check-layers selftest: $d: output differs from $d/expected:"
        diff -u "$d/expected" <(printf '%s\n' "$got") || true
        fail=1
    fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r scripts/testdata/layers-ok/src "$tmp/src"
printf '\npub fn upward() {\n    crate::top::t();\n}\n' >> "$tmp/src/base.rs"
if out="$(python3 "$check" "$tmp/src")"; then
    echo "check-layers selftest: an upward import (base -> top) was not reported:"
    echo "$out"
    fail=1
elif ! grep -q "^cycle of 3 modules: base mid top$" <<<"$out"; then
    echo "check-layers selftest: the upward import did not give the cycle base mid top:"
    echo "$out"
    fail=1
else
    echo "check-layers selftest: layers-ok plus an upward import base -> top: fails, as expected"
fi

diagram() {  # diagram LAYER-OF-TOP LAYER-OF-MID LAYER-OF-BASE: a copy with it
    rm -rf "$tmp/d" && cp -r scripts/testdata/layers-ok/src "$tmp/d"
    { printf '//! ## Layers\n//!\n//! ```text\n'
      printf '//! %s  %s  the layer\n' "$@"
      printf '//! ```\n'
      cat scripts/testdata/layers-ok/src/lib.rs; } > "$tmp/d/lib.rs.new"
    mv "$tmp/d/lib.rs.new" "$tmp/d/lib.rs"
}
expect() {  # expect WHAT PATTERN: the checker on $tmp/d fails (or passes) so
    out="$(python3 "$check" "$tmp/d" 2>&1)" && rc=0 || rc=$?
    if [ "$1" = pass ] && [ $rc -eq 0 ] && grep -q "$2" <<<"$out"; then
        echo "check-layers selftest: $3: passes, as expected"
    elif [ "$1" = fail ] && [ $rc -eq 1 ] && grep -q "$2" <<<"$out"; then
        echo "check-layers selftest: $3: fails, as expected"
    else
        echo "check-layers selftest: $3: unexpected result (exit $rc):"
        echo "$out"
        fail=1
    fi
}
diagram 2 top 1 mid 0 base
expect pass "every import goes down the crate docs' layers" "layers-ok with its true diagram"
diagram 1 top 2 mid 0 base
expect fail "top (layer 1) imports mid (layer 2), above it" "layers-ok with mid drawn above top"
diagram 2 top 0 base
expect fail "mid is in no layer of the diagram" "layers-ok with mid left out of the diagram"
exit $fail
