#!/usr/bin/env bash
# scripts/check-code-layout.sh LIBPOOLS_MALLOC.so
# Fails unless the preload's code is laid out as malloc/build.rs intends:
# the code segment starts at a 64 KiB boundary of the file, every pattern of
# malloc/hot-functions.txt names a function of the library, and every such
# function lies in the first 64 KiB of the code. A stale pattern (a renamed
# function) is fixed by running scripts/hot-functions.sh again.
set -euo pipefail
so=$1
python3 - "$so" malloc/hot-functions.txt <<'PY'
import fnmatch, re, subprocess, sys
so, listing = sys.argv[1], sys.argv[2]
BLOCK = 0x10000
run = lambda *a: subprocess.run(a, capture_output=True, text=True, check=True).stdout
code = [l.split() for l in run("readelf", "-lW", so).splitlines()
        if l.split()[:1] == ["LOAD"] and l.split()[-2] == "E"]
if len(code) != 1:
    sys.exit("%s: expected one executable segment, found %d" % (so, len(code)))
offset, start = int(code[0][1], 16), int(code[0][2], 16)
errors = []
if offset % BLOCK:
    errors.append("the code segment starts at file offset %#x, not a multiple of %#x"
                  % (offset, BLOCK))
syms = [(int(a, 16), s) for a, t, s in (l.split() for l in run("nm", "--defined-only", so).splitlines()
                                        if len(l.split()) == 3) if t in "tTwW"]
patterns = [p.strip() for p in open(listing) if p.strip() and not p.startswith("#")]
for p in patterns:
    hits = [(a, s) for a, s in syms if fnmatch.fnmatchcase(s, p)]
    if not hits:
        errors.append("no function matches %s (run scripts/hot-functions.sh)" % p)
    for a, s in hits:
        if not start <= a < start + BLOCK:
            errors.append("%s at %#x, past the first %#x bytes of the code (from %#x)"
                          % (s, a, BLOCK, start))
if errors:
    sys.exit("%s:\n  " % so + "\n  ".join(errors))
print("code layout: %d hot patterns in the first 64 KiB of the code, at file offset %#x"
      % (len(patterns), offset))
PY
