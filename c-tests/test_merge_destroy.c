/*
 * test_merge_destroy: merging of POOL_F_SHARED pools, the users count,
 * pool_destroy while objects are in use, destroy taking back the objects
 * that a live (blocked) thread caches, reuse of destroyed heads, and a
 * second destroy of the same handle.
 */
#include <pools.h>
#include "check.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_merge(void)
{
    /* 100, 112 and 105 all round to 112 */
    struct pool_head *a = pool_create("m_first", 100, POOL_F_SHARED);
    struct pool_head *b = pool_create("m_second", 112, POOL_F_SHARED);
    struct pool_head *c = pool_create("m_third", 105, POOL_F_SHARED);
    CHECK(a != NULL);
    CHECK(b == a);
    CHECK(c == a);
    struct pool_stats s = STATS(a);
    CHECK_EQ(s.users, 3);
    CHECK(strcmp(s.name, "m_first") == 0);
    CHECK_EQ(s.size, 112);

    /* a different rounded size is a different pool */
    struct pool_head *d = pool_create("m_other", 113, POOL_F_SHARED); /* 128 */
    CHECK(d != NULL && d != a);
    CHECK_EQ(STATS(d).users, 1);
    CHECK_EQ(STATS(a).users, 3);

    /* never merged without POOL_F_SHARED */
    struct pool_head *n1 = pool_create("m_private", 112, 0);
    struct pool_head *n2 = pool_create("m_private", 112, 0);
    CHECK(n1 != NULL && n2 != NULL);
    CHECK(n1 != a && n2 != a && n1 != n2);
    CHECK_EQ(STATS(n1).users, 1);
    CHECK_EQ(STATS(n2).users, 1);
    CHECK_EQ(STATS(a).users, 3);

    /* a shareable create never merges into a private pool of that size */
    struct pool_head *priv = pool_create("m_private48", 48, 0);
    struct pool_head *sh1 = pool_create("m_shared48", 48, POOL_F_SHARED);
    struct pool_head *sh2 = pool_create("m_shared48_b", 40, POOL_F_SHARED);
    CHECK(priv != NULL && sh1 != NULL);
    CHECK(sh1 != priv);
    CHECK(sh2 == sh1);
    CHECK_EQ(STATS(priv).users, 1);
    CHECK_EQ(STATS(sh1).users, 2);
    CHECK(strcmp(STATS(sh1).name, "m_shared48") == 0);
    CHECK(strcmp(STATS(priv).name, "m_private48") == 0);

    /* POOL_F_EXACT: the exact size is what must match */
    struct pool_head *e1 = pool_create("m_exact100", 100, POOL_F_SHARED | POOL_F_EXACT);
    struct pool_head *e2 = pool_create("m_exact100_b", 100, POOL_F_SHARED | POOL_F_EXACT);
    CHECK(e1 != NULL && e1 != a);
    CHECK(e2 == e1);
    CHECK_EQ(STATS(e1).size, 100);
    CHECK_EQ(STATS(e1).users, 2);
    CHECK_EQ(STATS(a).users, 3);

    /* the objects of merged handles are one pool's */
    void *o1 = pool_alloc(a);
    void *o2 = pool_alloc(b);
    CHECK(o1 && o2 && o1 != o2);
    CHECK_COUNTS(c, 2, 2, 0, 0);
    pool_free(c, o1);
    pool_free(b, o2);
    CHECK_COUNTS(a, 2, 0, 2, 0);

    /* destroy drops users one at a time; the pool lives for the others */
    CHECK(pool_destroy(c) == NULL);
    s = STATS(a);
    CHECK_EQ(s.users, 2);
    CHECK_EQ(s.allocated, 2);
    CHECK_EQ(s.cached, 2);

    /* in use: nothing changes, not even users */
    void *held = pool_alloc(b);
    CHECK(held != NULL);
    CHECK(pool_destroy(b) == b);
    CHECK_EQ(STATS(a).users, 2);
    pool_free(a, held);

    CHECK(pool_destroy(b) == NULL);
    CHECK_EQ(STATS(a).users, 1);
    CHECK(strcmp(STATS(a).name, "m_first") == 0);

    /* once the pool is down to one user, a new shareable create joins it */
    struct pool_head *again = pool_create("m_again", 112, POOL_F_SHARED);
    CHECK(again == a);
    CHECK_EQ(STATS(a).users, 2);
    CHECK(pool_destroy(again) == NULL);

    unsigned long long before = pool_total_allocated();
    CHECK(pool_destroy(a) == NULL); /* the last user: the pool goes */
    CHECK_EQ(before - pool_total_allocated(), 2 * 112);
    struct pool_stats gone;
    errno = 0;
    CHECK_EQ(pool_get_stats(a, &gone), -1);
    CHECK_ERRNO(EINVAL);
    errno = 0;
    CHECK(pool_destroy(a) == NULL);
    CHECK_ERRNO(EINVAL);

    /* a new shareable 112-byte pool is a fresh one */
    struct pool_head *fresh = pool_create("m_fresh", 112, POOL_F_SHARED);
    CHECK(fresh != NULL);
    s = STATS(fresh);
    CHECK_EQ(s.users, 1);
    CHECK(strcmp(s.name, "m_fresh") == 0);
    CHECK_COUNTS(fresh, 0, 0, 0, 0);

    CHECK(pool_destroy(fresh) == NULL);
    CHECK(pool_destroy(d) == NULL);
    CHECK(pool_destroy(n1) == NULL);
    CHECK(pool_destroy(n2) == NULL);
    CHECK(pool_destroy(priv) == NULL);
    CHECK(pool_destroy(sh1) == NULL);
    CHECK_EQ(STATS(sh2).users, 1);
    CHECK(pool_destroy(sh2) == NULL);
    CHECK(pool_destroy(e1) == NULL);
    CHECK(pool_destroy(e2) == NULL);
}

/* ---- destroy while a live thread caches objects of the pool ---- */

enum { T_ALLOC = 30, T_EVICTED = 10, SIZE = 200 /* rounds to 208 */ };

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stage; /* 1: thread's caches are warm; 2: main destroyed the pool */
    struct pool_head *pool;
    struct pool_head *next_pool; /* created by main after the destroy */
    void *objs[T_ALLOC];
    void *after; /* what the thread got from next_pool */
} sync_ = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NULL, NULL, {0}, NULL};

static void set_stage(int st)
{
    pthread_mutex_lock(&sync_.lock);
    sync_.stage = st;
    pthread_cond_broadcast(&sync_.cond);
    pthread_mutex_unlock(&sync_.lock);
}

static void wait_stage(int st)
{
    pthread_mutex_lock(&sync_.lock);
    while (sync_.stage < st)
        pthread_cond_wait(&sync_.cond, &sync_.lock);
    pthread_mutex_unlock(&sync_.lock);
}

static void *cacher(void *arg)
{
    (void)arg;
    for (int i = 0; i < T_ALLOC; i++) {
        sync_.objs[i] = pool_alloc(sync_.pool);
        CHECK(sync_.objs[i] != NULL);
        if (sync_.objs[i])
            memset(sync_.objs[i], 0x33, SIZE);
    }
    for (int i = 0; i < T_EVICTED; i++)
        pool_free(sync_.pool, sync_.objs[i]);
    pool_evict_local_cache(); /* these go to the shared cache */
    for (int i = T_EVICTED; i < T_ALLOC; i++)
        pool_free(sync_.pool, sync_.objs[i]); /* these stay in this thread's cache */

    set_stage(1);
    wait_stage(2); /* blocked while main destroys the pool */

    /* This thread's cache must no longer hold the destroyed pool's objects,
     * even if next_pool reuses the destroyed head. */
    sync_.after = pool_alloc(sync_.next_pool);
    CHECK(sync_.after != NULL); /* from malloc: main checks the counters */
    if (sync_.after)
        memset(sync_.after, 0x44, SIZE);
    pool_free(sync_.next_pool, sync_.after);
    pool_evict_local_cache();
    return NULL;
}

static void test_destroy_reclaims_live_thread_cache(void)
{
    unsigned long long base = pool_total_allocated();
    sync_.pool = pool_create("destroy_live", SIZE, 0);
    CHECK(sync_.pool != NULL);

    pthread_t t;
    CHECK(pthread_create(&t, NULL, cacher, NULL) == 0);
    wait_stage(1);

    /* main caches a few objects of its own */
    CHECK_COUNTS(sync_.pool, T_ALLOC, 0, T_ALLOC - T_EVICTED, T_EVICTED);
    void *mine[5];
    for (int i = 0; i < 5; i++)
        mine[i] = pool_alloc(sync_.pool);
    /* main's own cache was empty: the 5 came from the shared cache */
    struct pool_stats s = STATS(sync_.pool);
    CHECK_EQ(s.allocated, T_ALLOC);
    CHECK_EQ(s.used, 5);
    CHECK_EQ(s.cached + s.shared, T_ALLOC - 5);
    CHECK(s.cached >= T_ALLOC - T_EVICTED);
    for (int i = 0; i < 5; i++)
        pool_free(sync_.pool, mine[i]);
    s = STATS(sync_.pool);
    CHECK_EQ(s.allocated, T_ALLOC);
    CHECK_EQ(s.used, 0);
    CHECK_EQ(s.cached + s.shared, T_ALLOC);
    CHECK(s.cached >= T_ALLOC - T_EVICTED + 5);
    CHECK_EQ(pool_total_allocated() - base, T_ALLOC * 208);

    /* destroy while the thread is alive, blocked, with objects in its cache */
    CHECK(pool_destroy(sync_.pool) == NULL);
    CHECK_EQ(pool_total_allocated(), base);
    errno = 0;
    CHECK_EQ(pool_get_stats(sync_.pool, &s), -1);
    CHECK_ERRNO(EINVAL);

    /* a new pool of the same size (it may reuse the destroyed head) */
    sync_.next_pool = pool_create("after_destroy", SIZE, 0);
    CHECK(sync_.next_pool != NULL);
    void *m = pool_alloc(sync_.next_pool);
    CHECK(m != NULL);
    CHECK_COUNTS(sync_.next_pool, 1, 1, 0, 0);

    set_stage(2);
    CHECK(pthread_join(t, NULL) == 0);

    /* the thread's object came from malloc, not from a stale cache entry */
    CHECK_COUNTS(sync_.next_pool, 2, 1, 0, 1);
    pool_free(sync_.next_pool, m);
    CHECK_COUNTS(sync_.next_pool, 2, 0, 1, 1);
    CHECK(pool_destroy(sync_.next_pool) == NULL);
    CHECK_EQ(pool_total_allocated(), base);
    errno = 0;
    CHECK(pool_destroy(sync_.next_pool) == NULL);
    CHECK_ERRNO(EINVAL);
}

/* ---- destroy refused while another thread holds an object ---- */

static struct pool_head *held_pool;
static void *held_obj;

static void *holder(void *arg)
{
    (void)arg;
    held_obj = pool_alloc(held_pool);
    CHECK(held_obj != NULL);
    return NULL;
}

static void test_destroy_refused_for_other_thread(void)
{
    held_pool = pool_create("held_elsewhere", 64, 0);
    CHECK(held_pool != NULL);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, holder, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(pool_destroy(held_pool) == held_pool);
    CHECK_COUNTS(held_pool, 1, 1, 0, 0);
    CHECK_EQ(STATS(held_pool).users, 1);
    pool_free(held_pool, held_obj); /* freed by another thread than its allocator */
    CHECK_COUNTS(held_pool, 1, 0, 1, 0);
    CHECK(pool_destroy(held_pool) == NULL);
}

/* ---- destroyed heads are recycled, and many create/destroy cycles ---- */

static void test_cycles(void)
{
    unsigned long long base = pool_total_allocated();
    int bad = 0;
    for (int i = 0; i < 500; i++) {
        char name[32];
        snprintf(name, sizeof name, "cycle_%d", i);
        struct pool_head *p = pool_create(name, 16 + (size_t)(i % 7) * 16, (i & 1) ? POOL_F_SHARED : 0);
        if (!p) {
            bad++;
            continue;
        }
        struct pool_stats s;
        if (pool_get_stats(p, &s) != 0 || strcmp(s.name, name) != 0 || s.users != 1 ||
            s.allocated != 0)
            bad++;
        void *o = pool_alloc(p);
        void *o2 = pool_alloc(p);
        pool_free(p, o);
        if (i % 3 == 0)
            pool_evict_local_cache();
        pool_free(p, o2);
        if (pool_destroy(p) != NULL)
            bad++;
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(pool_total_allocated(), base);
}

/* ---- creates and destroys racing in several threads ---- */

enum { M_THREADS = 4, M_ROUNDS = 50 };
static pthread_barrier_t merge_barrier;
static struct pool_head *merge_shared[M_THREADS], *merge_private[M_THREADS];
static unsigned long m_bad;

static void *merger(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int round = 0; round < M_ROUNDS; round++) {
        char name[32];
        size_t size = 1000 + (size_t)(round % 5) * 16;
        pthread_barrier_wait(&merge_barrier);
        snprintf(name, sizeof name, "merge_r%d_t%d", round, id);
        merge_shared[id] = pool_create(name, size, POOL_F_SHARED);
        merge_private[id] = pool_create(name, size, 0);
        void *o = pool_alloc(merge_shared[id]);
        if (!o)
            __atomic_fetch_add(&m_bad, 1, __ATOMIC_RELAXED);
        pool_free(merge_shared[id], o);
        pthread_barrier_wait(&merge_barrier); /* main checks */
        pthread_barrier_wait(&merge_barrier);
        if (pool_destroy(merge_shared[id]) != NULL || pool_destroy(merge_private[id]) != NULL)
            __atomic_fetch_add(&m_bad, 1, __ATOMIC_RELAXED);
        pthread_barrier_wait(&merge_barrier); /* main checks */
    }
    return NULL;
}

static void test_concurrent_merge(void)
{
    CHECK(pthread_barrier_init(&merge_barrier, NULL, M_THREADS + 1) == 0);
    pthread_t th[M_THREADS];
    for (int t = 0; t < M_THREADS; t++)
        CHECK(pthread_create(&th[t], NULL, merger, (void *)(intptr_t)t) == 0);
    int bad_same = 0, bad_users = 0, bad_name = 0, bad_private = 0, bad_gone = 0;
    for (int round = 0; round < M_ROUNDS; round++) {
        pthread_barrier_wait(&merge_barrier);
        pthread_barrier_wait(&merge_barrier);
        struct pool_head *first = merge_shared[0];
        for (int t = 0; t < M_THREADS; t++) {
            bad_same += merge_shared[t] == NULL || merge_shared[t] != first;
            bad_private += merge_private[t] == NULL || merge_private[t] == first;
            for (int u = 0; u < t; u++)
                bad_private += merge_private[t] == merge_private[u];
        }
        struct pool_stats s;
        if (first && pool_get_stats(first, &s) == 0) {
            bad_users += s.users != M_THREADS;
            char prefix[32];
            snprintf(prefix, sizeof prefix, "merge_r%d_t", round);
            bad_name += strncmp(s.name, prefix, strlen(prefix)) != 0;
        } else {
            bad_users++;
        }
        pthread_barrier_wait(&merge_barrier);
        pthread_barrier_wait(&merge_barrier);
        /* all destroyed, and nothing created since */
        for (int t = 0; t < M_THREADS; t++)
            bad_gone += pool_get_stats(merge_private[t], &s) != -1;
        bad_gone += pool_get_stats(first, &s) != -1;
    }
    for (int t = 0; t < M_THREADS; t++)
        CHECK(pthread_join(th[t], NULL) == 0);
    pthread_barrier_destroy(&merge_barrier);
    CHECK_EQ(bad_same, 0);
    CHECK_EQ(bad_private, 0);
    CHECK_EQ(bad_users, 0);
    CHECK_EQ(bad_name, 0);
    CHECK_EQ(bad_gone, 0);
    CHECK_EQ(m_bad, 0);
}

/* ---- destroy racing with live threads that keep using other pools ---- */

enum { R_THREADS = 4, R_ROUNDS = 40, R_EPH = 20, R_KEEP_OPS = 400, R_HOLD = 16 };
static struct pool_head *keep_pool, *eph_pool;
static pthread_barrier_t round_barrier;
static unsigned long r_bad;

static void *racer(void *arg)
{
    uint64_t rng = 0x9E3779B97F4A7C15ull * ((uint64_t)(intptr_t)arg + 7);
    for (int round = 0; round < R_ROUNDS; round++) {
        pthread_barrier_wait(&round_barrier); /* main created eph_pool */
        void *e[R_EPH];
        for (int i = 0; i < R_EPH; i++) {
            e[i] = pool_alloc(eph_pool);
            if (!e[i]) {
                __atomic_fetch_add(&r_bad, 1, __ATOMIC_RELAXED);
                continue;
            }
            memset(e[i], 0x5e, 128);
        }
        for (int i = 0; i < R_EPH; i++)
            if (e[i])
                pool_free(eph_pool, e[i]);
        pthread_barrier_wait(&round_barrier); /* main reads eph_pool's counters */
        pthread_barrier_wait(&round_barrier); /* main destroys eph_pool now */

        /* meanwhile: churn another pool, overflowing the (small) thread
         * cache so that its LRU, which still lists eph objects, is walked */
        void *held[R_HOLD];
        int n = 0;
        for (int op = 0; op < R_KEEP_OPS; op++) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if (n < R_HOLD && (rng % 3 != 0 || n == 0)) {
                unsigned char *o = pool_alloc(keep_pool);
                if (!o) {
                    __atomic_fetch_add(&r_bad, 1, __ATOMIC_RELAXED);
                    continue;
                }
                memset(o, (int)(rng & 0xff), 256);
                o[0] = 0xC3;
                held[n++] = o;
            } else {
                int k = (int)(rng % (uint64_t)n);
                unsigned char *o = held[k];
                if (o[0] != 0xC3)
                    __atomic_fetch_add(&r_bad, 1, __ATOMIC_RELAXED);
                o[0] = 0;
                pool_free(keep_pool, o);
                held[k] = held[--n];
            }
            if (rng % 97 == 0)
                pool_evict_local_cache();
        }
        while (n > 0)
            pool_free(keep_pool, held[--n]);
        pthread_barrier_wait(&round_barrier); /* round over */
    }
    return NULL;
}

static void test_destroy_races_live_threads(void)
{
    size_t old_budget = pool_get_cache_size();
    CHECK_EQ(pool_set_cache_size(16 * 1024), 0); /* 64 objects of 256 bytes */
    unsigned long long base = pool_total_allocated();
    keep_pool = pool_create("keep", 256, 0);
    CHECK(keep_pool != NULL);
    CHECK(pthread_barrier_init(&round_barrier, NULL, R_THREADS + 1) == 0);
    pthread_t th[R_THREADS];
    for (int t = 0; t < R_THREADS; t++)
        CHECK(pthread_create(&th[t], NULL, racer, (void *)(intptr_t)t) == 0);

    int bad_alloc = 0, bad_destroy = 0, bad_total = 0, bad_dead = 0;
    for (int round = 0; round < R_ROUNDS; round++) {
        eph_pool = pool_create("ephemeral", 128, 0);
        CHECK(eph_pool != NULL);
        pthread_barrier_wait(&round_barrier);
        pthread_barrier_wait(&round_barrier);
        /* every thread is between two barriers: nothing is in flight. Each
         * allocated from malloc (no stale object of an earlier round's pool,
         * which may have had the same head, came out of its cache) */
        struct pool_stats s = STATS(eph_pool);
        if (s.allocated != R_THREADS * R_EPH || s.used != 0 ||
            s.cached + s.shared != R_THREADS * R_EPH) {
            bad_alloc++;
            fprintf(stderr,
                    "  round %d: ephemeral allocated %lu used %lu cached %lu shared %lu "
                    "(expected %d, 0, and cached + shared = %d)\n",
                    round, s.allocated, s.used, s.cached, s.shared, R_THREADS * R_EPH,
                    R_THREADS * R_EPH);
        }
        pthread_barrier_wait(&round_barrier);
        /* destroy while the threads churn keep_pool */
        if (pool_destroy(eph_pool) != NULL)
            bad_destroy++;
        struct pool_stats dead;
        if (pool_get_stats(eph_pool, &dead) != -1 || errno != EINVAL)
            bad_dead++;
        pthread_barrier_wait(&round_barrier);
        s = STATS(keep_pool);
        if (pool_total_allocated() - base != (unsigned long long)s.allocated * 256) {
            bad_total++;
            fprintf(stderr, "  round %d: %llu bytes allocated, keep holds %lu objects\n", round,
                    pool_total_allocated() - base, s.allocated);
        }
    }
    for (int t = 0; t < R_THREADS; t++)
        CHECK(pthread_join(th[t], NULL) == 0);
    pthread_barrier_destroy(&round_barrier);
    CHECK_EQ(bad_alloc, 0);
    CHECK_EQ(bad_destroy, 0);
    CHECK_EQ(bad_dead, 0);
    CHECK_EQ(bad_total, 0);
    CHECK_EQ(r_bad, 0);

    struct pool_stats s = STATS(keep_pool);
    CHECK_EQ(s.used, 0);
    CHECK_EQ(s.cached, 0); /* every racer exited */
    CHECK_EQ(s.allocated, s.shared);
    CHECK(pool_destroy(keep_pool) == NULL);
    CHECK_EQ(pool_total_allocated(), base);
    CHECK_EQ(pool_set_cache_size(old_budget), 0);
}

int main(void)
{
    test_merge();
    test_destroy_reclaims_live_thread_cache();
    test_destroy_refused_for_other_thread();
    test_cycles();
    test_concurrent_merge();
    test_destroy_races_live_threads();
    return check_done();
}
