#!/usr/bin/env bash
# bench/malloc-bench.sh LIBPOOLS_MALLOC.so [ROUNDS] [BASELINE.so]
# The preload against glibc's malloc, jemalloc and mimalloc (Debian packages,
# preloaded the same way): bench/larson.c (larson-like, 2 threads, cross-
# thread frees; ops/s), bench/large.c (issue #19's large-block pattern: blocks
# of 5 to 25 MiB, at most 20 live, freed and allocated again; seconds),
# bench/prodcons.c (small blocks made on one thread, freed on another;
# seconds) and the real programs of scripts/malloc-programs.sh
# (wall seconds, and CPU seconds: user + system of the program and its
# children, less sensitive to other load on a shared machine). Rounds
# interleave the allocators; medians are reported, and ratios to glibc (and
# to mimalloc). With BASELINE.so (an earlier build of the preload), it runs
# as "base" in the same rounds and a "pools vs base" column is added: a
# before/after comparison under the same machine load. Prints markdown tables.
# MALLOC_BENCH_ONLY=large runs bench/large.c alone (make bench-malloc-large);
# MALLOC_BENCH_ONLY=git (or python, sort, gcc) runs that program alone.
set -euo pipefail
so=$(realpath "$1") # the programs run in other directories
rounds=${2:-5}
arch="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
declare -A LIB=([glibc]="" [pools]="$so" [jemalloc]="/usr/lib/$arch/libjemalloc.so.2"
                [mimalloc]="/usr/lib/$arch/libmimalloc.so.2")
ALLOCS="glibc pools jemalloc mimalloc"
if [ -n "${3:-}" ]; then
    LIB[base]=$(realpath "$3")
    ALLOCS="$ALLOCS base"
fi
out=target/bench-malloc
mkdir -p "$out"
gcc -O2 -g -pthread bench/larson.c -o "$out/larson"
gcc -O2 -g bench/large.c -o "$out/large"
gcc -O2 -g -pthread bench/prodcons.c -o "$out/prodcons"
MALLOC_PROGRAMS_LIB=1 source scripts/malloc-programs.sh
prepare
only=${MALLOC_BENCH_ONLY:-}
if [ "$only" = large ]; then
    WORKLOADS=""
elif [ -n "$only" ]; then
    case " $WORKLOADS " in
    *" $only "*) WORKLOADS=$only ;;
    *) echo "malloc-bench: MALLOC_BENCH_ONLY=$only: not large nor one of $WORKLOADS" >&2; exit 1 ;;
    esac
fi
raw="$out/raw.csv"
: > "$raw"
export WORK
[ -z "$WORKLOADS" ] || export -f $(for w in $WORKLOADS; do echo "run_$w"; done)
for r in $(seq 1 "$rounds"); do
    for a in $ALLOCS; do
        if [ -z "$only" ]; then
            v=$(LD_PRELOAD="${LIB[$a]}" "$out/larson" 2 1.5 1000)
            echo "larson,$a,$v,0" >> "$raw"
            v=$(LD_PRELOAD="${LIB[$a]}" "$out/prodcons" 2000000)
            read -r wall cpu <<< "$v"
            echo "prodcons,$a,$wall,$cpu" >> "$raw"
        fi
        if [ -z "$only" ] || [ "$only" = large ]; then
            v=$(LD_PRELOAD="${LIB[$a]}" "$out/large")
            read -r wall cpu faults <<< "$v"
            echo "large,$a,$wall,$cpu" >> "$raw"
            echo "large-faults,$a,$faults,0" >> "$raw"
        fi
        for w in $WORKLOADS; do
            # GNU time reports the rusage of the program and every
            # descendant it waited for: wall, user and system seconds.
            /usr/bin/time -f "%e %U %S" -o "$out/time" \
                env LD_PRELOAD="${LIB[$a]}" bash -c "run_$w" > /dev/null
            read -r wall user sys < "$out/time"
            echo "$w,$a,$wall,$(echo "$user + $sys" | bc -l)" >> "$raw"
        done
    done
    echo "round $r/$rounds done" >&2
done
python3 - "$raw" <<'PY'
import csv, statistics, sys
m, cpu = {}, {}
for w, a, v, c in csv.reader(open(sys.argv[1])):
    m.setdefault((w, a), []).append(float(v))
    cpu.setdefault((w, a), []).append(float(c))
allocs = ["glibc", "pools", "jemalloc", "mimalloc"]
base = any(a == "base" for _, a in m)
if base:
    allocs.append("base")
def table(title, data, works):
    med = {k: statistics.median(v) for k, v in data.items()}
    print(title + "\n")
    print("| workload | unit | " + " | ".join(allocs) + " | pools vs glibc | pools vs jemalloc | pools vs mimalloc |"
          + (" pools vs base |" if base else ""))
    print("|---|---|" + "---|" * (len(allocs) + 3 + base))
    for w in [w for w in works if (w, "glibc") in data]:
        unit = ("Mops/s (higher is better)" if w == "larson" else
                "thousands (lower is better)" if w == "large-faults" else "s (lower is better)")
        scale = 1e-6 if w == "larson" else 1e-3 if w == "large-faults" else 1
        vals = " | ".join("%.3f" % (med[(w, a)] * scale) for a in allocs)
        def ratio(other):   # speed ratio: >1 is faster than the other
            if w == "larson":
                return med[(w, "pools")] / med[(w, other)]
            return med[(w, other)] / max(med[(w, "pools")], 1e-9)
        extra = " %.2fx |" % ratio("base") if base else ""
        print("| %s | %s | %s | %.2fx | %.2fx | %.2fx |%s" % (w, unit, vals, ratio("glibc"), ratio("jemalloc"),
                                                       ratio("mimalloc"), extra))
    print()
table("Wall time (larson: throughput), medians of %d rounds" % max(len(v) for v in m.values()),
      m, ["larson", "prodcons", "large", "python", "sort", "gcc", "git"])
table("CPU time (user + system, program and children), medians", cpu,
      ["prodcons", "large", "python", "sort", "gcc", "git"])
if ("large-faults", "glibc") in m:
    table("Minor page faults of bench/large.c's loop, medians (fewer is better)", m,
          ["large-faults"])
print("Ratios are speed ratios (pools speed / other speed): above 1.00x, the preload is faster.")
PY
