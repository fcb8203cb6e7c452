/*
 * test_carve_apart: the new objects of two threads never start in the same
 * 4 KiB page, even when the threads take them in turns, one object each,
 * from the same pool (BENCHMARKS.md, issue #13: two threads on two CPUs
 * walking objects that share pages run into each other's lines); and each
 * thread's new objects come in address order, neighbours of each other.
 * Also checks that `allocated` counts exactly the objects taken (one new
 * object per miss), and that every object comes back.
 *
 * The turns run one at a time, each on a named worker (stepper.h),
 * pinned to two different CPUs when there are two. Skipped under
 * POOL_BACKEND=malloc (the objects are malloc's, placed as it likes).
 * Under valgrind's memcheck the pools take the debugging path (each
 * object with a prefix for the cache links, README "valgrind and
 * AddressSanitizer"): the counts are checked, not the layout.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pools.h>
#include "check.h"
#include "stepper.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Objects per thread and size: several pages of each size. */
#define TURNS 200u
#define PAGE 4096u

/* A thread's objects of `pool`, taken one per step. */
struct worker {
    struct stepper thread;
    int cpu; /* -1: not pinned */
    int pinned;
    struct pool_head *pool;
    void *objs[TURNS];
    unsigned n;
};

static void *(*volatile get)(struct pool_head *) = pool_alloc;
static void (*volatile put)(struct pool_head *, void *) = pool_free;

static void pin(void *arg)
{
    struct worker *w = arg;
    w->pinned = 1;
    if (w->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(w->cpu, &set);
        w->pinned = pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0 &&
                    sched_getcpu() == w->cpu;
    }
}

static void take(void *arg)
{
    struct worker *w = arg;
    w->objs[w->n] = get(w->pool);
    CHECK(w->objs[w->n] != NULL);
    if (w->objs[w->n])
        memset(w->objs[w->n], 0x5a, 16);
    w->n++;
}

/* Frees the thread's objects on the thread itself. */
static void give_back(void *arg)
{
    struct worker *w = arg;
    for (unsigned i = 0; i < w->n; i++)
        put(w->pool, w->objs[i]);
}

static void start(struct worker *w, int cpu, struct pool_head *pool)
{
    memset(w, 0, sizeof(*w));
    w->cpu = cpu;
    w->pool = pool;
    stepper_start(&w->thread);
    stepper_run(&w->thread, pin, w);
}

static void stop(struct worker *w)
{
    stepper_run(&w->thread, give_back, w);
    stepper_stop(&w->thread);
}

/* Pages in which an object of `a` and an object of `b` start. */
static unsigned shared_pages(const struct worker *a, const struct worker *b)
{
    unsigned shared = 0;
    for (unsigned i = 0; i < a->n; i++) {
        uintptr_t pa = (uintptr_t)a->objs[i] / PAGE;
        int seen = 0;
        for (unsigned k = 0; k < i && !seen; k++)
            seen = (uintptr_t)a->objs[k] / PAGE == pa;
        if (seen)
            continue;
        for (unsigned j = 0; j < b->n; j++)
            if ((uintptr_t)b->objs[j] / PAGE == pa) {
                shared++;
                break;
            }
    }
    return shared;
}

/* How many of w's objects start where the previous one ends. */
static unsigned neighbours(const struct worker *w, size_t size)
{
    unsigned k = 0;
    for (unsigned i = 1; i < w->n; i++)
        k += (uintptr_t)w->objs[i] == (uintptr_t)w->objs[i - 1] + size;
    return k;
}

/* Two CPUs this process may run on, or -1. */
static int two_cpus(int cpu[2])
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0)
        return -1;
    int n = 0;
    for (int c = 0; c < CPU_SETSIZE && n < 2; c++)
        if (CPU_ISSET(c, &set))
            cpu[n++] = c;
    return n == 2 ? 0 : -1;
}

static void run(size_t size, const int cpu[2], int layout)
{
    char name[32];
    snprintf(name, sizeof name, "carve%zu", size);
    struct pool_head *pool = pool_create(name, size, 0);
    CHECK(pool != NULL);
    if (!pool)
        return;
    struct worker wa, wb;
    start(&wa, cpu[0], pool);
    start(&wb, cpu[1], pool);
    CHECK(wa.pinned && wb.pinned);
    for (unsigned t = 0; t < TURNS; t++) {
        stepper_run(&wa.thread, take, &wa);
        stepper_run(&wb.thread, take, &wb);
    }
    struct pool_stats st;
    pool_get_stats(pool, &st);
    CHECK_EQ(st.allocated, 2 * TURNS);
    if (layout) {
        unsigned shared = shared_pages(&wa, &wb);
        if (!CHECK_EQ(shared, 0))
            fprintf(stderr, "  %zu B: %u pages hold new objects of both threads\n", size,
                    shared);
        /* A thread's objects are in a row but where a run of the span
         * ends (a chunk, or the span itself): most of them. */
        size_t stride = (size + 15) & ~(size_t)15;
        unsigned na = neighbours(&wa, stride), nb = neighbours(&wb, stride);
        if (!CHECK(na >= TURNS * 3 / 4 && nb >= TURNS * 3 / 4))
            fprintf(stderr, "  %zu B: neighbours %u and %u of %u\n", size, na, nb, TURNS - 1);
    }
    stop(&wa);
    stop(&wb);
    /* The threads' exits put every object in the shared cache; the flush
     * gives them all back to their spans. */
    pool_flush(pool);
    pool_get_stats(pool, &st);
    CHECK_EQ(st.allocated, 0);
    pool_destroy(pool);
}

int main(void)
{
    const char *backend = getenv("POOL_BACKEND");
    if (backend && strcmp(backend, "malloc") == 0) {
        puts("test_carve_apart: POOL_BACKEND=malloc, nothing to check");
        return 0;
    }
    int cpu[2];
    if (two_cpus(cpu) != 0) {
        puts("test_carve_apart: fewer than two CPUs, threads not pinned");
        cpu[0] = cpu[1] = -1;
    }
    /* Sizes that divide the page and sizes that do not (an object may then
     * start in one page and end in the next). */
    int layout = !under_memcheck();
    if (!layout)
        puts("test_carve_apart: under memcheck, the counts only");
    const size_t sizes[] = { 64, 48, 224, 1024, 1040, 3000 };
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++)
        run(sizes[i], cpu, layout);
    return check_done();
}
