#!/usr/bin/env bash
# Runs every C test (c-tests/test_*.c, the glibc build against
# target/release/libpools.so) under valgrind's memcheck: any error, or any
# definitely lost byte, fails the run.
#
# --trace-children=yes follows the tests that re-execute themselves (to read
# the environment at start-up); forked children are followed anyway.
# Reachable and "possibly lost" blocks are listed but do not fail: pool heads
# are never freed by design, and objects parked in caches at exit are still
# reachable from them.
#
# Usage: scripts/verify-valgrind.sh [test_name...]   (default: every C test)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null 2>&1 || scripts/apt-install.sh verify-valgrind valgrind

CC=${CC:-gcc}
OUT=target/c-tests/glibc
CFLAGS="-O2 -g -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -Iinclude"

cargo build --release
mkdir -p "$OUT" target/valgrind

if [ $# -gt 0 ]; then tests=("$@"); else
    tests=(); for f in c-tests/test_*.c; do tests+=("$(basename "$f" .c)"); done
fi

failed=()
for t in "${tests[@]}"; do
    $CC $CFLAGS "c-tests/$t.c" -o "$OUT/$t" -Ltarget/release -lpools \
        -Wl,-rpath,"$PWD/target/release"
    args=()
    # test_race's CI run makes the legacy `dwcas` cache fault on purpose (an
    # error memcheck would rightly report) and lasts ~25 s natively. Under
    # valgrind it runs one soak of the default `xchg` cache instead: the
    # same traffic over the unmap-on-free backend, with the widened window.
    [ "$t" = test_race ] && args=(soak xchg 5 2000)
    echo "== valgrind $t ${args[*]}"
    log=target/valgrind/$t.log
    rm -f "$log".*
    if ! valgrind --quiet --error-exitcode=1 --leak-check=full \
            --errors-for-leak-kinds=definite --show-leak-kinds=definite \
            --trace-children=yes --log-file="$log.%p" "$OUT/$t" "${args[@]}"; then
        failed+=("$t")
    fi
    # Every process's report (children included): print anything valgrind said.
    for f in "$log".*; do
        if [ -s "$f" ]; then echo "-- $f"; cat "$f"; fi
    done
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "verify-valgrind: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "verify-valgrind: ${#tests[@]} C tests clean under valgrind memcheck"
