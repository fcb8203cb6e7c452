#!/usr/bin/env python3
"""bench/peak-mappings.py [--preload LIB.so] [--stdin FILE] -- COMMAND...

Runs COMMAND (with LD_PRELOAD=LIB.so if given, stdin from FILE), reads its
/proc/PID/smaps every 2 ms, and prints the resident KiB of each kind of
mapping (file name and permissions; [anon] for anonymous ones) in the
sample whose total Rss was largest: where a program's peak goes.
"""
import argparse, collections, os, re, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--preload", default="")
ap.add_argument("--stdin")
ap.add_argument("command", nargs="+")
a = ap.parse_args()
env = dict(os.environ, LD_PRELOAD=os.path.realpath(a.preload) if a.preload else "")
stdin = open(a.stdin) if a.stdin else subprocess.DEVNULL
p = subprocess.Popen(a.command, stdin=stdin, stdout=subprocess.DEVNULL, env=env)
best, snap = 0, ""
while p.poll() is None:
    try:
        s = open(f"/proc/{p.pid}/smaps").read()
    except OSError:
        break
    total = sum(int(x) for x in re.findall(r"^Rss:\s+(\d+)", s, re.M))
    if total > best:
        best, snap = total, s
    time.sleep(0.002)
rss, name = collections.Counter(), None
for line in snap.splitlines():
    if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
        f = line.split(None, 5)
        name = (f[5].split("/")[-1] if len(f) > 5 else "[anon]") + " " + f[1]
    elif line.startswith("Rss:"):
        rss[name] += int(line.split()[1])
print(f"peak {best} KiB")
for k, v in rss.most_common():
    if v:
        print(f"{v:7d} {k}")
sys.exit(p.wait())
