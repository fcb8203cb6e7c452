#!/usr/bin/env bash
# bench/larson-callgrind.sh NAME=LIB.so ... : bench/larson.c (2 threads, 4 s,
# 16..1000 B) under callgrind with its cache simulation, once per allocator
# (NAME=  with nothing after '=' is glibc's malloc). Prints, per operation
# (one free and one malloc, plus the benchmark's own loop), the instructions
# executed, and the first-level data cache read and write misses and the
# last-level ones of a 512 KiB 8-way cache (the L2 of this machine's cores).
#
# Counts, not times: they do not depend on the load of a shared machine,
# which makes one change at a time measurable where wall time is not. They
# leave out what a simulator cannot see (cross-core transfers, the
# prefetchers, branch prediction), so they explain time, they do not
# replace it. valgrind runs the threads one at a time.
#
# Operations are counted through the benchmark's own loop: its instructions
# per operation are fixed by bench/larson.c (17.34, counted once as the
# instructions of `worker` itself over the calls to malloc).
set -euo pipefail
out=target/bench-malloc
mkdir -p "$out"
gcc -O2 -g -pthread bench/larson.c -o "$out/larson"
printf '| allocator | instructions/op | D1 read misses/op | D1 write misses/op | LL read misses/op | LL write misses/op |\n'
printf '|---|---|---|---|---|---|\n'
for spec in "$@"; do
    name=${spec%%=*}
    lib=${spec#*=}
    rm -f "$out"/callgrind.*
    valgrind --tool=callgrind --cache-sim=yes --LL=524288,8,64 --trace-children=yes \
        --callgrind-out-file="$out/callgrind.%p" \
        env LD_PRELOAD="$lib" "$out/larson" 2 4 1000 > /dev/null 2>&1
    # The largest profile is larson's (the other is env's).
    profile=$(ls -S "$out"/callgrind.* | head -1)
    callgrind_annotate --show-percs=no "$profile" | python3 -c '
import sys
lines = sys.stdin.read().splitlines()
events = [l for l in lines if l.startswith("Events shown")][0].split(":")[1].split()
def counts(line):
    return [int(x.replace(",", "")) if x != "." else 0 for x in line.split()[:len(events)]]
total = dict(zip(events, counts([l for l in lines if "PROGRAM TOTALS" in l][0])))
worker = dict(zip(events, counts([l for l in lines if "larson.c:worker" in l][0])))
ops = worker["Ir"] / 17.34
print("| %s | %.1f | %.2f | %.2f | %.2f | %.2f |" % (sys.argv[1],
      *(total[e] / ops for e in ("Ir", "D1mr", "D1mw", "DLmr", "DLmw"))))
' "$name"
done
