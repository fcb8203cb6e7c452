#!/usr/bin/env bash
# bench/seeds-callgrind.sh [SIZE [THREADS...]]: the shared cache's own
# instructions per operation in the `seeds` workload (musl build, default
# 2 MiB, 1 and 4 threads), per variant, over the default buckets and over one
# head (POOL_SHARED_BUCKETS=1), under callgrind.
#
# Objects of 256 KiB and more skip the thread cache, so every operation (one
# pool_alloc and one pool_free) is one take from the shared cache and one put
# into it. Printed per operation: the inclusive instructions of the take
# (Pool::take_from_shared, which dispatches to every variant's take) and of
# the put (Pool::release_cluster, likewise), and the instructions of the
# whole process (its start and the benchmark's loop included).
#
# Counts, not times: callgrind runs the threads one at a time, so it shows
# what each head discipline executes, not what contention costs. Under
# valgrind the library takes its debugging path around the shared cache
# (objects get a valgrind prefix); the shared-cache code is the same.
set -euo pipefail
size=${1:-2097152}
shift || true
threads=("$@")
[ ${#threads[@]} -gt 0 ] || threads=(1 4)
bin=target/bench/bench-musl
out=target/bench/callgrind-seeds
mkdir -p "$out"
printf '| threads | variant | buckets | take instr/op | put instr/op | process instr/op |\n'
printf '|---|---|---|---|---|---|\n'
for t in "${threads[@]}"; do
    for b in 4 1; do
        for v in xchg dwcas rwlock locked; do
            f="$out/$v-$b-$t.out"
            res=$(POOL_SHARED_BUCKETS=$b POOL_SHARED_CACHE=$v valgrind --tool=callgrind \
                --callgrind-out-file="$f" "$bin" pool seeds "$size" "$t" 200 2>/dev/null) || {
                printf '| %s | %s | %s | crashed | | |\n' "$t" "$v" "$b"
                continue
            }
            ops=$(sed -n 's/.*ops_all=\([0-9]*\).*/\1/p' <<<"$res")
            callgrind_annotate --inclusive=yes "$f" 2>/dev/null | python3 -c '
import re, sys
ops = int(sys.argv[1])
fn = {}
total = 0
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S+?):(.+?) \[", line)
    if m:
        fn[m.group(3)] = fn.get(m.group(3), 0) + int(m.group(1).replace(",", ""))
    m = re.match(r"\s*([\d,]+)\s+\(100.0%\)\s+PROGRAM TOTALS", line)
    if m:
        total = int(m.group(1).replace(",", ""))
take = sum(v for k, v in fn.items() if k.endswith("Pool::take_from_shared"))
put = sum(v for k, v in fn.items() if k.endswith("Pool::release_cluster"))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {take / ops:.1f} | "
      f"{put / ops:.1f} | {total / ops:.1f} |")
' "$ops" "$t" "$v" "$b"
        done
    done
done
