#!/usr/bin/env bash
# scripts/check-code-layout.sh LIBPOOLS_MALLOC.so
# Fails unless the preload's code is laid out as malloc/build.rs intends:
# two executable segments, the first (the hot one) at most 64 KiB and
# inside one 64 KiB block of addresses (one fault-around window), every
# pattern of malloc/hot-functions.txt naming a function of the library, and
# every such function in the hot segment, and the unwinder's index of the
# unwinding tables (.eh_frame_hdr, searched by halving) sorted by address,
# and the first read-only segment (the loader's tables and the constants
# that the code reads; every process maps it whole) at most 28 KiB: the
# constants of std and of the backtrace's crates, which only reports and
# backtraces read, are in the segment of the unwinding tables.
# c-tests/malloc/test_cold_pages.c checks that a program maps none of that
# segment's pages.
# A stale pattern (a renamed function) is fixed by running
# scripts/hot-functions.sh again.
set -euo pipefail
so=$1
python3 - "$so" malloc/hot-functions.txt <<'PY'
import fnmatch, struct, subprocess, sys
so, listing = sys.argv[1], sys.argv[2]
MAX_HOT = 0x10000
run = lambda *a: subprocess.run(a, capture_output=True, text=True, check=True).stdout
code = [l.split() for l in run("readelf", "-lW", so).splitlines()
        if l.split()[:1] == ["LOAD"] and "E" in l.split()[-2]]
if len(code) != 2:
    sys.exit("%s: expected two executable segments (the hot code, the rest), found %d"
             % (so, len(code)))
start, size = int(code[0][2], 16), int(code[0][4], 16)
errors = []
MAX_FIRST = 28 * 1024
first = [l.split() for l in run("readelf", "-lW", so).splitlines()
         if l.split()[:2] == ["LOAD", "0x000000"]]
if not first or int(first[0][4], 16) > MAX_FIRST:
    errors.append("the first read-only segment holds %s bytes, more than %#x"
                  % (first[0][4] if first else "no", MAX_FIRST))
if start // MAX_HOT != (start + size - 1) // MAX_HOT:
    errors.append("the hot segment [%#x, %#x) crosses a %#x boundary"
                  % (start, start + size, MAX_HOT))
syms = [(int(a, 16), s) for a, t, s in (l.split() for l in run("nm", "--defined-only", so).splitlines()
                                        if len(l.split()) == 3) if t in "tTwW"]
patterns = [p.strip() for p in open(listing) if p.strip() and not p.startswith("#")]
for p in patterns:
    hits = [(a, s) for a, s in syms if fnmatch.fnmatchcase(s, p)]
    if not hits:
        errors.append("no function matches %s (run scripts/hot-functions.sh)" % p)
    for a, s in hits:
        if not start <= a < start + size:
            errors.append("%s at %#x, outside the hot segment [%#x, %#x)"
                          % (s, a, start, start + size))
hdr = [l.split() for l in run("readelf", "-SW", so).splitlines() if ".eh_frame_hdr" in l]
if hdr:
    # version, three encodings (a pointer, the count, the table: datarel
    # sdata4 pairs, expected as 0x3b), then the table's starts of functions.
    addr, off = int(hdr[0][3], 16), int(hdr[0][4], 16)
    data = open(so, "rb").read()
    if data[off + 3] != 0x3b:
        errors.append(".eh_frame_hdr's table encoding is %#x, not 0x3b" % data[off + 3])
    else:
        count = struct.unpack_from("<I", data, off + 8)[0]
        starts = [addr + struct.unpack_from("<i", data, off + 12 + 8 * i)[0] for i in range(count)]
        if starts != sorted(starts):
            errors.append(".eh_frame_hdr's table is not sorted by address: "
                          "the unwinder would not find the frames of some functions")
if errors:
    sys.exit("%s:\n  " % so + "\n  ".join(errors))
print("code layout: %d hot patterns in a hot segment of %d KiB"
      % (len(patterns), size // 1024))
PY
