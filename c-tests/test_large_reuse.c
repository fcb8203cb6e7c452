/*
 * test_large_reuse: objects too large for the thread caches (above an
 * eighth of the budget) go to the shared cache by CPU, not by thread: of
 * two threads on one CPU, the allocation that follows two frees gets the
 * object freed last, whichever thread freed it (the object that is most
 * likely still in that CPU's caches), and the counts stay exact.
 *
 * Both worker threads are pinned to the CPU the test starts on; the steps
 * run one at a time, each on a named worker (stepper.h).
 */
#include <pools.h>
#include "check.h"
#include "stepper.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OBJ_SIZE (256u * 1024u) /* > 512 KiB / 8: skips the thread cache */

static struct pool_head *pool;
static unsigned char *a, *b, *c, *d;

static void alloc_two(void *unused)
{
    (void)unused;
    a = pool_alloc(pool);
    b = pool_alloc(pool);
    CHECK(a != NULL && b != NULL && a != b);
    if (a && b) {
        memset(a, 0xA1, OBJ_SIZE);
        memset(b, 0xB2, OBJ_SIZE);
    }
}

static void free_a(void *unused) { (void)unused; pool_free(pool, a); }
static void free_b(void *unused) { (void)unused; pool_free(pool, b); }
static void alloc_c(void *unused) { (void)unused; c = pool_alloc(pool); }
static void alloc_d(void *unused) { (void)unused; d = pool_alloc(pool); }
static void free_c(void *unused) { (void)unused; pool_free(pool, c); }
static void free_d(void *unused) { (void)unused; pool_free(pool, d); }

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
    struct stepper wa, wb;
    stepper_start(&wa);
    stepper_run(&wa, alloc_two, NULL);
    stepper_start(&wb);
    CHECK_COUNTS(pool, 2, 2, 0, 0);

    /* a, then b, leave for the shared cache from the same CPU; the next
     * allocation there, on the thread that freed a, gets b. */
    stepper_run(&wa, free_a, NULL);
    stepper_run(&wb, free_b, NULL);
    CHECK_COUNTS(pool, 2, 0, 0, 2);
    stepper_run(&wa, alloc_c, NULL);
    CHECK(c == b);
    stepper_run(&wb, alloc_d, NULL);
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

    stepper_run(&wa, free_c, NULL);
    stepper_run(&wb, free_d, NULL);
    CHECK_COUNTS(pool, 2, 0, 0, 2);
    stepper_stop(&wa);
    stepper_stop(&wb);
    CHECK(pool_destroy(pool) == NULL);
    return check_done();
}
