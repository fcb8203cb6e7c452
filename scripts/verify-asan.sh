#!/usr/bin/env bash
# Builds every C test (c-tests/test_*.c) with AddressSanitizer and
# LeakSanitizer and runs it against the ordinary target/release/libpools.so.
#
# Only the C side is instrumented. ASan intercepts malloc/posix_memalign/free
# process-wide, so the pool objects the library gets from posix_memalign
# (objects above 32 KiB, or every object with POOL_BACKEND=malloc) sit
# between redzones: a C test that writes past the end of one, or uses memory
# after the library gave it back to malloc, is reported. Objects up to
# 32 KiB come from the library's mmap'd spans by default, which have no
# redzones. The library finds ASan's runtime in the process and poisons
# every object while a cache holds it, so a use after pool_free is reported
# as use-after-poison (README.md, "valgrind and AddressSanitizer").
#
# Usage: scripts/verify-asan.sh [test_name...]   (default: every C test)
set -euo pipefail
cd "$(dirname "$0")/.."

CC=${CC:-gcc}
OUT=target/c-tests/asan
CFLAGS_ASAN="-O1 -g -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -Iinclude \
  -fsanitize=address -fno-omit-frame-pointer"

cargo build --release
mkdir -p "$OUT"

if [ $# -gt 0 ]; then tests=("$@"); else
    tests=(); for f in c-tests/test_*.c; do tests+=("$(basename "$f" .c)"); done
fi

# detect_leaks: LeakSanitizer at exit. allocator_may_return_null: test_errors
# caps RLIMIT_AS to get ENOMEM from the library, which must see NULL from
# posix_memalign rather than ASan aborting. abort_on_error=0, exitcode=23: a
# report fails the test with a recognisable status.
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:halt_on_error=1:exitcode=23:${ASAN_OPTIONS:-}"

failed=()
for t in "${tests[@]}"; do
    $CC $CFLAGS_ASAN "c-tests/$t.c" -o "$OUT/$t" -Ltarget/release -lpools \
        -Wl,-rpath,"$PWD/target/release"
    extra=
    # test_errors' gc-and-retry child needs free() of a large block to give
    # the address space back at once; ASan's quarantine holds it instead.
    [ "$t" = test_errors ] && extra=quarantine_size_mb=0
    # test_race expects the legacy `dwcas` child to die of SIGSEGV/SIGBUS;
    # ASan would catch the signal and exit instead.
    [ "$t" = test_race ] && extra=handle_segv=0:handle_sigbus=0
    echo "== asan $t ${extra}"
    if ! ASAN_OPTIONS="$ASAN_OPTIONS${extra:+:$extra}" "$OUT/$t"; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "verify-asan: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "verify-asan: ${#tests[@]} C tests clean under AddressSanitizer + LeakSanitizer"
