#!/usr/bin/env python3
"""bench/anon-peak.py [--preload LIB.so] [--stdin FILE] [--runs N] -- COMMAND...

Runs COMMAND N times (default 5; with LD_PRELOAD=LIB.so if given, stdin
from FILE) and prints the largest RssAnon (anonymous resident KiB: heap,
mappings, bss, stack) that /proc/PID/status showed in each run, read in a
busy loop, and their median. The anonymous part of a program's peak is
what its allocator decides, and it repeats to within a page or two, where
the whole peak RSS (GNU time's %M) also moves with where the loader places
the libraries against 64 KiB fault-around windows: a change of a few KiB
shows here in one run.
"""
import argparse, os, re, statistics, subprocess

ap = argparse.ArgumentParser()
ap.add_argument("--preload", default="")
ap.add_argument("--stdin")
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("command", nargs="+")
a = ap.parse_args()
env = dict(os.environ, LD_PRELOAD=os.path.realpath(a.preload) if a.preload else "")
peaks = []
for _ in range(a.runs):
    stdin = open(a.stdin) if a.stdin else subprocess.DEVNULL
    p = subprocess.Popen(a.command, stdin=stdin, stdout=subprocess.DEVNULL, env=env)
    best = 0
    while p.poll() is None:
        try:
            m = re.search(r"RssAnon:\s+(\d+)", open(f"/proc/{p.pid}/status").read())
        except OSError:
            break
        if m:
            best = max(best, int(m.group(1)))
    if p.wait() != 0:
        raise SystemExit(f"{a.command[0]} failed")
    peaks.append(best)
print(f"RssAnon peak KiB: {sorted(peaks)}, median {statistics.median(peaks):g}")
