#!/usr/bin/env bash
# Runs the Rust unit tests and the multi-threaded stress test
# (tests/stress.rs) under ThreadSanitizer: nightly Rust, the standard
# library rebuilt with the sanitizer (-Zbuild-std), in target/tsan.
#
# `--cfg pools_tsan` keeps the legacy `rwlock` shared cache out of its
# test (its pop reads `next` of an object another popper may hold: a data
# race by design, see VERIFICATION.md).
#
# Adds the nightly toolchain's rust-src with rustup if it is missing.
# STRESS_ROUNDS (default here 1000000) sets the stress test's length.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "verify-tsan: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup +nightly component list --installed 2>/dev/null | grep -q '^rust-src'; then
    echo "verify-tsan: adding rust-src to nightly"
    rustup +nightly component add rust-src
fi

export RUSTFLAGS="-Zsanitizer=thread --cfg pools_tsan"
export RUSTDOCFLAGS="$RUSTFLAGS"
# halt_on_error: the first report fails the run (exit code 66).
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
export STRESS_ROUNDS="${STRESS_ROUNDS:-1000000}"

# panic=unwind: the test harness needs it, and with the release profile's
# panic=abort -Zbuild-std would build two standard libraries side by side.
cargo +nightly test -Zbuild-std --target "$TARGET" --target-dir target/tsan \
    --release --config 'profile.release.panic="unwind"' \
    --lib --test stress -- --test-threads=2
echo "verify-tsan: unit tests and stress test clean under ThreadSanitizer"
