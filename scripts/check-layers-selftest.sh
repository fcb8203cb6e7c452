#!/usr/bin/env bash
# scripts/check-layers-selftest.sh (make check-layers-selftest)
# Runs scripts/check-layers.py --why on the fixtures under scripts/testdata/
# and compares its output and exit status with each fixture's `expected`:
#   layers-ok     three layers, plus every form that must not count as an
#                 edge (comments, strings, #[cfg(test)] items and modules)
#   layers-cycle  a -> b -> c -> a, through a nested `use crate::{..}` group,
#                 a child file's `super::super::` and a top-level `super::`
# Then adds one upward import to a copy of layers-ok and expects a failure.
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
exit $fail
