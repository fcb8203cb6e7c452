#!/usr/bin/env bash
# scripts/malloc-programs.sh LIBPOOLS_MALLOC.so [--time]
# Runs real programs with and without LD_PRELOAD=libpools_malloc.so and fails
# unless their outputs are identical: python3 on an allocation-heavy script,
# sort on a large generated file, gcc compiling a C file, git on a generated
# repository. Installs a missing program through scripts/apt-install.sh.
# The workloads are also what bench/malloc-bench.sh times (source this file
# with MALLOC_PROGRAMS_LIB=1 to get the functions only).
set -euo pipefail

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v sort >/dev/null 2>&1 || missing+=(coreutils)
scripts/apt-install.sh malloc-programs "${missing[@]}"

WORK=${MALLOC_WORK:-target/malloc-programs}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

# Inputs, generated once (deterministic).
prepare() {
    if [ ! -s "$WORK/sort.in" ]; then
        python3 - "$WORK/sort.in" <<'PY'
import random, sys
r = random.Random(7)
with open(sys.argv[1], "w") as f:
    for i in range(600_000):
        f.write("%08x %s %d\n" % (r.getrandbits(32), "x" * r.randrange(1, 40), r.randrange(10**6)))
PY
    fi
    cat > "$WORK/alloc.py" <<'PY'
# Allocation-heavy: dicts, lists, strings, tuples of many sizes, freed in
# varying orders; a deterministic digest of the results.
import hashlib, json
h = hashlib.sha256()
for rnd in range(6):
    d = {}
    for i in range(60_000):
        d["k%d_%d" % (rnd, i)] = [i, str(i) * (i % 13), (i, i * 2), {"v": i % 97}]
    s = json.dumps(d, sort_keys=True)
    h.update(s.encode())
    back = json.loads(s)
    h.update(str(sum(len(v[1]) for v in back.values())).encode())
    words = sorted(set(s.split('"')), key=lambda w: (len(w), w))
    h.update("".join(words[:1000]).encode())
    del d, back, words, s
print(h.hexdigest())
PY
    cat > "$WORK/prog.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct node { struct node *l, *r; int k; char name[24]; };
static struct node *insert(struct node *t, int k)
{
    if (!t) { t = calloc(1, sizeof *t); t->k = k; snprintf(t->name, sizeof t->name, "n%d", k); return t; }
    if (k < t->k) t->l = insert(t->l, k); else t->r = insert(t->r, k);
    return t;
}
static long walk(const struct node *t) { return t ? walk(t->l) + t->k + (long)strlen(t->name) + walk(t->r) : 0; }
#define REP(n) static int f##n(int x) { return x * n + (x >> (n % 7)); }
REP(1) REP(2) REP(3) REP(4) REP(5) REP(6) REP(7) REP(8) REP(9) REP(10)
int main(void)
{
    struct node *t = NULL;
    for (int i = 0; i < 1000; i++) t = insert(t, (i * 7919) % 1000);
    printf("%ld %d\n", walk(t), f1(1) + f2(2) + f3(3) + f4(4) + f5(5) + f6(6) + f7(7) + f8(8) + f9(9) + f10(10));
    return 0;
}
C
}

# Each workload prints what must not depend on the allocator.
run_python() { python3 "$WORK/alloc.py"; }
run_sort() { LC_ALL=C sort -k2,2 -k1,1 -S 64M "$WORK/sort.in" | md5sum; }
run_gcc() {
    local out
    out=$(mktemp -d "$WORK/gcc.XXXXXX")
    gcc -O2 -Wall -c "$WORK/prog.c" -o "$out/prog.o"
    gcc "$out/prog.o" -o "$out/prog"
    "$out/prog"
    objdump -d --no-show-raw-insn "$out/prog.o" | tail -n +3 | md5sum
    rm -rf "$out"
}
run_git() {
    local repo
    repo=$(mktemp -d "$WORK/git.XXXXXX")
    (
        cd "$repo"
        export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t
        export GIT_AUTHOR_DATE="2020-01-01T00:00:00Z" GIT_COMMITTER_DATE="2020-01-01T00:00:00Z"
        git init -q -b main .
        git config gc.auto 0
        for c in $(seq 1 12); do
            for f in $(seq 1 40); do
                seq "$c" "$((f * 50 + c))" > "f$f.txt"
            done
            git add -A && git commit -q -m "commit $c"
        done
        git log --stat --format='%H %s' | md5sum
        git diff HEAD~8 HEAD | md5sum
        git gc -q --aggressive 2>/dev/null
        git fsck --strict 2>&1 | md5sum
        git rev-list --all --objects | sort | md5sum
    )
    rm -rf "$repo"
}

WORKLOADS="python sort gcc git"

[ "${MALLOC_PROGRAMS_LIB:-0}" = 1 ] && return 0

so=$1
[ -e "$so" ] || { echo "malloc-programs: $so not found (make lib)" >&2; exit 1; }
prepare
# The preload must really be in the programs (else the comparison is void).
LD_PRELOAD="$so" grep -q libpools_malloc /proc/self/maps ||
    { echo "FAIL: LD_PRELOAD=$so is not loaded" >&2; exit 1; }
fail=0
for w in $WORKLOADS; do
    plain=$("run_$w")
    pre=$(LD_PRELOAD="$so" "run_$w")
    if [ "$plain" = "$pre" ]; then
        echo "== $w: same output with and without the preload"
    else
        echo "FAIL: $w: outputs differ" >&2
        diff <(echo "$plain") <(echo "$pre") >&2 || true
        fail=1
    fi
done
exit $fail
