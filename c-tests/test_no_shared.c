/*
 * test_no_shared: pool_set_shared_cache("none") selected before any pool
 * exists. Checks the knob's errors (EINVAL, then EBUSY once a pool exists),
 * and that everything that would go to the shared cache goes back to malloc
 * instead: thread-cache overflow, pool_evict_local_cache, the large-object
 * bypass, and the caches of exiting threads. `shared` stays 0 throughout.
 */
#include <pools.h>
#include "check.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BUDGET = 4096 }; /* 64 objects of 64 bytes; 7/8 is 3584 */

static struct pool_head *pool64;

static void *overflow_thread(void *arg)
{
    enum { NA = 80, FREED = 65 };
    void **a = arg; /* main's array: main frees what the thread leaves */
    for (int i = 0; i < NA; i++) {
        a[i] = pool_alloc(pool64);
        CHECK(a[i] != NULL);
    }
    CHECK_COUNTS(pool64, NA, NA, 0, 0);
    for (int i = 0; i < 64; i++)
        pool_free(pool64, a[i]);
    CHECK_COUNTS(pool64, NA, NA - 64, 64, 0);
    pool_free(pool64, a[64]); /* over budget: the oldest go back to malloc */
    struct pool_stats s = STATS(pool64);
    CHECK_EQ(s.shared, 0);
    CHECK_EQ(s.used, NA - FREED);
    unsigned long released = NA - s.allocated;
    if (!CHECK(released >= 9 && released <= 16))
        fprintf(stderr, "  released %lu objects (expected 9..16)\n", released);
    CHECK_EQ(s.cached, FREED - released);
    CHECK(s.cached * 64 <= BUDGET * 7 / 8);

    /* the survivors are the newest, and come back newest first */
    int order_ok = 1;
    for (long i = FREED - 1; i >= (long)released; i--)
        order_ok &= pool_alloc(pool64) == a[i];
    CHECK(order_ok);
    /* the thread cache and the (absent) shared cache are empty: malloc */
    void *fresh = pool_alloc(pool64);
    CHECK(fresh != NULL);
    s = STATS(pool64);
    CHECK_EQ(s.allocated, NA - released + 1);
    CHECK_EQ(s.used, NA - released + 1);
    CHECK_EQ(s.cached, 0);
    CHECK_EQ(s.shared, 0);

    /* free a few, and exit with them cached: they go back to malloc */
    pool_free(pool64, fresh);
    for (long i = released; i < 40; i++)
        pool_free(pool64, a[i]);
    s = STATS(pool64);
    CHECK_EQ(s.cached, 1 + 40 - released);
    CHECK_EQ(s.shared, 0);
    for (long i = 40; i < NA; i++)
        a[i - 40] = a[i]; /* the 40 still held, for main to free */
    return NULL;
}

int main(void)
{
    /* first thing: select no shared cache */
    CHECK_EQ(pool_set_shared_cache("none"), 0);

    errno = 0;
    CHECK_EQ(pool_set_shared_cache("bogus"), -1);
    CHECK_ERRNO(EINVAL);
    errno = 0;
    CHECK_EQ(pool_set_shared_cache(""), -1);
    CHECK_ERRNO(EINVAL);
    errno = 0;
    CHECK_EQ(pool_set_shared_cache(NULL), -1);
    CHECK_ERRNO(EINVAL);
    /* a valid name is still accepted before any pool exists */
    CHECK_EQ(pool_set_shared_cache("none"), 0);

    CHECK_EQ(pool_set_cache_size(BUDGET), 0);
    pool64 = pool_create("no_shared_64", 64, 0);
    CHECK(pool64 != NULL);

    errno = 0;
    CHECK_EQ(pool_set_shared_cache("xchg"), -1);
    CHECK_ERRNO(EBUSY);
    errno = 0;
    CHECK_EQ(pool_set_shared_cache("none"), -1);
    CHECK_ERRNO(EBUSY);

    /* overflow, order, and exit with a warm cache, in a fresh thread */
    pthread_t t;
    void *a[80];
    CHECK(pthread_create(&t, NULL, overflow_thread, a) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    struct pool_stats s = STATS(pool64);
    CHECK_EQ(s.used, 40); /* objects the thread still held: A40..A79 */
    CHECK_EQ(s.cached, 0);
    CHECK_EQ(s.shared, 0);
    CHECK_EQ(s.allocated, 40);

    /* main: evict_local_cache returns objects to malloc */
    unsigned long long total = pool_total_allocated();
    struct pool_head *p = pool_create("no_shared_evict", 100, 0); /* 112 */
    CHECK(p != NULL);
    void *o[10];
    for (int i = 0; i < 10; i++)
        o[i] = pool_alloc(p);
    CHECK_EQ(pool_total_allocated() - total, 10 * 112);
    for (int i = 0; i < 10; i++)
        pool_free(p, o[i]);
    CHECK_COUNTS(p, 10, 0, 10, 0);
    pool_evict_local_cache();
    CHECK_COUNTS(p, 0, 0, 0, 0);
    CHECK_EQ(pool_total_allocated(), total);

    /* objects above BUDGET/8 = 512 bytes bypass the cache: straight to malloc */
    struct pool_head *big = pool_create("no_shared_big", 1000, 0);
    CHECK(big != NULL);
    void *b1 = pool_alloc(big), *b2 = pool_alloc(big);
    CHECK(b1 && b2);
    CHECK_COUNTS(big, 2, 2, 0, 0);
    pool_free(big, b1);
    CHECK_COUNTS(big, 1, 1, 0, 0);
    pool_free(big, b2);
    CHECK_COUNTS(big, 0, 0, 0, 0);

    /* 2 MiB objects with the default budget, too */
    CHECK_EQ(pool_set_cache_size(512 * 1024), 0);
    struct pool_head *huge = pool_create("no_shared_2m", 2u << 20, 0);
    CHECK(huge != NULL);
    void *h = pool_alloc(huge);
    CHECK(h != NULL);
    CHECK_COUNTS(huge, 1, 1, 0, 0);
    pool_free(huge, h);
    CHECK_COUNTS(huge, 0, 0, 0, 0);

    /* the 40 objects the thread left: freed here, then evicted to malloc */
    for (int i = 0; i < 40; i++)
        pool_free(pool64, a[i]);
    s = STATS(pool64);
    CHECK_EQ(s.used, 0);
    CHECK_EQ(s.cached, 40);
    CHECK_EQ(s.shared, 0);
    CHECK_EQ(s.allocated, 40);
    pool_evict_local_cache();
    CHECK_COUNTS(pool64, 0, 0, 0, 0);

    /* flush and gc have nothing to do and do no harm */
    pool_flush(pool64);
    pool_gc(NULL);
    CHECK_COUNTS(pool64, 0, 0, 0, 0);

    CHECK(pool_destroy(p) == NULL);
    CHECK(pool_destroy(big) == NULL);
    CHECK(pool_destroy(huge) == NULL);
    CHECK(pool_destroy(pool64) == NULL);
    return check_done();
}
