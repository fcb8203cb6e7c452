#!/usr/bin/env python3
"""bench/class-model.py TRACE... : what the preload's size classes cost a
traced program (traces from bench/malloc-trace.c).

The preload keeps a class's freed objects for that class (in the thread
and shared caches; they go back to their spans only at pool_gc), so the
memory of class c at any time is about the highest count of its live
objects so far times its size. Requests above 32 KiB are counted at their
page-rounded length while live. Prints, per trace, the peak of the live
bytes requested and the peak of that model under each class table:
"four" (16, 32, 48, 64, then four classes per power of two, the table
before the page-and-header class), "page+" (the same and 4368: the
preload's table, malloc/src/lib.rs) and "eight>4K" (eight per power of two above
4 KiB). One thread's view: a multi-threaded program's thread caches come
on top."""
import struct
import sys

MAX_SMALL = 32768


def four(n):
    n = max(n, 1)
    if n <= 64:
        return (n + 15) // 16 * 16
    step = 1 << ((n - 1).bit_length() - 3)
    return (n + step - 1) // step * step


def page_plus(n):
    return 4368 if 4096 < n <= 4368 else four(n)


def eight_above_4k(n):
    if n <= 4096:
        return four(n)
    step = 1 << ((n - 1).bit_length() - 4)
    return (n + step - 1) // step * step


TABLES = {"four": four, "page+": page_plus, "eight>4K": eight_above_4k}


def model(path, cls):
    live = {}
    count, high = {}, {}
    small = large = req = 0
    peak_req = peak = 0

    def alloc(p, n):
        nonlocal small, large, req
        live[p] = n
        req += n
        if n <= MAX_SMALL:
            c = cls(n)
            count[c] = count.get(c, 0) + 1
            if count[c] > high.get(c, 0):
                high[c] = count[c]
                small += c
        else:
            large += (n + 4095) // 4096 * 4096

    def free(p):
        nonlocal large, req
        n = live.pop(p, None)
        if n is None:
            return
        req -= n
        if n <= MAX_SMALL:
            count[cls(n)] -= 1
        else:
            large -= (n + 4095) // 4096 * 4096

    with open(path, "rb") as f:
        data = f.read()
    for op, a, b, c in struct.iter_unpack("<4Q", data):
        if op == 1 and a:
            alloc(a, b)
        elif op == 2:
            free(a)
        elif op == 3 and (c or b == 0):
            # realloc: the old block goes (unless it failed: NULL for a
            # nonzero size), the new one comes.
            if a:
                free(a)
            if c:
                alloc(c, b)
        peak_req = max(peak_req, req)
        peak = max(peak, small + large)
    return peak_req, peak


def main():
    print("| trace | live peak KiB | " + " | ".join(TABLES) + " |")
    print("|---|---|" + "---|" * len(TABLES))
    for path in sys.argv[1:]:
        row = []
        for cls in TABLES.values():
            req, peak = model(path, cls)
            row.append("%d" % (peak // 1024))
        print("| %s | %d | %s |" % (path, req // 1024, " | ".join(row)))


if __name__ == "__main__":
    main()
