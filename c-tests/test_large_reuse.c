/*
 * test_large_reuse: objects too large for the thread caches (above an
 * eighth of the budget) go to the shared cache by CPU, not by thread: of
 * two threads on one CPU, the allocation that follows two frees gets the
 * object freed last, whichever thread freed it (the object that is most
 * likely still in that CPU's caches), and the counts stay exact.
 *
 * Both worker threads are pinned to the CPU the test starts on; the steps
 * run one at a time, each on a named worker (a semaphore per worker).
 */
#include <pools.h>
#include "check.h"

#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OBJ_SIZE (256u * 1024u) /* > 512 KiB / 8: skips the thread cache */

struct worker {
    pthread_t th;
    sem_t go;    /* posted by main: run `step` */
    sem_t done;  /* posted by the worker when `step` returned */
    void (*step)(void);
    int quit;
};

static struct pool_head *pool;
static unsigned char *a, *b, *c, *d;

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (;;) {
        sem_wait(&w->go);
        if (w->quit)
            return NULL;
        w->step();
        sem_post(&w->done);
    }
}

static void start(struct worker *w)
{
    memset(w, 0, sizeof(*w));
    CHECK(sem_init(&w->go, 0, 0) == 0);
    CHECK(sem_init(&w->done, 0, 0) == 0);
    CHECK(pthread_create(&w->th, NULL, worker_main, w) == 0);
}

static void run(struct worker *w, void (*step)(void))
{
    w->step = step;
    sem_post(&w->go);
    sem_wait(&w->done);
}

static void stop(struct worker *w)
{
    w->quit = 1;
    sem_post(&w->go);
    pthread_join(w->th, NULL);
    sem_destroy(&w->go);
    sem_destroy(&w->done);
}

static void alloc_two(void)
{
    a = pool_alloc(pool);
    b = pool_alloc(pool);
    CHECK(a != NULL && b != NULL && a != b);
    if (a && b) {
        memset(a, 0xA1, OBJ_SIZE);
        memset(b, 0xB2, OBJ_SIZE);
    }
}

static void free_a(void) { pool_free(pool, a); }
static void free_b(void) { pool_free(pool, b); }
static void alloc_c(void) { c = pool_alloc(pool); }
static void alloc_d(void) { d = pool_alloc(pool); }
static void free_c(void) { pool_free(pool, c); }
static void free_d(void) { pool_free(pool, d); }

int main(void)
{
    int cpu = sched_getcpu();
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu < 0 ? 0 : cpu, &one);
    if (cpu < 0 || sched_setaffinity(0, sizeof(one), &one) != 0) {
        /* The workers would not share a CPU: nothing to check here. */
        printf("test_large_reuse: cannot pin to one CPU, skipped\n");
        CHECK(1);
        return check_done();
    }
    /* Threads created from now on inherit the single-CPU mask. */
    pool = pool_create("large_reuse", OBJ_SIZE, 0);
    CHECK(pool != NULL);
    if (!pool)
        return check_done();

    /* One after the other, so that each gets its thread cache (and with it
     * its own home bucket) before the next one exists. */
    struct worker wa, wb;
    start(&wa);
    run(&wa, alloc_two);
    start(&wb);
    CHECK_COUNTS(pool, 2, 2, 0, 0);

    /* a, then b, leave for the shared cache from the same CPU; the next
     * allocation there, on the thread that freed a, gets b. */
    run(&wa, free_a);
    run(&wb, free_b);
    CHECK_COUNTS(pool, 2, 0, 0, 2);
    run(&wa, alloc_c);
    CHECK(c == b);
    run(&wb, alloc_d);
    CHECK(d == a);
    CHECK_COUNTS(pool, 2, 2, 0, 0);

    /* Their contents past the caches' links are what was written: reused,
     * not allocated anew (not under memcheck, for which a block handed out
     * is undefined, as it should be). */
    const char *preload = getenv("LD_PRELOAD");
    if (!(preload && strstr(preload, "vgpreload_memcheck"))) {
        CHECK(c && c[4096] == 0xB2 && c[OBJ_SIZE - 1] == 0xB2);
        CHECK(d && d[4096] == 0xA1 && d[OBJ_SIZE - 1] == 0xA1);
    }

    run(&wa, free_c);
    run(&wb, free_d);
    CHECK_COUNTS(pool, 2, 0, 0, 2);
    stop(&wa);
    stop(&wb);
    CHECK(pool_destroy(pool) == NULL);
    return check_done();
}
