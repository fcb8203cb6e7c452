#!/usr/bin/env bash
# Runs the Rust unit tests and the stress test (tests/stress.rs) under Miri:
# undefined behaviour, Stacked Borrows aliasing violations, data races
# (Miri's own detector, with weak-memory emulation), and memory leaks at exit
# all fail the run.
#
# Adds the nightly toolchain's miri and rust-src components with rustup if
# they are missing. Under Miri the code takes a few documented detours
# (cfg(miri)): SeqCst fences instead of membarrier (which Miri cannot run),
# no malloc_trim lookup through dlsym, a 256-slot thread-cache table, and
# fewer test iterations.
#
# Extra Miri flags can be passed in MIRIFLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "verify-miri: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
installed=$(rustup +nightly component list --installed 2>/dev/null)
for c in miri rust-src; do
    if ! grep -q "^$c" <<<"$installed"; then
        echo "verify-miri: adding $c to nightly"
        rustup +nightly component add "$c"
    fi
done

cargo +nightly miri setup
cargo +nightly miri test --lib --test stress

# The stress test again over more schedules: Miri picks thread switches and
# weak-memory outcomes from a seeded generator; each seed is one more run
# (MIRI_SEEDS, default 8: about a minute and a half on two cores).
seeds=${MIRI_SEEDS:-8}
MIRIFLAGS="-Zmiri-many-seeds=0..$seeds ${MIRIFLAGS:-}" cargo +nightly miri test --test stress
echo "verify-miri: unit tests and stress test clean under Miri"
