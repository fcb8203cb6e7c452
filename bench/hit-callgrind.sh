#!/usr/bin/env bash
# bench/hit-callgrind.sh [LIBDIR]: instructions per pool_alloc and per
# pool_free on the cache-hit path, and per malloc and free of the
# LD_PRELOAD malloc (libpools_malloc.so, 64 B and 1 KiB), counted by
# callgrind (stable on a loaded machine). bench/hit.c keeps a window of 64 live objects and replaces one
# per step, as ../shared/floor/ does; two runs that differ by 100,000 steps
# give the per-call counts: the instructions executed in the function's own
# code (inlined parts included, whatever source file they came from).
# LIBDIR: where libpools.so is (default target/release, built first).
set -eu
cd "$(dirname "$0")/.."
lib=$(cd "${1:-target/release}" && pwd)
[ -f "$lib/libpools.so" ] || { echo "no $lib/libpools.so: run cargo build --release" >&2; exit 2; }
out=target/bench/hit; mkdir -p "$out"
gcc -O2 -Iinclude bench/hit.c -o "$out/hit" -L"$lib" -lpools -Wl,-rpath,"$lib"
for n in 100000 200000; do
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.$n" "$out/hit" $n 2>/dev/null
done
count() { callgrind_annotate --threshold=100 "$1" 2>/dev/null |
  awk -v fn="$2" '$0 ~ (":" fn "( \\[|$)") { gsub(",", "", $1); s += $1 } END { print s + 0 }'; }
per_call() { # per_call PREFIX FN...: the difference of the two runs per step
  local pre=$1; shift
  for fn in "$@"; do
    a=$(count "$pre.100000" $fn); b=$(count "$pre.200000" $fn)
    awk -v fn=$fn -v a="$a" -v b="$b" 'BEGIN { printf "%s: %.2f instructions per call\n", fn, (b - a) / 100000 }'
  done
}
per_call "$out/cg" pool_alloc pool_free
[ -f "$lib/libpools_malloc.so" ] || exit 0
gcc -O2 bench/malloc-hit.c -o "$out/malloc-hit"
for size in 64 1024; do
  for n in 100000 200000; do
    LD_PRELOAD="$lib/libpools_malloc.so" valgrind --tool=callgrind \
      --callgrind-out-file="$out/mcg.$size.$n" "$out/malloc-hit" $n $size 2>/dev/null
  done
  echo "libpools_malloc.so, $size bytes:"
  per_call "$out/mcg.$size" malloc free | sed 's/^/  /'
done
