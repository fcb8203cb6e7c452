/*
 * test_large: 2 MiB and 64 MiB objects, the thread-cache bypass for objects
 * larger than an eighth of the budget (and its exact boundary), a budget
 * large enough to cache 2 MiB objects, and pool_flush giving back the whole
 * shared cache (allocated == used afterwards) while leaving thread caches;
 * objects of 2 MiB and more each in a mapping of its own that starts at a
 * 2 MiB boundary (so that one huge page can back it), unmapped by the flush.
 */
#include <pools.h>
#include "check.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MiB (1024u * 1024u)

static int is_aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* Touches every page of the object with a pattern derived from `seed`. */
static void stamp(unsigned char *o, size_t size, unsigned seed)
{
    for (size_t i = 0; i < size; i += 4096)
        o[i] = (unsigned char)(seed + i / 4096);
    o[size - 1] = (unsigned char)(seed ^ 0xA5);
}

static int stamped(const unsigned char *o, size_t size, unsigned seed)
{
    for (size_t i = 0; i < size; i += 4096)
        if (o[i] != (unsigned char)(seed + i / 4096))
            return 0;
    return o[size - 1] == (unsigned char)(seed ^ 0xA5);
}

static void test_2mib(void)
{
    const size_t size = 2 * MiB;
    struct pool_head *p = pool_create("two_mib", size, 0);
    CHECK(p != NULL);
    CHECK_EQ(STATS(p).size, size);

    enum { N = 4 };
    unsigned char *o[N];
    for (int i = 0; i < N; i++) {
        o[i] = pool_alloc(p);
        CHECK(o[i] != NULL);
        CHECK(is_aligned16(o[i]));
        stamp(o[i], size, (unsigned)i * 17);
    }
    int intact = 1;
    for (int i = 0; i < N; i++)
        intact &= stamped(o[i], size, (unsigned)i * 17);
    CHECK(intact);
    CHECK_COUNTS(p, N, N, 0, 0);

    /* 2 MiB > 512 KiB / 8: freeing bypasses the thread cache */
    pool_free(p, o[0]);
    CHECK_COUNTS(p, N, N - 1, 0, 1);
    pool_free(p, o[1]);
    CHECK_COUNTS(p, N, N - 2, 0, 2);

    /* allocating takes them back from the shared cache, without malloc */
    unsigned char *again = pool_alloc(p);
    CHECK(again == o[0] || again == o[1]);
    CHECK_COUNTS(p, N, N - 1, 0, 1);
    stamp(again, size, 99);

    /* flush: everything not in use goes back */
    pool_free(p, o[2]);
    CHECK_COUNTS(p, N, N - 2, 0, 2);
    unsigned long long before = pool_total_allocated();
    pool_flush(p);
    struct pool_stats s = STATS(p);
    CHECK_EQ(s.allocated, s.used);
    CHECK_COUNTS(p, N - 2, N - 2, 0, 0);
    CHECK_EQ(before - pool_total_allocated(), 2 * size);

    CHECK(stamped(o[3], size, 3 * 17)); /* the held ones were not touched */
    CHECK(stamped(again, size, 99));
    pool_free(p, o[3]);
    pool_free(p, again);
    CHECK_COUNTS(p, N - 2, 0, 0, N - 2);
    CHECK(pool_destroy(p) == NULL);
}

static void test_64mib(void)
{
    const size_t size = 64 * MiB;
    struct pool_head *p = pool_create("sixty_four_mib", size, 0);
    CHECK(p != NULL);
    unsigned char *a = pool_alloc(p);
    unsigned char *b = pool_zalloc(p);
    CHECK(a != NULL && b != NULL && a != b);
    CHECK(is_aligned16(a) && is_aligned16(b));
    if (!a || !b)
        return;
    /* zalloc: zero everywhere (sample one byte per page and the ends) */
    int zero = b[0] == 0 && b[size - 1] == 0;
    for (size_t i = 0; i < size; i += 4096)
        zero &= b[i] == 0;
    CHECK(zero);
    stamp(a, size, 1);
    stamp(b, size, 2);
    CHECK(stamped(a, size, 1));
    CHECK(stamped(b, size, 2));
    CHECK_COUNTS(p, 2, 2, 0, 0);
    unsigned long long used = pool_total_used();
    pool_free(p, a);
    CHECK_EQ(used - pool_total_used(), size);
    CHECK_COUNTS(p, 2, 1, 0, 1);
    pool_free(p, b);
    CHECK_COUNTS(p, 2, 0, 0, 2);

    /* zalloc of an object coming back from the shared cache is zeroed */
    unsigned char *z = pool_zalloc(p);
    CHECK(z == a || z == b);
    if (z) {
        int zz = z[size - 1] == 0;
        for (size_t i = 0; i < size; i += 4096)
            zz &= z[i] == 0;
        CHECK(zz);
        pool_free(p, z);
    }

    pool_flush(p);
    CHECK_COUNTS(p, 0, 0, 0, 0);
    CHECK(pool_destroy(p) == NULL);
}

/* Objects of exactly budget/8 are cached; one more 16-byte step bypasses. */
static void test_bypass_boundary(void)
{
    CHECK_EQ(pool_set_cache_size(512 * 1024), 0);
    struct pool_head *at = pool_create("at_64k", 64 * 1024, 0);
    struct pool_head *over = pool_create("over_64k", 64 * 1024 + 1, 0);
    CHECK(at != NULL && over != NULL);
    CHECK_EQ(STATS(over).size, 64 * 1024 + 16);

    void *x = pool_alloc(at), *y = pool_alloc(over);
    CHECK(x && y);
    pool_free(at, x);
    pool_free(over, y);
    CHECK_COUNTS(at, 1, 0, 1, 0);
    CHECK_COUNTS(over, 1, 0, 0, 1);
    CHECK(pool_alloc(at) == x);   /* from the thread cache */
    CHECK(pool_alloc(over) == y); /* from the shared cache */
    CHECK_COUNTS(at, 1, 1, 0, 0);
    CHECK_COUNTS(over, 1, 1, 0, 0);
    pool_free(at, x);
    pool_free(over, y);
    pool_evict_local_cache();
    CHECK_COUNTS(at, 1, 0, 0, 1);
    pool_flush(at);
    pool_flush(over);
    CHECK_COUNTS(at, 0, 0, 0, 0);
    CHECK_COUNTS(over, 0, 0, 0, 0);
    CHECK(pool_destroy(at) == NULL);
    CHECK(pool_destroy(over) == NULL);
}

/* With a 32 MiB budget, 2 MiB objects (<= 4 MiB) are cached per thread. */
static void test_big_budget(void)
{
    size_t old = pool_get_cache_size();
    CHECK_EQ(pool_set_cache_size(32 * MiB), 0);
    struct pool_head *p = pool_create("two_mib_cached", 2 * MiB, 0);
    CHECK(p != NULL);
    void *a = pool_alloc(p), *b = pool_alloc(p);
    CHECK(a && b);
    pool_free(p, a);
    pool_free(p, b);
    CHECK_COUNTS(p, 2, 0, 2, 0);
    CHECK(pool_alloc(p) == b); /* LIFO */
    CHECK(pool_alloc(p) == a);
    pool_free(p, a);
    pool_free(p, b);
    pool_evict_local_cache();
    CHECK_COUNTS(p, 2, 0, 0, 2);
    pool_flush(p);
    CHECK_COUNTS(p, 0, 0, 0, 0);
    CHECK(pool_destroy(p) == NULL);
    CHECK_EQ(pool_set_cache_size(old), 0);
}

/* Large objects freed by a thread that exits go to the shared cache as well
 * (they never were in its cache); flush then empties the pool. */
static struct pool_head *thr_pool;
static void *thr_objs[3];

static void *large_freer(void *arg)
{
    (void)arg;
    for (int i = 0; i < 3; i++)
        pool_free(thr_pool, thr_objs[i]);
    CHECK_COUNTS(thr_pool, 3, 0, 0, 3);
    return NULL;
}

static void test_large_from_thread(void)
{
    thr_pool = pool_create("large_thread", 1 * MiB, 0);
    CHECK(thr_pool != NULL);
    for (int i = 0; i < 3; i++) {
        thr_objs[i] = pool_alloc(thr_pool);
        CHECK(thr_objs[i] != NULL);
    }
    pthread_t t;
    CHECK(pthread_create(&t, NULL, large_freer, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_COUNTS(thr_pool, 3, 0, 0, 3);
    pool_flush(thr_pool);
    CHECK_COUNTS(thr_pool, 0, 0, 0, 0);
    CHECK(pool_destroy(thr_pool) == NULL);
}

/* flush gives back the shared cache and leaves thread caches alone */
static void test_flush_leaves_thread_cache(void)
{
    struct pool_head *p = pool_create("flush_small", 512, 0);
    CHECK(p != NULL);
    void *o[10];
    for (int i = 0; i < 10; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < 4; i++)
        pool_free(p, o[i]);
    pool_evict_local_cache();
    for (int i = 4; i < 7; i++)
        pool_free(p, o[i]);
    CHECK_COUNTS(p, 10, 3, 3, 4);
    pool_flush(p);
    CHECK_COUNTS(p, 6, 3, 3, 0);
    for (int i = 6; i >= 4; i--)
        CHECK(pool_alloc(p) == o[i]);
    CHECK_COUNTS(p, 6, 6, 0, 0);
    for (int i = 4; i < 10; i++)
        pool_free(p, o[i]);
    pool_evict_local_cache();
    pool_flush(p);
    CHECK_COUNTS(p, 0, 0, 0, 0);
    CHECK(pool_destroy(p) == NULL);
}

/* Whether the byte at `p` is mapped: mincore fails with ENOMEM where
 * nothing is. */
static int mapped(const void *p)
{
    unsigned char v;
    void *page = (void *)((uintptr_t)p & ~(uintptr_t)4095);
    return mincore(page, 1, &v) == 0;
}

static void test_huge_page_objects(void)
{
    /* HAProxy's trash chunk: a 2 MiB buffer and its 32-byte header */
    const size_t size = 2 * MiB + 32;
    const char *backend = getenv("POOL_BACKEND");
    int own_mappings = !(backend && strcmp(backend, "malloc") == 0);
    /* Under memcheck an object starts past its block's prefix. */
    int aligned = own_mappings && !under_memcheck();
    struct pool_head *p = pool_create("huge_pages", size, 0);
    CHECK(p != NULL);
    enum { N = 3 };
    unsigned char *o[N];
    for (int i = 0; i < N; i++) {
        o[i] = pool_alloc(p);
        CHECK(o[i] != NULL);
        if (!o[i])
            return;
        if (aligned)
            CHECK_EQ((uintptr_t)o[i] % (2 * MiB), 0);
        stamp(o[i], size, (unsigned)i + 5);
    }
    for (int i = 0; i < N; i++) {
        CHECK(stamped(o[i], size, (unsigned)i + 5));
        pool_free(p, o[i]);
    }
    pool_flush(p);
    CHECK_COUNTS(p, 0, 0, 0, 0);
    if (own_mappings)
        for (int i = 0; i < N; i++)
            CHECK(!mapped(o[i]) && !mapped(o[i] + size - 1));
    CHECK(pool_destroy(p) == NULL);
}

int main(void)
{
    test_2mib();
    test_64mib();
    test_bypass_boundary();
    test_big_budget();
    test_large_from_thread();
    test_flush_leaves_thread_cache();
    test_huge_page_objects();
    return check_done();
}
