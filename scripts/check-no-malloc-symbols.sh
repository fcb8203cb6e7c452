#!/usr/bin/env bash
# scripts/check-no-malloc-symbols.sh LIBPOOLS.so LIBPOOLS.a LIBPOOLS_MALLOC.so
# Fails if the plain library (shared or static) defines any function of the
# malloc family (linking -lpools must never replace a program's malloc), or
# if the preload misses one.
set -euo pipefail
family="malloc free calloc realloc reallocarray posix_memalign aligned_alloc memalign valloc pvalloc malloc_usable_size"
pattern="^($(echo $family | tr ' ' '|'))$"
so=$1 ar=$2 pre=$3
bad=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -E "$pattern" || true)
[ -z "$bad" ] || { echo "FAIL: $so defines: $bad" >&2; exit 1; }
bad=$(nm --defined-only "$ar" 2>/dev/null | awk 'NF == 3 && $2 ~ /^[TtWwi]$/ {print $3}' | grep -E "$pattern" || true)
[ -z "$bad" ] || { echo "FAIL: $ar defines: $bad" >&2; exit 1; }
for f in $family; do
    nm -D --defined-only "$pre" | awk '{print $3}' | grep -qx "$f" ||
        { echo "FAIL: $pre does not define $f" >&2; exit 1; }
done
echo "nm: libpools.so and libpools.a define no malloc-family symbol; libpools_malloc.so defines all 11"
