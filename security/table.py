#!/usr/bin/env python3
"""security/table.py DIR NAME...: the table of the security suite's runs
DIR/NAME.txt (lines "<kind> <size> <result> ..." from harness.h), as
Markdown: one row per kind, one column per run, each cell the cases caught
out of the cases run ("-": the kind has no meaning there); then the totals.
A BROKEN case (its harmless twin failed) is shown with a '!' and makes the
script exit 1."""
import sys

def main():
    d, names = sys.argv[1], sys.argv[2:]
    kinds, runs, broken = [], {}, []
    for n in names:
        res = {}
        with open(f"{d}/{n}.txt") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3 or line.startswith(" "):
                    continue
                kind, size, r = parts[0], parts[1], parts[2]
                if not size.isdigit():
                    continue
                if kind not in kinds:
                    kinds.append(kind)
                res.setdefault(kind, []).append((size, r))
                if r == "BROKEN":
                    broken.append(f"{n}: {line.strip()}")
        runs[n] = res
    print("| kind | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    caught = {n: 0 for n in names}
    cases = {n: 0 for n in names}
    full = {n: 0 for n in names}
    for k in kinds:
        cells = []
        for n in names:
            rs = runs[n].get(k)
            if not rs:
                cells.append("-")
                continue
            c = sum(1 for _, r in rs if r == "CAUGHT")
            caught[n] += c
            cases[n] += len(rs)
            full[n] += c == len(rs)
            bad = "!" if any(r == "BROKEN" for _, r in rs) else ""
            cells.append(f"{c}/{len(rs)}{bad}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("| **cases caught** | " + " | ".join(f"**{caught[n]}/{cases[n]}**" for n in names) + " |")
    print("| kinds caught at every size | " +
          " | ".join(f"{full[n]}/{sum(1 for k in kinds if runs[n].get(k))}" for n in names) + " |")
    if broken:
        print("\nharmless twins that failed (the case is broken, not the allocator):")
        for b in broken:
            print("  " + b)
        sys.exit(1)

main()
