#!/usr/bin/env bash
# bench/floor-pairs.sh N SIZE THREADS NAME=REPO...: runs ../shared/floor/run.sh
# (SIZE, THREADS) for each build in turn until each has N runs in which the
# threads ran at once, judged by the floor itself (below 1.9 ns per step
# with two threads, 3.6 ns with one; LIMIT=ns to change it), or 15 minutes
# pass; prints libpools/floor of the kept runs, sorted, and how many runs
# were dropped. Each REPO holds include/pools.h and target/release/libpools.so.
# On a machine shared with other builds the dropped runs are those during
# which another process held a CPU. BENCHMARKS.md, issue #13.
set -euo pipefail
n=$1 size=$2 th=$3
shift 3
floor=${FLOOR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/floor/run.sh}
[ -x "$floor" ] || floor=/work/shared/floor/run.sh
limit=${LIMIT:-1.9}
[ "$th" = 1 ] && limit=${LIMIT:-3.6}
declare -A res=() cnt=() drop=()
end=$((SECONDS + 900))
while [ $SECONDS -lt $end ]; do
    left=0
    for nr in "$@"; do
        name=${nr%%=*} repo=${nr#*=}
        [ "${cnt[$name]:-0}" -ge "$n" ] && continue
        left=1
        mkdir -p "${TMPDIR:-/tmp}/floor-pairs-$name"
        out=$(TMPDIR="${TMPDIR:-/tmp}/floor-pairs-$name" "$floor" "$repo" "$size" "$th" 2>&1)
        ratio=$(echo "$out" | sed -n 's/libpools\/floor = \([0-9.]*\).*/\1/p')
        fl=$(echo "$out" | awk '$1 == "floor" { print $2 }')
        if awk "BEGIN { exit !($fl < $limit) }"; then
            res[$name]="${res[$name]:-} $ratio"
            cnt[$name]=$((${cnt[$name]:-0} + 1))
        else
            drop[$name]=$((${drop[$name]:-0} + 1))
        fi
    done
    [ $left = 0 ] && break
done
for nr in "$@"; do
    name=${nr%%=*}
    echo "$size B, $th thread(s), $name: $(echo ${res[$name]:-} | tr ' ' '\n' | sort -n | tr '\n' ' ')(dropped ${drop[$name]:-0})"
done
