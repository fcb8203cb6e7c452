#!/usr/bin/env bash
# security/run.sh OUT: runs the security suite (security/README.md), built
# by `make bench-security` into OUT, under each allocator there is, and
# prints the table of caught cases, kind by allocator (security/table.py).
#   glibc      malloc_suite on the libc's malloc
#   preload    malloc_suite under LD_PRELOAD=libpools_malloc.so
#   preload-canary  the same with POOL_DEBUG=canary (sealed headers, canaries)
#   preload-uaf  the same with POOL_DEBUG=uaf (a mapping per block)
#   jemalloc   malloc_suite under LD_PRELOAD of Debian's libjemalloc.so.2
#   mimalloc   malloc_suite under LD_PRELOAD of Debian's libmimalloc.so.2
#   C API      pools_suite, linked with -lpools, default mode
#   C API tag  pools_suite with POOL_DEBUG=tag
# The raw lines of each run go to OUT/<name>.txt.
set -eu
cd "$(dirname "$0")/.."
out=${1:-target/security}
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
preload=$PWD/target/release/libpools_malloc.so
je=$(scripts/jemalloc-path.sh)
mi=/usr/lib/$multiarch/libmimalloc.so.2
names=()
run() { # name, then the command
  local name=$1; shift
  echo "== $name: $*" >&2
  # A run's exit status says whether a twin failed: the table shows it.
  "$@" > "$out/$name.txt" || true
  names+=("$name")
}
run glibc "$out/malloc_suite"
run preload env LD_PRELOAD="$preload" "$out/malloc_suite"
run preload-canary env POOL_DEBUG=canary LD_PRELOAD="$preload" "$out/malloc_suite"
run preload-uaf env POOL_DEBUG=uaf LD_PRELOAD="$preload" "$out/malloc_suite"
if [ -f "$je" ]; then run jemalloc env LD_PRELOAD="$je" "$out/malloc_suite"
else echo "no $je: jemalloc left out" >&2; fi
if [ -f "$mi" ]; then run mimalloc env LD_PRELOAD="$mi" "$out/malloc_suite"
else echo "no $mi: mimalloc left out" >&2; fi
run "C-API" "$out/pools_suite"
run "C-API-tag" env POOL_DEBUG=tag "$out/pools_suite"
python3 security/table.py "$out" "${names[@]}"
