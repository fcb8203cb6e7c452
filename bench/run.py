#!/usr/bin/env python3
"""Runs the issue #5 benchmark matrix and writes results/<name>.{md,csv} (committed)
and the plot target/bench/<name>.png (not committed: --replot redraws it from
results/<name>-raw.csv).

Every cell (workload, size, threads, implementation) is one process of
target/bench/bench-glibc or target/bench/bench-musl. Rounds are interleaved:
each round runs every cell once, in a shuffled order, and the tables report
the median over rounds, so slow phases of this shared machine spread over
all implementations alike.

    bench/run.py --quick     # make bench
    bench/run.py --full      # make bench-full

Both include the seed's table (issue #20): the `seeds` workload under musl
at 48 KiB, 256 KiB and 2 MiB, 1 to 16 threads, every shared-cache variant
over the default buckets and over one head (POOL_SHARED_BUCKETS=1), each
figure with the event counts of a run of target/bench/bench-musl-counters
(the library built with --cfg pools_counters) in the first round.
"""
import argparse
import csv
import os
import platform
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "bench")
PLOTS = BIN  # the PNGs are regenerable, so they stay out of the repository
KIB, MIB = 1024, 1024 * 1024
SIZES = [64, KIB, 16 * KIB, 48 * KIB, 256 * KIB, 2 * MIB]
VARIANTS = ["xchg", "dwcas", "rwlock", "locked", "none"]
# The seed's table: variants that have buckets (none has no head).
HEADED = ["xchg", "dwcas", "rwlock", "locked"]
SEED_SIZES = [48 * KIB, 256 * KIB, 2 * MIB]
SEED_THREADS = [1, 2, 4, 8, 16]
COUNTED = "count:"
# The counters of src/counters.rs, in the order the library prints them.
COUNT_KEYS = ["take", "hit", "far", "wait", "retry", "put", "hop", "moved", "obtained",
              "released"]


def lib_path(name):
    arch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True,
                          text=True).stdout.strip() or "x86_64-linux-gnu"
    return f"/usr/lib/{arch}/{name}"


JEMALLOC = lib_path("libjemalloc.so.2")
MIMALLOC = lib_path("libmimalloc.so.2")


def impls():
    """name -> (binary, harness impl, extra environment)."""
    out = {}
    for libc in ("glibc", "musl"):
        prefix = "" if libc == "glibc" else "musl/"
        for v in VARIANTS:
            out[f"{prefix}pool-{v}"] = (libc, "pool", {"POOL_SHARED_CACHE": v})
        out[f"{prefix}pool-nocache"] = (libc, "pool", {"POOL_SHARED_CACHE": "none",
                                                       "POOL_CACHE_SIZE": "0"})
        if libc == "musl":
            for v in HEADED:
                one = {"POOL_SHARED_CACHE": v, "POOL_SHARED_BUCKETS": "1"}
                out[f"musl/pool-{v}-1"] = (libc, "pool", one)
                out[f"{COUNTED}musl/pool-{v}-1"] = ("musl-counters", "pool", one)
            for v in VARIANTS:
                out[f"{COUNTED}musl/pool-{v}"] = ("musl-counters", "pool",
                                                  {"POOL_SHARED_CACHE": v})
        out[f"{prefix}freelist"] = (libc, "freelist", {})
        out[libc] = (libc, "malloc", {})
    out["jemalloc"] = ("glibc", "malloc", {"LD_PRELOAD": JEMALLOC})
    out["mimalloc"] = ("glibc", "malloc", {"LD_PRELOAD": MIMALLOC})
    return out


IMPLS = impls()
POOLS_G = [f"pool-{v}" for v in VARIANTS] + ["pool-nocache"]
POOLS_M = ["musl/" + p for p in POOLS_G]
OTHERS = ["glibc", "jemalloc", "mimalloc", "freelist", "musl", "musl/freelist"]


def seed_impls(counted=False):
    """The seed's table's columns: bucketed, one-head, and none."""
    names = ([f"musl/pool-{v}" for v in HEADED] + [f"musl/pool-{v}-1" for v in HEADED]
             + ["musl/pool-none"])
    return [COUNTED + n for n in names] if counted else names


def seed_cells():
    return [("seeds", s, t, i) for s in SEED_SIZES for t in SEED_THREADS
            for i in seed_impls() + seed_impls(True)]


def plan(full, seeds_only=False):
    """List of cells (workload, size, threads, impl)."""
    cells = seed_cells()
    if seeds_only:
        return cells
    if full:
        threads = [1, 2, 4, 8, 16]
        every = POOLS_G + POOLS_M + OTHERS
        for w in ("hot", "seeds", "prodcons"):
            for s in SIZES:
                for t in threads:
                    for i in every:
                        if (w, s, t, i) in cells:
                            continue
                        if w == "prodcons" and i.endswith("freelist"):
                            continue  # no cross-thread return: unbounded
                        cells.append((w, s, t, i))
        for s in SIZES:
            for t in threads:
                for i in ["pool-xchg", "musl/pool-xchg", "glibc", "musl",
                          "jemalloc", "mimalloc"]:
                    cells.append(("memory", s, t, i))
    else:
        for s in SIZES:
            for i in ["pool-xchg", "pool-dwcas", "pool-rwlock", "pool-locked",
                      "pool-none", "pool-nocache", "glibc", "jemalloc",
                      "mimalloc", "freelist", "musl/pool-xchg", "musl",
                      "musl/freelist"]:
                cells.append(("hot", s, 1, i))
        for s in (48 * KIB, 256 * KIB, 2 * MIB):
            for i in ["musl/pool-nocache", "musl", "pool-xchg", "glibc"]:
                cells.append(("seeds", s, 4, i))
        for s in (64, 16 * KIB):
            for i in ["pool-xchg", "glibc", "jemalloc", "mimalloc",
                      "musl/pool-xchg", "musl"]:
                cells.append(("prodcons", s, 2, i))
        for s in (64, 16 * KIB, 2 * MIB):
            for i in ["pool-xchg", "glibc", "musl/pool-xchg", "musl"]:
                cells.append(("memory", s, 2, i))
    return cells


def env_for(impl):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("POOL_") and k != "LD_PRELOAD"}
    env.update(IMPLS[impl][2])
    return env


def command(impl, w, s, t, ms):
    libc, kind, _ = IMPLS[impl]
    return [os.path.join(BIN, f"bench-{libc}"), kind, w, str(s), str(t), str(ms)]


def run_one(impl, w, s, t, ms):
    """dict of the result line, or None for n/a (exit status 2)."""
    p = subprocess.run(command(impl, w, s, t, ms), env=env_for(impl),
                       capture_output=True, text=True, timeout=120)
    if p.returncode == 2:
        return None
    if p.returncode < 0:
        return {"crash": str(-p.returncode)}
    if p.returncode != 0:
        sys.exit(f"bench: {impl} {w} {s} {t} failed ({p.returncode}):\n{p.stderr}{p.stdout}")
    for line in p.stdout.splitlines():
        if line.startswith("result "):
            r = dict(kv.split("=", 1) for kv in line.split()[1:])
            if float(r.get("cpu_s", 0)) > 0 and "ops_all" in r:
                # The process's own CPU time: other processes' load on the
                # machine changes it much less than the wall clock.
                r["ops_per_cpu_s"] = f"{float(r['ops_all']) / float(r['cpu_s']):.0f}"
            for c in p.stderr.splitlines():
                if c.startswith("libpools counters:"):
                    r.update(("c_" + k, v) for k, v in
                             (kv.split("=", 1) for kv in c.split()[2:]))
            return r
    sys.exit(f"bench: no result line from {impl} {w} {s} {t}:\n{p.stdout}{p.stderr}")


def human_size(s):
    return f"{s // MIB} MiB" if s >= MIB and s % MIB == 0 else (
        f"{s // KIB} KiB" if s >= KIB else f"{s} B")


def fmt_rate(x, crashed=0):
    if crashed:
        return (fmt_rate(x) if x is not None else "crash") + f" ({crashed} crash)"
    if x is None:
        return "n/a"
    m = x / 1e6
    return f"{m:.2f}" if m >= 1 else f"{m:.3g}"


def machine():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    model = sh("lscpu | sed -n 's/^Model name: *//p'")
    cpus = sh("nproc")
    return {
        "cpu": f"{model}, {cpus} CPUs",
        "kernel": platform.release(),
        "glibc": sh("ldd --version | head -n1"),
        "musl": sh("dpkg-query -W -f '${Version}' musl 2>/dev/null"),
        "jemalloc": sh("dpkg-query -W -f '${Version}' libjemalloc2 2>/dev/null"),
        "mimalloc": sh("dpkg-query -W -f '${Version}' libmimalloc2.0 2>/dev/null"),
        "loadavg": sh("cut -d' ' -f1-3 /proc/loadavg"),
        "commit": sh(f"git -C {ROOT} rev-parse --short HEAD"),
    }


class Results:
    def __init__(self):
        self.raw = {}  # cell -> list of result dicts
        self.na = set()  # impl names refused by the library
        self.crashes = {}  # cell -> signals of the rounds that crashed

    def median(self, w, s, t, impl, key="ops_per_s"):
        rs = self.raw.get((w, s, t, impl))
        if not rs:
            return None
        return statistics.median(float(r[key]) for r in rs)


def probe(impl_names, res):
    """Variants the library refuses are n/a for the whole run."""
    for i in impl_names:
        if IMPLS[i][1] == "pool" and run_one(i, "hot", 64, 1, 1) is None:
            res.na.add(i)


def run(args):
    cells = plan(args.full, args.seeds)
    res = Results()
    probe(sorted({c[3] for c in cells}), res)
    cells = [c for c in cells if c[3] not in res.na]
    total = len(cells) * args.rounds
    done = 0
    start = time.time()
    tty = sys.stderr.isatty()
    rng = random.Random(5)
    # Counted cells run in the first round only: counts per op are stable
    # where timings are not.
    counted = sum(1 for c in cells if c[3].startswith(COUNTED))
    total = len(cells) * args.rounds - counted * (args.rounds - 1)
    for rnd in range(args.rounds):
        order = [c for c in cells if rnd == 0 or not c[3].startswith(COUNTED)]
        rng.shuffle(order)
        for (w, s, t, i) in order:
            done += 1
            eta = (time.time() - start) / done * (total - done)
            msg = (f"[{done:5d}/{total}] round {rnd + 1}/{args.rounds} "
                   f"{w:8s} {human_size(s):>7s} {t:2d}T {i:18s} eta {eta:4.0f}s")
            if tty:
                sys.stderr.write("\r" + msg + "   ")
            elif done % 25 == 0 or done == total:
                sys.stderr.write(msg + "\n")
            sys.stderr.flush()
            r = run_one(i, w, s, t, args.ms)
            if r is None:
                res.na.add(i)
                continue
            if "crash" in r:
                res.crashes.setdefault((w, s, t, i), []).append(int(r["crash"]))
                continue
            r["round"] = str(rnd)
            res.raw.setdefault((w, s, t, i), []).append(r)
    if tty:
        sys.stderr.write("\n")
    return cells, res, time.time() - start


# ---- output -----------------------------------------------------------------

def write_csv(path, res):
    keys = ["workload", "size", "threads", "impl", "round", "ops_per_s", "ops", "secs",
            "window", "cache_size", "rss_base_kib", "rss_peak_kib", "rss_after_kib",
            "rss_delta_kib", "ops_all", "cpu_s", "ops_per_cpu_s", "vcsw", "ivcsw"]
    keys += ["c_" + k for k in COUNT_KEYS]
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(keys)
        for (w, s, t, i), rs in sorted(res.raw.items()):
            for r in rs:
                row = {**r, "workload": w, "size": s, "threads": t, "impl": i}
                wr.writerow([row.get(k, "") for k in keys])


def write_median_csv(path, cells, res):
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["workload", "size", "threads", "impl", "rounds", "median_ops_per_s",
                     "median_rss_delta_kib"])
        for (w, s, t, i) in sorted(set(cells)):
            rs = res.raw.get((w, s, t, i), [])
            if not rs:
                continue
            rss = res.median(w, s, t, i, "rss_delta_kib") if w == "memory" else ""
            wr.writerow([w, s, t, i, len(rs), f"{res.median(w, s, t, i):.0f}",
                         "" if rss == "" else f"{rss:.0f}"])


def groups(cells):
    """(workload, threads) -> (sizes, impls) in plan order."""
    g = {}
    for (w, s, t, i) in cells:
        if i.startswith(COUNTED) or i.endswith("-1") or (w == "seeds" and t != 4):
            continue  # in the seed's table
        sizes, imps = g.setdefault((w, t), ([], []))
        if s not in sizes:
            sizes.append(s)
        if i not in imps:
            imps.append(i)
    return g


def ref_for(impl):
    return "musl/pool-xchg" if impl.startswith("musl") else "pool-xchg"


def tables(cells, res):
    out = []
    titles = {"hot": "Hot path", "seeds": "Seeds' case", "prodcons": "Producer/consumer",
              "memory": "Memory"}
    for (w, t), (sizes, imps) in groups(cells).items():
        imps = [i for i in imps if i not in res.na] + [i for i in imps if i in res.na]
        if w == "memory":
            out.append(f"\n### {titles[w]}, {t} threads: resident KiB above the baseline "
                       "after pool_flush + pool_gc (malloc_trim for glibc malloc)\n")
            out.append("| size | " + " | ".join(imps) + " |")
            out.append("|---" * (len(imps) + 1) + "|")
            for s in sizes:
                row = []
                for i in imps:
                    v = res.median(w, s, t, i, "rss_delta_kib")
                    pk = res.median(w, s, t, i, "rss_peak_kib")
                    base = res.median(w, s, t, i, "rss_base_kib")
                    row.append("n/a" if v is None else
                               f"{v:.0f} (peak +{pk - base:.0f})")
                out.append(f"| {human_size(s)} | " + " | ".join(row) + " |")
            continue
        tlabel = f"{t} thread{'s' if t > 1 else ''}"
        if w == "prodcons":
            tlabel = f"{max(2, t - t % 2)} threads ({max(1, t // 2)} pairs)"
        out.append(f"\n### {titles[w]}, {tlabel}: million ops/s (median)\n")
        out.append("| size | " + " | ".join(imps) + " |")
        out.append("|---" * (len(imps) + 1) + "|")
        for s in sizes:
            out.append(f"| {human_size(s)} | " +
                       " | ".join(fmt_rate(res.median(w, s, t, i),
                                           len(res.crashes.get((w, s, t, i), [])))
                                  for i in imps) + " |")
        out.append(f"\nRatio: each column's pool-xchg (same libc) over the column "
                   "(above 1: the pool is faster)\n")
        others = [i for i in imps if i not in res.na and ref_for(i) != i]
        out.append("| size | " + " | ".join(others) + " |")
        out.append("|---" * (len(others) + 1) + "|")
        for s in sizes:
            row = []
            for i in others:
                a, b = res.median(w, s, t, ref_for(i)), res.median(w, s, t, i)
                row.append("-" if a is None or not b else f"{a / b:.2f}")
            out.append(f"| {human_size(s)} | " + " | ".join(row) + " |")
    return out


def paired(res, a, b, key="ops_per_s"):
    """Median of a/b over rounds where both ran, and its range: a and b
    ran in the same round, minutes apart at most, so the per-round ratios
    show how much of a difference is noise."""
    ra = {r["round"]: float(r[key]) for r in res.raw.get(a, [])}
    rb = {r["round"]: float(r[key]) for r in res.raw.get(b, [])}
    rs = [ra[k] / rb[k] for k in ra if k in rb and rb[k] > 0]
    if not rs:
        return None
    return statistics.median(rs), min(rs), max(rs)


def ratio_txt(label, p):
    return f"{label} = {p[0]:.2f}x (rounds {p[1]:.2f}-{p[2]:.2f})"


def verdict(p, need, strict=False):
    """holds / does not hold on the median; 'within noise' when the
    per-round range straddles the threshold."""
    ok = p[0] > need if strict else p[0] >= need
    straddles = p[1] < need <= p[2]
    return ("holds" if ok else "does not hold") + (" (within noise)" if straddles else "")


def targets(res):
    """The targets of issue #5, each with its measured ratio."""
    rows = []

    def cell(w, s, t, i):
        return (w, s, t, i)

    # hot path, 64 B, 1 thread
    for libc, pool, fl, mal in (("glibc", "pool-xchg", "freelist", "glibc"),
                                ("musl", "musl/pool-xchg", "musl/freelist", "musl")):
        c = lambda i: cell("hot", 64, 1, i)  # noqa: E731
        p = paired(res, c(fl), c(pool))
        if p:
            rows.append((f"hot 64 B 1T, {libc} build: within 1.3x of the bare free list",
                         ratio_txt("free list / pool", p),
                         ("holds" if p[0] <= 1.3 else "does not hold")
                         + (" (within noise)" if p[1] <= 1.3 < p[2] else "")))
        p = paired(res, c(pool), c(mal))
        if p:
            rows.append((f"hot 64 B 1T, {libc} build: at least 2x {mal} malloc",
                         ratio_txt(f"pool / {mal}", p), verdict(p, 2.0)))
    p = paired(res, cell("hot", 64, 1, "pool-xchg"), cell("hot", 64, 1, "musl"))
    if p:
        rows.append(("hot 64 B 1T: glibc-build pool at least 2x musl malloc",
                     ratio_txt("pool / musl", p), verdict(p, 2.0)))
    # seeds' case under musl
    seeds = sorted({(s, t) for (w, s, t, i) in res.raw if w == "seeds" and t >= 4})
    for (s, t) in seeds:
        x = cell("seeds", s, t, "musl/pool-xchg")
        if x not in res.raw:
            continue
        if s == 2 * MIB:
            for other, need, label, strict in (
                    ("none", 2.6, "at least 2.6x none", False),
                    ("locked", 1.0, "faster than locked", True),
                    ("dwcas", 0.9, "within 10 % of dwcas", False),
                    ("dwcas", 1.0, "faster than dwcas (better)", True)):
                p = paired(res, x, cell("seeds", s, t, "musl/pool-" + other))
                rows.append((f"seeds musl 2 MiB {t}T: {label}",
                             "n/a (variant not in the library)" if p is None else
                             ratio_txt(f"xchg / {other}", p),
                             "not measured" if p is None else verdict(p, need, strict)))
        if s >= 48 * KIB:
            worst = None
            for other in POOLS_M:
                if other == "musl/pool-xchg":
                    continue
                p = paired(res, x, cell("seeds", s, t, other))
                if p and (worst is None or p[0] < worst[0][0]):
                    worst = (p, other)
            if worst:
                rows.append((f"seeds musl {human_size(s)} {t}T: as fast as every variant",
                             ratio_txt(f"xchg / {worst[1].split('/')[1]} (the closest)",
                                       worst[0]),
                             verdict(worst[0], 1.0)))
    # producer/consumer
    for (w, s, t, i) in sorted(res.raw):
        if w != "prodcons" or i != "pool-xchg":
            continue
        for other in ("jemalloc", "mimalloc"):
            p = paired(res, (w, s, t, i), (w, s, t, other))
            if p:
                rows.append((f"producer/consumer {human_size(s)} {t}T: at least {other}",
                             ratio_txt(f"pool / {other}", p), verdict(p, 1.0)))
    # memory
    for (w, s, t, i) in sorted(res.raw):
        if w != "memory" or i not in ("pool-xchg", "musl/pool-xchg"):
            continue
        d = res.median(w, s, t, i, "rss_delta_kib")
        libc = "musl" if i.startswith("musl") else "glibc"
        base = res.median(w, s, t, libc, "rss_delta_kib")
        rows.append((f"memory {libc} {human_size(s)} {t}T: within 1 MiB of the baseline",
                     f"+{d:.0f} KiB (plain {libc} malloc: "
                     + ("-" if base is None else f"+{base:.0f} KiB") + ")",
                     "holds" if d <= 1024 else "does not hold"))
    out = ["\n## Targets of issue #5\n",
           "Ratios are medians of per-round ratios (both cells ran in the same round); "
           "the range is the lowest and highest round.\n",
           "| target | measured | verdict |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for (a, b, c) in rows]
    return out


def per_kop(r, key):
    """Events per 1000 operations of one counted run (every op of the
    process, warm-up included, as the counters are)."""
    ops = float(r.get("ops_all") or 0)
    v = r.get(key)
    return None if v is None or not ops else 1000.0 * float(v) / ops


def fmt_count(x):
    if x is None:
        return "?"
    if x == 0:
        return "0"
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def seed_counts(res, s, t, impl):
    """The counts beside a figure: head lines moved between CPUs, waits on
    a held head, CAS retries, objects released to the system and voluntary
    context switches, per 1000 operations, from the counted run."""
    rs = res.raw.get(("seeds", s, t, COUNTED + impl))
    if not rs:
        crashed = res.crashes.get(("seeds", s, t, COUNTED + impl))
        return "counted run crashed" if crashed else ""
    r = rs[0]
    return ("m" + fmt_count(per_kop(r, "c_moved")) + " w" + fmt_count(per_kop(r, "c_wait")) + " r" + fmt_count(per_kop(r, "c_retry"))
            + " o" + fmt_count(per_kop(r, "c_released")) + " v" + fmt_count(per_kop(r, "vcsw")))


def seed_table(cells, res):
    """The seed's table: per size, one row per thread count, each variant
    bucketed and with one head (-1), the median ops/s and the counts."""
    if not any(c[3].startswith(COUNTED) for c in cells):
        return []
    out = ["\n## The seed's table (issue #20): musl, `seeds` workload\n",
           "Million ops/s (median over rounds), in brackets million ops per second of the "
           "process's CPU time (median; every op of the run over its user + system time, "
           "which the load of other processes blurs much less), then per 1000 ops from one "
           "counted run "
           "(bench-musl-counters, same round): **m** uses of a head on another CPU than "
           "its last use (its cache line moved between cores), **w** waits on a held head (an xchg head seen "
           "BUSY, a mutex or rwlock not free at the first try), **r** failed CAS on a head, "
           "**o** objects released to the system, **v** voluntary context switches (futex "
           "waits and sleeps, whole process). `-1`: `POOL_SHARED_BUCKETS=1` (one head). "
           "Any cell: `POOL_SHARED_CACHE=<variant> [POOL_SHARED_BUCKETS=1] "
           "target/bench/bench-musl pool seeds <size> <threads> <ms>`.\n"]
    for s in SEED_SIZES:
        for label, imps in (("buckets (default, 4)", [f"musl/pool-{v}" for v in HEADED]
                             + ["musl/pool-none"]),
                            ("one head (POOL_SHARED_BUCKETS=1)",
                             [f"musl/pool-{v}-1" for v in HEADED])):
            out.append(f"\n### {human_size(s)}, {label}\n")
            out.append("| threads | " + " | ".join(i.split("/")[1][5:] for i in imps) + " |")
            out.append("|---" * (len(imps) + 1) + "|")
            for t in SEED_THREADS:
                row = []
                for i in imps:
                    fig = fmt_rate(res.median("seeds", s, t, i),
                                   len(res.crashes.get(("seeds", s, t, i), [])))
                    cpu = fmt_rate(res.median("seeds", s, t, i, "ops_per_cpu_s"))
                    row.append(f"{fig} [{cpu}] <sub>{seed_counts(res, s, t, i)}</sub>")
                out.append(f"| {t} | " + " | ".join(row) + " |")
        out.append(f"\n{human_size(s)}: xchg over each variant, median of per-round "
                   "ratios [lowest-highest round], of ops/s and (second line) of ops per "
                   "CPU second\n")
        cols = [(f"musl/pool-xchg", f"musl/pool-{v}") for v in HEADED[1:] + ["none"]]
        cols += [(f"musl/pool-xchg-1", f"musl/pool-{v}-1") for v in HEADED[1:]]
        cols += [("musl/pool-xchg", "musl/pool-xchg-1")]
        out.append("| threads | " + " | ".join(
            f"{a.split('/')[1][5:]} / {b.split('/')[1][5:]}" for a, b in cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for t in SEED_THREADS:
            for key, label in (("ops_per_s", f"{t}"), ("ops_per_cpu_s", f"{t} (CPU)")):
                row = []
                for a, b in cols:
                    p = paired(res, ("seeds", s, t, a), ("seeds", s, t, b), key)
                    row.append("-" if p is None else f"{p[0]:.2f} [{p[1]:.2f}-{p[2]:.2f}]")
                out.append(f"| {label} | " + " | ".join(row) + " |")
    return out + seed_claims(res)


def seed_claims(res):
    """The seed's three claims, per bucket setting and thread count; the
    verdict on ops/s (what the seed measured), ops per CPU second beside."""
    rows = []

    def both(a, b, label):
        p = paired(res, a, b)
        c = paired(res, a, b, "ops_per_cpu_s")
        if p is None:
            return None, "-"
        txt = ratio_txt(label, p)
        if c:
            txt += f"; per CPU second {c[0]:.2f}x [{c[1]:.2f}-{c[2]:.2f}]"
        return p, txt

    for suffix, layout in (("", "buckets"), ("-1", "one head")):
        x = lambda s, t: ("seeds", s, t, f"musl/pool-xchg{suffix}")  # noqa: E731
        o = lambda s, t, v: ("seeds", s, t, f"musl/pool-{v}{suffix}" if v != "none"  # noqa: E731
                             else "musl/pool-none")
        for t in SEED_THREADS[1:]:
            p, txt = both(x(2 * MIB, t), o(2 * MIB, t, "dwcas"), "xchg / dwcas")
            rows.append((f"1. 2 MiB, {t}T, {layout}: xchg 'a bit slower' than dwcas "
                         "(0.8x-1.0x)", txt if p else "dwcas crashed every round",
                         "-" if p is None else
                         ("holds" if 0.8 <= p[0] < 1.0 else
                          "no: faster" if p[0] >= 1.0 else "no: much slower")
                         + (" (within noise)" if p and p[1] < 1.0 <= p[2] else "")))
            for v in ("none", "locked"):
                p, txt = both(x(2 * MIB, t), o(2 * MIB, t, v), f"xchg / {v}")
                rows.append((f"2. 2 MiB, {t}T, {layout}: xchg 2.6x {v}", txt,
                             "-" if p is None else verdict(p, 2.6)))
            worst = None
            for s in SEED_SIZES[1:]:
                for v in HEADED[1:] + ["none"]:
                    p, txt = both(x(s, t), o(s, t, v), f"xchg / {v} at {human_size(s)}")
                    if p and (worst is None or p[0] < worst[0][0]):
                        worst = (p, txt)
            if worst:
                rows.append((f"3. 256 KiB and 2 MiB, {t}T, {layout}: xchg as fast as every "
                             "variant (the closest)", worst[1], verdict(worst[0], 1.0)))
    out = ["\n### The seed's claims, measured\n",
           "Claim 3 leaves out 48 KiB: objects up to budget/8 (64 KiB) stay in the thread "
           "caches, so every variant runs the same code there and the ratios are noise.\n",
           "| claim | measured | verdict (on ops/s) |", "|---|---|---|"]
    return out + [f"| {a} | {b} | {c} |" for (a, b, c) in rows]


def plot(path, cells, res, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("bench: matplotlib missing, no PNG (bench/ensure-deps.sh installs it)\n")
        return False
    g = groups(cells)
    # the panels of issue #5: hot path on 1 thread, the seeds' case on 4
    # threads (and 16 when measured), producer/consumer on 2 threads; else
    # the thread count with the most sizes
    want = [("hot", 1), ("seeds", 4), ("prodcons", 2), ("seeds", 16)]
    panels = {k: ((k), g[k]) for k in want if k in g}
    for (w, t), v in g.items():
        if w != "memory" and not any(k[0] == w for k in panels):
            panels[(w, t)] = ((w, t), v)
    ncol = 2 if len(panels) > 1 else 1
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(8 * ncol, 6 * nrow), squeeze=False)
    axes = [ax for row in axes for ax in row]
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    styles = {}
    cmap = plt.get_cmap("tab20")
    for ax, ((w, t), (sizes, imps)) in zip(axes, panels.values()):
        for i in imps:
            if i in res.na:
                continue
            xs, ys = [], []
            for s in sizes:
                v = res.median(w, s, t, i)
                if v:
                    xs.append(s)
                    ys.append(v)
            if not xs:
                continue
            if i not in styles:
                styles[i] = cmap(len(styles) % 20)
            ax.plot(xs, ys, marker="o", label=i, color=styles[i],
                    linestyle="--" if i.startswith("musl") else "-",
                    linewidth=2.5 if i.endswith("pool-xchg") else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([human_size(s) for s in sizes], rotation=30)
        ax.set_xlabel("object size")
        ax.set_ylabel("ops/s (alloc + free), median")
        nt = max(2, t - t % 2) if w == "prodcons" else t
        ax.set_title(f"{w}, {nt} thread{'s' if nt > 1 else ''}"
                     + (f" ({max(1, t // 2)} pair{'s' if t > 3 else ''})" if w == "prodcons" else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="every size and thread count")
    ap.add_argument("--quick", action="store_true", help="the make bench subset (default)")
    ap.add_argument("--seeds", action="store_true", help="only the seed's table")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--ms", type=int, default=None, help="measured ms per cell")
    ap.add_argument("--out", default=os.path.join(ROOT, "results"))
    ap.add_argument("--name", default=None, help="file name stem (quick or full)")
    ap.add_argument("--plot-dir", default=PLOTS, help="where the PNG goes")
    ap.add_argument("--replot", metavar="RAW_CSV",
                    help="only redraw the PNG from a -raw.csv of an earlier run")
    args = ap.parse_args()
    args.rounds = args.rounds or (5 if args.full else 5)
    args.ms = args.ms or (200 if args.full else 120)
    name = args.name or ("full" if args.full else "seeds" if args.seeds else "quick")
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.plot_dir, exist_ok=True)

    if args.replot:
        res = Results()
        cells = []
        with open(args.replot) as f:
            for row in csv.DictReader(f):
                key = (row["workload"], int(row["size"]), int(row["threads"]), row["impl"])
                res.raw.setdefault(key, []).append(row)
                if key not in cells:
                    cells.append(key)
        order = {i: n for n, i in enumerate(IMPLS)}
        cells.sort(key=lambda c: (c[0], c[2], c[1], order.get(c[3], 99)))
        base = os.path.basename(args.replot).replace("-raw.csv", "")
        png = os.path.join(args.plot_dir, f"{base}.png")
        if plot(png, cells, res, f"libpools {args.name or base} ({machine()['cpu']})"):
            print(png)
        return

    mach = machine()
    cells, res, took = run(args)
    write_csv(os.path.join(args.out, f"{name}-raw.csv"), res)
    write_median_csv(os.path.join(args.out, f"{name}.csv"), cells, res)
    cmd = "make bench-full" if args.full else "make bench"
    if sys.argv[1:] not in ([], ["--quick"], ["--full"]):
        cmd = "bench/run.py " + " ".join(sys.argv[1:])
    head = [f"# Benchmark results: `{cmd}`\n",
            f"Generated by bench/run.py on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"commit {mach['commit']}, in {took:.0f} s: {args.rounds} interleaved rounds "
            f"of {args.ms} ms per cell (after a {args.ms // 5} ms warm-up), medians.\n",
            f"- machine: {mach['cpu']}, kernel {mach['kernel']}, "
            f"load average at start {mach['loadavg']}",
            f"- {mach['glibc']}; musl {mach['musl']}; jemalloc {mach['jemalloc']} and "
            f"mimalloc {mach['mimalloc']} (Debian packages, LD_PRELOAD)",
            "- n/a: variants the library refuses (`pool_set_shared_cache` returns -1): "
            + (", ".join(sorted(res.na)) or "none"),
            "- pool-nocache is `POOL_SHARED_CACHE=none POOL_CACHE_SIZE=0`; "
            "musl/... runs the `musl-gcc -static` build"]
    if res.crashes:
        head.append("- crashed rounds (killed by a signal; left out of the medians): " +
                    "; ".join(f"{i} {w} {human_size(s)} {t}T: {len(v)} (signal {v[0]})"
                              for (w, s, t, i), v in sorted(res.crashes.items())))
    body = tables(cells, res)
    tg = targets(res) + seed_table(cells, res)
    png = os.path.join(args.plot_dir, f"{name}.png")
    if plot(png, cells, res, f"libpools {cmd} ({mach['cpu']})"):
        raw = os.path.relpath(os.path.join(args.out, f"{name}-raw.csv"), ROOT)
        head.append(f"\nPlot of ops/s against object size (not committed): "
                    f"`python3 bench/run.py --replot {raw}` draws it into "
                    f"`{os.path.relpath(png, ROOT)}`.")
    text = "\n".join(head + tg + ["\n## Tables"] + body) + "\n"
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
