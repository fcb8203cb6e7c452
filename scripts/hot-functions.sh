#!/usr/bin/env bash
# scripts/hot-functions.sh [--check] [LIBPOOLS_MALLOC.so]
# Writes malloc/hot-functions.txt: the functions of the preload that
# programs run (seq, python3, sort, sqlite3, git, gcc, two threaded
# benchmarks and the large-block one), found with callgrind, as patterns of
# their section names. malloc/build.rs places them in a segment of their
# own, so the pages a process runs sit together (see its docs). Run it
# after a change on those paths: one that renames or adds a function, or
# that changes what the compiler inlines (a function no longer inlined runs
# outside the hot segment).
# scripts/check-code-layout.sh (make test-malloc) catches a pattern that no
# longer matches; --check (make verify-hot-functions) profiles again and
# fails on a hot function missing from the list, writing nothing.
set -euo pipefail
check=
if [ "${1:-}" = --check ]; then
    check=1
    shift
fi
so=$(realpath "${1:-target/release/libpools_malloc.so}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=malloc/hot-functions.txt
[ -z "$check" ] || out=$work/hot-functions.txt
command -v valgrind >/dev/null 2>&1 || scripts/apt-install.sh hot-functions valgrind

gcc -O2 -pthread bench/prodcons.c -o "$work/prodcons"
gcc -O2 -pthread bench/larson.c -o "$work/larson"
gcc -O2 bench/large.c -o "$work/large"
echo 'int main(void) { return 0; }' > "$work/t.c"
cat > "$work/t.sql" <<'SQL'
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, pad BLOB);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)
INSERT INTO t SELECT i, 'name' || (i * 7919 % 20000), zeroblob(i % 300) FROM c;
CREATE INDEX t_name ON t(name);
VACUUM;
SQL

profile() {
    local name=$1
    shift
    LD_PRELOAD=$so valgrind --tool=callgrind --trace-children=yes \
        --callgrind-out-file="$work/cg.$name.%p" "$@" > /dev/null 2> "$work/$name.err" \
        || { cat "$work/$name.err" >&2; exit 1; }
}
profile seq seq 1 10
profile python python3 -c 'import json; print(json.dumps({"a": [1] * 1000}))'
# A list that grows by realloc past the small classes (mremap).
profile pylist python3 -c 'x = []
for i in range(100000): x.append(i)'
profile sort sort src/registry.rs
profile git git status --short
profile gcc gcc -O2 -c "$work/t.c" -o "$work/t.o"
profile prodcons "$work/prodcons" 20000
profile larson "$work/larson" 1 2 100
profile large "$work/large" 40 4
if command -v sqlite3 >/dev/null 2>&1; then
    profile sqlite sqlite3 "$work/t.db" < "$work/t.sql"
fi

nm --defined-only "$so" > "$work/nm"
python3 - "$work/nm" "$out" "$work"/cg.* <<'PY'
import re, subprocess, sys
nm, out, profiles = sys.argv[1], sys.argv[2], sys.argv[3:]
# Self cost of each function name, summed over the profiles.
cost = {}
for path in profiles:
    names, fn, after_call = {}, None, False
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3).strip()
            if m.group(1) == "fn":
                fn = names.get(m.group(2))
            continue
        if line.startswith("calls="):
            after_call = True  # the next cost line is the call's, inclusive
            continue
        m = re.match(r"^(?:[+-]?\d+|\*) (\d+)", line)
        if m and after_call:
            after_call = False
        elif m and fn:
            cost[fn] = cost.get(fn, 0) + int(m.group(1))
# Demangled name -> mangled symbols of the preload's code.
mangled = {}
text = [l.split() for l in open(nm) if re.match(r"^\S+ [tTwW] ", l)]
syms = [s for _, _, s in text]
demangled = subprocess.run(["c++filt"], input="\n".join(syms), capture_output=True,
                           text=True, check=True).stdout.splitlines()
for sym, dem in zip(syms, demangled):
    # Legacy mangling ends with the hash, v0 names its crates by hash: both
    # change with the build; the path before them does not.
    pat = re.sub(r"17h[0-9a-f]{16}E.*$", "17h*", sym)
    pat = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", pat)
    dem = re.sub(r"::h[0-9a-f]{16}$", "", re.sub(r"\[[0-9a-f]+\]", "", dem))
    mangled.setdefault(dem, set()).add(pat)
hot = sorted((c, n) for n, c in cost.items() if n in mangled and c > 0)
pats = []
for _, name in reversed(hot):
    for p in sorted(mangled[name]):
        if p not in pats:
            pats.append(p)
with open(out, "w") as f:
    f.write("# Written by scripts/hot-functions.sh: the preload's functions that short\n"
            "# programs run, hottest first, as patterns of their symbols (read by\n"
            "# malloc/build.rs).\n")
    for p in pats:
        f.write(p + "\n")
print("%s: %d patterns" % (out, len(pats)))
PY
if [ -n "$check" ]; then
    missing=$(grep -v '^#' "$out" | grep -vxF -f malloc/hot-functions.txt || true)
    if [ -n "$missing" ]; then
        echo "hot functions missing from malloc/hot-functions.txt (run scripts/hot-functions.sh):" >&2
        echo "$missing" >&2
        exit 1
    fi
    echo "malloc/hot-functions.txt lists every function the profiles run"
fi
