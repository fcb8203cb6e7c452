#!/usr/bin/env bash
# bench/startup.sh LIBPOOLS_MALLOC.so [RUNS] [BASELINE.so]
# The preload's fixed cost per process (issues #13 and #19): page faults
# and task-clock of short programs (`perf stat -r RUNS`, default 50) under
# glibc's malloc, an empty preloaded library (the cost of loading any
# preload), the preload and an earlier build (BASELINE.so), interleaved
# in two rounds; the page faults of one fork() and its child
# (bench/forks.c, in a process that never had a second thread and in one
# that had); then what a `sqlite3 :memory:` session has resident
# (/proc/PID/smaps, KiB): the preload's code, its read-only data, and
# anonymous memory (heap included). Page-fault and resident counts are
# stable on a loaded machine; task-clock is not.
set -euo pipefail
so=$(realpath "$1") # the programs run in other directories
runs=${2:-50}
command -v perf >/dev/null 2>&1 || scripts/apt-install.sh bench/startup linux-perf
command -v sqlite3 >/dev/null 2>&1 || scripts/apt-install.sh bench/startup sqlite3
out=target/bench-startup
mkdir -p "$out"
gcc -O2 -shared -fPIC -x c - -o "$out/empty.so" <<<'int pools_bench_empty(void) { return 0; }'
gcc -O2 -pthread bench/forks.c -o "$out/forks"
declare -A LIB=([glibc]="" [empty]="$(pwd)/$out/empty.so" [pools]="$so")
ALLOCS="glibc empty pools"
if [ -n "${3:-}" ]; then
    LIB[base]=$(realpath "$3")
    ALLOCS="$ALLOCS base"
fi
raw="$out/startup.csv"
: > "$raw"
for round in 1 2; do
    for cmd in "seq 1 10" "true" "sqlite3 :memory: select_1"; do
        for a in $ALLOCS; do
            # (the underscore keeps the word splitting simple)
            set -- $cmd
            [ "$1" = sqlite3 ] && set -- sqlite3 :memory: 'select 1'
            LD_PRELOAD="${LIB[$a]}" perf stat -x, -r "$runs" -e page-faults,task-clock "$@" \
                2>"$out/perf" >/dev/null
            pf=$(awk -F, '$3 ~ /page-faults/ {print $1}' "$out/perf")
            tc=$(awk -F, '$3 ~ /task-clock/ {print $1}' "$out/perf")
            echo "$cmd,$a,$pf,$tc" >> "$raw"
        done
    done
done
forks="$out/forks.csv"
: > "$forks"
for round in 1 2; do
    for threaded in 0 1; do
        for a in $ALLOCS; do
            for n in 0 100; do
                LD_PRELOAD="${LIB[$a]}" perf stat -x, -r 5 -e page-faults "$out/forks" "$n" "$threaded" \
                    2>"$out/perf" >/dev/null
                pf=$(awk -F, '$3 ~ /page-faults/ {print $1}' "$out/perf")
                echo "$threaded,$a,$n,$pf" >> "$forks"
            done
        done
    done
done
for a in $ALLOCS; do
    printf '.system cat /proc/$PPID/smaps > %s/smaps-%s\n' "$out" "$a" |
        LD_PRELOAD="${LIB[$a]}" sqlite3 :memory: > /dev/null
done
python3 - "$raw" "$out" "$ALLOCS" "${LIB[pools]}" "${LIB[base]:-}" "$forks" <<'PY'
import csv, re, statistics, sys
raw, out, allocs = sys.argv[1], sys.argv[2], sys.argv[3].split()
libs = {"pools": sys.argv[4], "base": sys.argv[5]}
forks = sys.argv[6]
m = {}
for cmd, a, pf, tc in csv.reader(open(raw)):
    m.setdefault((cmd, a), []).append((float(pf), float(tc)))
print("Page faults and task-clock (ms) per run, medians of 2 rounds of perf stat -r N\n")
print("| program | " + " | ".join(f"{a} faults | {a} ms" for a in allocs) + " |")
print("|---|" + "---|---|" * len(allocs))
for cmd in dict.fromkeys(k[0] for k in m):
    row = []
    for a in allocs:
        v = m[(cmd, a)]
        row += [f"{statistics.median(x for x, _ in v):.0f}", f"{statistics.median(y for _, y in v):.2f}"]
    print(f"| {cmd.replace('select_1', chr(39) + 'select 1' + chr(39))} | " + " | ".join(row) + " |")

f = {}
for threaded, a, n, pf in csv.reader(open(forks)):
    f.setdefault((threaded, a, int(n)), []).append(float(pf))
print("\nPage faults per fork (bench/forks.c: parent and child, (faults of 100 forks - of none) / 100, median of 2 rounds of perf stat -r 5)\n")
print("| process | " + " | ".join(allocs) + " |")
print("|---|" + "---|" * len(allocs))
for threaded, name in (("0", "single-threaded"), ("1", "after a thread")):
    row = [f"{(statistics.median(f[(threaded, a, 100)]) - statistics.median(f[(threaded, a, 0)])) / 100:.1f}" for a in allocs]
    print(f"| {name} | " + " | ".join(row) + " |")

def resident(path, lib):
    name = lib.rsplit("/", 1)[-1] if lib else None
    kinds = {"code": 0, "rodata": 0, "anon": 0, "total": 0}
    cur = None
    for line in open(path):
        h = re.match(r"^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \S+\s*(.*)$", line)
        if h:
            perm, file = h.groups()
            base = file.rsplit("/", 1)[-1]
            if name and base == name:
                cur = "code" if "x" in perm else ("rodata" if perm.startswith("r--") else None)
            elif not file or file == "[heap]":
                cur = "anon"
            else:
                cur = None
            continue
        if line.startswith("Rss:"):
            kb = int(line.split()[1])
            kinds["total"] += kb
            if cur:
                kinds[cur] += kb
    return kinds

print("\nsqlite3 :memory: resident KiB (smaps): the preload's code and read-only data, anonymous memory, total\n")
print("| build | code | rodata | anon | total |")
print("|---|---|---|---|---|")
for a in allocs:
    k = resident(f"{out}/smaps-{a}", libs.get(a))
    print(f"| {a} | {k['code']} | {k['rodata']} | {k['anon']} | {k['total']} |")
PY
