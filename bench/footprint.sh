#!/usr/bin/env bash
# bench/footprint.sh LIBPOOLS_MALLOC.so [ROUNDS] [BASELINE.so]
# Peak resident memory (GNU time's %M: the largest maximum RSS among the
# program and the children it waited for, in KiB) of real programs under
# glibc's malloc and under the preload (and an earlier build, BASELINE.so;
# with CANARY=1 in the environment, also the preload with
# POOL_DEBUG=canary, and a second table of CPU time, user + system):
# the workloads of scripts/malloc-programs.sh (python, sort, gcc, git) and a
# sqlite3 session (a table of 200000 rows, an index, a join, an update, a
# vacuum). Rounds interleave the allocators; medians and ratios to glibc
# are printed as a markdown table (lower is better). With EVICT=1, each
# preload's file is written back and dropped from the page cache before
# each of its runs (pages not yet written back cannot be dropped),
# so that the loader reads it from disk as the system's other libraries
# were read (a file just written sits in the page cache in large folios,
# which the kernel maps whole at a fault, within the mapping of a segment).
# FOOTPRINT_ONLY="sqlite" (or any of the workloads, space-separated) runs
# only those: more rounds of one in the same time.
set -euo pipefail
so=$(realpath "$1") # the programs run in other directories
rounds=${2:-3}
declare -A LIB=([glibc]="" [pools]="$so")
ALLOCS="glibc pools"
declare -A DEBUG_OF=([glibc]="" [pools]="")
if [ -n "${3:-}" ]; then
    LIB[base]=$(realpath "$3")
    DEBUG_OF[base]=""
    ALLOCS="$ALLOCS base"
fi
if [ "${CANARY:-0}" = 1 ]; then
    LIB[canary]=$so
    DEBUG_OF[canary]=canary
    ALLOCS="$ALLOCS canary"
fi
command -v sqlite3 >/dev/null 2>&1 || scripts/apt-install.sh bench/footprint sqlite3
out=target/bench-malloc
mkdir -p "$out"
MALLOC_PROGRAMS_LIB=1 source scripts/malloc-programs.sh
prepare
cat > "$WORK/footprint.sql" <<'SQL'
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, v INTEGER, pad BLOB);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000)
INSERT INTO t SELECT i, 'name' || (i * 7919 % 200000), i % 997, zeroblob(i % 300) FROM c;
CREATE INDEX t_name ON t(name);
CREATE TABLE u AS SELECT v, count(*) AS n, sum(length(pad)) AS s FROM t GROUP BY v;
SELECT count(*), sum(u.n), sum(t.id % 13) FROM t JOIN u ON t.v = u.v WHERE t.name LIKE 'name1%';
UPDATE t SET name = upper(name) WHERE id % 3 = 0;
SELECT name FROM t ORDER BY name DESC LIMIT 3;
VACUUM;
SELECT count(DISTINCT name) FROM t;
SQL
run_sqlite() {
    rm -f "$WORK/footprint.db"
    sqlite3 "$WORK/footprint.db" < "$WORK/footprint.sql" | md5sum
    rm -f "$WORK/footprint.db"
}
works=${FOOTPRINT_ONLY:-$WORKLOADS sqlite}
export WORK
export -f $(for w in $works; do echo "run_$w"; done)
raw="$out/footprint.csv"
: > "$raw"
for r in $(seq 1 "$rounds"); do
    for a in $ALLOCS; do
        for w in $works; do
            if [ "${EVICT:-0}" = 1 ] && [ -n "${LIB[$a]}" ]; then
                python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "${LIB[$a]}"
            fi
            /usr/bin/time -f "%M,%U,%S" -o "$out/time" \
                env POOL_DEBUG="${DEBUG_OF[$a]}" LD_PRELOAD="${LIB[$a]}" bash -c "run_$w" > /dev/null
            echo "$w,$a,$(tail -n 1 "$out/time")" >> "$raw"
        done
    done
    echo "round $r/$rounds done" >&2
done
python3 - "$raw" "$ALLOCS" <<'PY'
import csv, statistics, sys
m, cpu = {}, {}
for w, a, v, u, s in csv.reader(open(sys.argv[1])):
    m.setdefault((w, a), []).append(float(v))
    cpu.setdefault((w, a), []).append(float(u) + float(s))
allocs = sys.argv[2].split()
works = list(dict.fromkeys(w for w, _ in m))
print("Peak RSS (KiB, medians of %d rounds; lower is better)\n" % len(m[(works[0], "glibc")]))
print("| workload | " + " | ".join(allocs) + " | pools / glibc |" + (" base / glibc |" if "base" in allocs else ""))
print("|---|" + "---|" * (len(allocs) + 1 + ("base" in allocs)))
for w in works:
    med = {a: statistics.median(m[(w, a)]) for a in allocs}
    row = "| %s | %s | %.3fx |" % (w, " | ".join("%d" % med[a] for a in allocs), med["pools"] / med["glibc"])
    if "base" in allocs:
        row += " %.3fx |" % (med["base"] / med["glibc"])
    print(row)
if "canary" in allocs:
    print("\nWith canary: peak RSS and CPU time (s, user + system), medians, ratios to the preload without it\n")
    print("| workload | RSS canary / pools | CPU glibc | CPU pools | CPU canary | CPU canary / pools | CPU canary / glibc |")
    print("|---|---|---|---|---|---|---|")
    for w in works:
        r = {a: statistics.median(m[(w, a)]) for a in allocs}
        c = {a: statistics.median(cpu[(w, a)]) for a in allocs}
        print("| %s | %.3fx | %.2f | %.2f | %.2f | %.2fx | %.2fx |" % (w, r["canary"] / r["pools"],
              c["glibc"], c["pools"], c["canary"], c["canary"] / c["pools"], c["canary"] / c["glibc"]))
PY
