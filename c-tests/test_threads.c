/*
 * test_threads: threads exiting with warm caches, cross-thread frees
 * (producer/consumer through a queue), eviction to the shared cache when a
 * thread's budget is exceeded, oldest-first (LRU, across pools) eviction,
 * the max(size, 32) accounting, the large-object bypass with a small budget,
 * and a multi-thread stress of alloc/free/flush/gc/evict that checks every
 * object's pattern and that no object is ever handed out twice.
 */
#include <pools.h>
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int is_aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* ------------------------------------------------------------------ */
/* 1. threads that exit with warm caches                               */

enum { W_THREADS = 4, W_OWN = 50, W_FOREIGN = 10 };

static struct pool_head *warm_pool;
static pthread_barrier_t warm_barrier;
static void *warm_foreign[W_THREADS][W_FOREIGN];

static void *warm_thread(void *arg)
{
    int id = (int)(intptr_t)arg;
    void *own[W_OWN];
    for (int i = 0; i < W_OWN; i++) {
        own[i] = pool_alloc(warm_pool);
        CHECK(own[i] != NULL);
        memset(own[i], id, 128);
    }
    /* nobody frees before everybody has allocated: all came from malloc */
    pthread_barrier_wait(&warm_barrier);
    for (int i = 0; i < W_OWN; i++)
        pool_free(warm_pool, own[i]);
    for (int i = 0; i < W_FOREIGN; i++)
        pool_free(warm_pool, warm_foreign[id][i]); /* allocated by main */
    pthread_barrier_wait(&warm_barrier);
    /* main checks the counters while every thread is alive and warm */
    pthread_barrier_wait(&warm_barrier);
    return NULL;
}

static void test_exit_with_warm_caches(void)
{
    warm_pool = pool_create("warm", 128, 0);
    CHECK(warm_pool != NULL);
    for (int t = 0; t < W_THREADS; t++)
        for (int i = 0; i < W_FOREIGN; i++)
            warm_foreign[t][i] = pool_alloc(warm_pool);
    const unsigned long total = W_THREADS * (W_OWN + W_FOREIGN);

    CHECK(pthread_barrier_init(&warm_barrier, NULL, W_THREADS + 1) == 0);
    pthread_t th[W_THREADS];
    for (int t = 0; t < W_THREADS; t++)
        CHECK(pthread_create(&th[t], NULL, warm_thread, (void *)(intptr_t)t) == 0);
    pthread_barrier_wait(&warm_barrier); /* all allocated */
    pthread_barrier_wait(&warm_barrier); /* all freed */
    CHECK_COUNTS(warm_pool, total, 0, total, 0);
    pthread_barrier_wait(&warm_barrier); /* let them exit */
    for (int t = 0; t < W_THREADS; t++)
        CHECK(pthread_join(th[t], NULL) == 0);
    pthread_barrier_destroy(&warm_barrier);

    /* every exited thread gave its cache to the shared cache */
    CHECK_COUNTS(warm_pool, total, 0, 0, total);

    /* and main gets those objects back without malloc */
    void *o = pool_alloc(warm_pool);
    CHECK(o != NULL);
    struct pool_stats s = STATS(warm_pool);
    CHECK_EQ(s.allocated, total);
    CHECK_EQ(s.used, 1);
    pool_free(warm_pool, o);
    pool_evict_local_cache();
    pool_flush(warm_pool);
    CHECK_COUNTS(warm_pool, 0, 0, 0, 0);
    CHECK(pool_destroy(warm_pool) == NULL);
}

/* ------------------------------------------------------------------ */
/* 2. producer / consumer: objects freed by another thread             */

enum { PC_COUNT = 20000, PC_QCAP = 64, PC_SIZE = 256 };

static struct {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    void *slots[PC_QCAP];
    unsigned head, len;
} pcq = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0, 0};

static struct pool_head *pc_pool;
static unsigned long pc_bad;

static void pcq_push(void *p)
{
    pthread_mutex_lock(&pcq.lock);
    while (pcq.len == PC_QCAP)
        pthread_cond_wait(&pcq.not_full, &pcq.lock);
    pcq.slots[(pcq.head + pcq.len) % PC_QCAP] = p;
    pcq.len++;
    pthread_cond_signal(&pcq.not_empty);
    pthread_mutex_unlock(&pcq.lock);
}

static void *pcq_pop(void)
{
    pthread_mutex_lock(&pcq.lock);
    while (pcq.len == 0)
        pthread_cond_wait(&pcq.not_empty, &pcq.lock);
    void *p = pcq.slots[pcq.head];
    pcq.head = (pcq.head + 1) % PC_QCAP;
    pcq.len--;
    pthread_cond_signal(&pcq.not_full);
    pthread_mutex_unlock(&pcq.lock);
    return p;
}

static void *producer(void *arg)
{
    (void)arg;
    for (uint32_t i = 0; i < PC_COUNT; i++) {
        uint32_t *o = pool_alloc(pc_pool);
        if (!o || !is_aligned16(o)) {
            __atomic_fetch_add(&pc_bad, 1, __ATOMIC_RELAXED);
            continue;
        }
        for (size_t k = 0; k < PC_SIZE / 4; k++)
            o[k] = i * 2654435761u + (uint32_t)k;
        pcq_push(o);
    }
    pcq_push(NULL);
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    uint32_t expect = 0;
    for (;;) {
        uint32_t *o = pcq_pop();
        if (!o)
            break;
        uint32_t seq = o[0]; /* o[0] = seq * K */
        uint32_t want_seq = expect * 2654435761u;
        int ok = seq == want_seq;
        for (size_t k = 1; ok && k < PC_SIZE / 4; k++)
            ok = o[k] == want_seq + (uint32_t)k;
        if (!ok)
            __atomic_fetch_add(&pc_bad, 1, __ATOMIC_RELAXED);
        memset(o, 0xEE, PC_SIZE);
        pool_free(pc_pool, o);
        expect++;
    }
    CHECK_EQ(expect, PC_COUNT);
    return NULL;
}

static void test_producer_consumer(void)
{
    pc_pool = pool_create("prodcons", PC_SIZE, 0);
    CHECK(pc_pool != NULL);
    pthread_t p, c;
    CHECK(pthread_create(&c, NULL, consumer, NULL) == 0);
    CHECK(pthread_create(&p, NULL, producer, NULL) == 0);
    CHECK(pthread_join(p, NULL) == 0);
    CHECK(pthread_join(c, NULL) == 0);
    CHECK_EQ(pc_bad, 0);

    struct pool_stats s = STATS(pc_pool);
    CHECK_EQ(s.used, 0);
    CHECK_EQ(s.cached, 0); /* both threads exited */
    CHECK_EQ(s.allocated, s.shared);
    CHECK_EQ(s.failed, 0);
    /* the consumer's overflow reached the producer through the shared cache */
    CHECK(s.allocated > 0);
    CHECK(s.allocated < PC_COUNT / 4);
    if (s.allocated >= PC_COUNT / 4)
        fprintf(stderr, "  producer/consumer: %lu objects allocated for %d handed over\n",
                s.allocated, PC_COUNT);

    pool_flush(pc_pool);
    CHECK_COUNTS(pc_pool, 0, 0, 0, 0);
    CHECK(pool_destroy(pc_pool) == NULL);
}

/* ------------------------------------------------------------------ */
/* 3. eviction when the budget is exceeded, oldest first               */

enum { BUDGET = 4096 };          /* 64 objects of 64 bytes; 7/8 is 3584 */
static struct pool_head *ev_p, *ev_q, *ev_r, *ev_at, *ev_over;

/* After an overflow the thread is at or below 7/8 of the budget, reached by
 * moving clusters of up to 8 objects: so at least `min_evicted` objects moved
 * (the fewest that reach 7/8) and fewer than min_evicted + 8 (the loop stops
 * as soon as 7/8 is reached). */
static void check_evicted(unsigned long evicted, unsigned long remaining, unsigned long unit,
                          unsigned long min_evicted, const char *what)
{
    int ok = evicted >= min_evicted && evicted <= min_evicted + 7 &&
             remaining * unit <= BUDGET * 7 / 8;
    if (!CHECK(ok))
        fprintf(stderr, "  %s: evicted %lu (expected %lu..%lu), %lu left cached\n", what,
                evicted, min_evicted, min_evicted + 7, remaining);
}

static void *evict_thread(void *arg)
{
    (void)arg;
    struct pool_stats s;

    /* bypass: larger than BUDGET/8 = 512 bytes goes straight to shared */
    void *at = pool_alloc(ev_at);     /* 512 bytes: cached */
    void *over = pool_alloc(ev_over); /* 528 bytes: bypasses */
    CHECK(at && over);
    pool_free(ev_at, at);
    pool_free(ev_over, over);
    CHECK_COUNTS(ev_at, 1, 0, 1, 0);
    CHECK_COUNTS(ev_over, 1, 0, 0, 1);
    pool_evict_local_cache();
    CHECK_COUNTS(ev_at, 1, 0, 0, 1);

    /* -- one pool: A0..A79, free A0..A64 in order -- */
    enum { NA = 80, FREED = 65 };
    void *a[NA];
    for (int i = 0; i < NA; i++) {
        a[i] = pool_alloc(ev_p);
        CHECK(a[i] != NULL);
    }
    for (int i = 0; i < 64; i++)
        pool_free(ev_p, a[i]);
    CHECK_COUNTS(ev_p, NA, NA - 64, 64, 0); /* exactly at the budget: no eviction */
    pool_free(ev_p, a[64]);                  /* over it */
    s = STATS(ev_p);
    CHECK_EQ(s.allocated, NA);
    CHECK_EQ(s.used, NA - FREED);
    CHECK_EQ(s.cached + s.shared, FREED);
    check_evicted(s.shared, s.cached, 64, 9, "one pool");
    unsigned long sh = s.shared;

    /* the cached ones come back newest first: A64, A63, ..., A[sh] */
    int order_ok = 1;
    for (long i = FREED - 1; i >= (long)sh; i--) {
        void *o = pool_alloc(ev_p);
        if (o != a[i]) {
            if (order_ok)
                fprintf(stderr, "  LRU order: expected A%ld, got %p\n", i, o);
            order_ok = 0;
        }
    }
    CHECK(order_ok);
    s = STATS(ev_p);
    CHECK_EQ(s.cached, 0);
    CHECK_EQ(s.shared, sh);
    /* the evicted ones (the oldest: A0..A[sh-1]) are in the shared cache */
    int from_shared_ok = 1;
    void *back[16];
    for (unsigned long k = 0; k < sh && k < 16; k++) {
        back[k] = pool_alloc(ev_p);
        int found = 0;
        for (unsigned long i = 0; i < sh; i++)
            found |= back[k] == a[i];
        for (unsigned long j = 0; j < k; j++)
            found &= back[k] != back[j];
        if (!found) {
            fprintf(stderr, "  evicted object %lu: got %p, not one of the oldest\n", k, back[k]);
            from_shared_ok = 0;
        }
    }
    CHECK(from_shared_ok);
    CHECK_COUNTS(ev_p, NA, NA, 0, 0);

    /* give everything back and start the next part with an empty cache */
    for (int i = 0; i < NA; i++)
        pool_free(ev_p, a[i]);
    pool_evict_local_cache();
    pool_flush(ev_p);
    CHECK_COUNTS(ev_p, 0, 0, 0, 0);

    /* -- two pools: Q0..Q7 freed first, then P0..P56: the LRU spans pools -- */
    void *q[8], *p[57];
    for (int i = 0; i < 8; i++)
        q[i] = pool_alloc(ev_q);
    for (int i = 0; i < 57; i++)
        p[i] = pool_alloc(ev_p);
    for (int i = 0; i < 8; i++)
        pool_free(ev_q, q[i]);
    for (int i = 0; i < 56; i++)
        pool_free(ev_p, p[i]);
    CHECK_COUNTS(ev_q, 8, 0, 8, 0);
    CHECK_COUNTS(ev_p, 57, 1, 56, 0);
    pool_free(ev_p, p[56]); /* 65 objects: the 8 Q, then some of the oldest P go */
    CHECK_COUNTS(ev_q, 8, 0, 0, 8);
    s = STATS(ev_p);
    CHECK_EQ(s.used, 0);
    CHECK_EQ(s.cached + s.shared, 57);
    check_evicted(8 + s.shared, s.cached, 64, 9, "two pools");
    unsigned long psh = s.shared;
    order_ok = 1;
    for (long i = 56; i >= (long)psh; i--)
        if (pool_alloc(ev_p) != p[i])
            order_ok = 0;
    CHECK(order_ok);
    for (long i = 56; i >= (long)psh; i--)
        pool_free(ev_p, p[i]);
    pool_evict_local_cache();
    pool_flush(ev_p);
    pool_flush(ev_q);
    CHECK_COUNTS(ev_p, 0, 0, 0, 0);
    CHECK_COUNTS(ev_q, 0, 0, 0, 0);

    /* -- 16-byte objects count as 32 bytes: 128 fill the budget -- */
    enum { NR = 129 };
    void *r[NR];
    for (int i = 0; i < NR; i++)
        r[i] = pool_alloc(ev_r);
    for (int i = 0; i < NR - 1; i++)
        pool_free(ev_r, r[i]);
    CHECK_COUNTS(ev_r, NR, 1, NR - 1, 0);
    pool_free(ev_r, r[NR - 1]);
    s = STATS(ev_r);
    CHECK_EQ(s.cached + s.shared, NR);
    check_evicted(s.shared, s.cached, 32, 17, "16-byte objects");
    pool_evict_local_cache();
    CHECK_COUNTS(ev_r, NR, 0, 0, NR);
    return NULL;
}

static void test_eviction(void)
{
    size_t old = pool_get_cache_size();
    CHECK_EQ(pool_set_cache_size(BUDGET), 0);
    CHECK_EQ(pool_get_cache_size(), BUDGET);
    ev_p = pool_create("evict_p", 64, 0);
    ev_q = pool_create("evict_q", 64, 0);
    ev_r = pool_create("evict_r16", 16, 0);
    ev_at = pool_create("evict_512", 512, 0);
    ev_over = pool_create("evict_528", 528, 0);
    CHECK(ev_p && ev_q && ev_r && ev_at && ev_over);

    pthread_t t; /* a fresh thread: its cache starts empty */
    CHECK(pthread_create(&t, NULL, evict_thread, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);

    CHECK(pool_destroy(ev_p) == NULL);
    CHECK(pool_destroy(ev_q) == NULL);
    CHECK(pool_destroy(ev_r) == NULL);
    CHECK(pool_destroy(ev_at) == NULL);
    CHECK(pool_destroy(ev_over) == NULL);
    CHECK_EQ(pool_set_cache_size(old), 0);
}

/* with the default budget: 3000 objects of 256 bytes overflow 512 KiB */
static struct pool_head *dflt_pool;

static void *default_budget_thread(void *arg)
{
    (void)arg;
    enum { N = 3000 };
    static void *objs[N];
    for (int i = 0; i < N; i++)
        objs[i] = pool_alloc(dflt_pool);
    for (int i = 0; i < N; i++)
        pool_free(dflt_pool, objs[i]);
    struct pool_stats s = STATS(dflt_pool);
    CHECK_EQ(s.allocated, N);
    CHECK_EQ(s.used, 0);
    CHECK_EQ(s.cached + s.shared, N);
    CHECK(s.cached * 256 <= 512 * 1024);
    CHECK(s.cached * 256 >= 512 * 1024 * 7 / 8 - 8 * 256);
    return NULL;
}

static void test_default_budget(void)
{
    CHECK_EQ(pool_set_cache_size(512 * 1024), 0);
    dflt_pool = pool_create("default_budget", 256, 0);
    CHECK(dflt_pool != NULL);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, default_budget_thread, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_COUNTS(dflt_pool, 3000, 0, 0, 3000);
    CHECK(pool_destroy(dflt_pool) == NULL);
}

/* ------------------------------------------------------------------ */
/* 4. stress                                                           */

enum { S_THREADS = 4, S_OPS = 20000, S_HOLD = 32, S_MAILBOX = 128, S_NPOOLS = 4 };
static const size_t s_sizes[S_NPOOLS] = {48, 600, 3000, 70000};
static struct pool_head *s_pools[S_NPOOLS];

struct hdr {
    uint64_t token;
    uint32_t pool;
    uint32_t size;
};

struct held {
    struct hdr *obj;
    int pool;
};

static struct {
    pthread_mutex_t lock;
    struct held slots[S_MAILBOX];
    int len;
} mailbox = {PTHREAD_MUTEX_INITIALIZER, {{0, 0}}, 0};

/* live-object set: detects an object handed out while still held */
enum { LIVE_CAP = 4096 };
static struct {
    pthread_mutex_t lock;
    void *slot[LIVE_CAP];
} live = {PTHREAD_MUTEX_INITIALIZER, {0}};
static unsigned long s_double, s_corrupt, s_null, s_misaligned, s_notzero, s_unknown;
static uint64_t s_next_token = 1;
static unsigned long s_badstats;
static int s_devnull = -1;

static unsigned live_hash(void *p)
{
    return (unsigned)(((uintptr_t)p >> 4) * 2654435761u) % LIVE_CAP;
}

static int live_insert(void *p)
{
    pthread_mutex_lock(&live.lock);
    unsigned h = live_hash(p);
    int dup = 0;
    while (live.slot[h]) {
        if (live.slot[h] == p) {
            dup = 1;
            break;
        }
        h = (h + 1) % LIVE_CAP;
    }
    if (!dup)
        live.slot[h] = p;
    pthread_mutex_unlock(&live.lock);
    return !dup;
}

static int live_remove(void *p)
{
    pthread_mutex_lock(&live.lock);
    unsigned h = live_hash(p);
    int found = 0;
    while (live.slot[h]) {
        if (live.slot[h] == p) {
            found = 1;
            break;
        }
        h = (h + 1) % LIVE_CAP;
    }
    if (found) {
        /* delete with backward shift to keep probe chains intact */
        unsigned hole = h, j = h;
        live.slot[hole] = NULL;
        for (;;) {
            j = (j + 1) % LIVE_CAP;
            if (!live.slot[j])
                break;
            unsigned home = live_hash(live.slot[j]);
            int between = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
            if (!between) {
                live.slot[hole] = live.slot[j];
                live.slot[j] = NULL;
                hole = j;
            }
        }
    }
    pthread_mutex_unlock(&live.lock);
    return found;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static unsigned char fill_byte(uint64_t token, size_t i)
{
    return (unsigned char)(token * 131 + i * 7);
}

static void fill(struct hdr *h, int pool, uint64_t token)
{
    size_t size = s_sizes[pool];
    h->token = token;
    h->pool = (uint32_t)pool;
    h->size = (uint32_t)size;
    unsigned char *b = (unsigned char *)h;
    for (size_t i = sizeof *h; i < size; i++)
        b[i] = fill_byte(token, i);
}

static int verify(const struct hdr *h, int pool)
{
    size_t size = s_sizes[pool];
    if (h->pool != (uint32_t)pool || h->size != size)
        return 0;
    const unsigned char *b = (const unsigned char *)h;
    for (size_t i = sizeof *h; i < size; i++)
        if (b[i] != fill_byte(h->token, i))
            return 0;
    return 1;
}

static void stress_free(struct held it)
{
    if (!verify(it.obj, it.pool))
        __atomic_fetch_add(&s_corrupt, 1, __ATOMIC_RELAXED);
    if (!live_remove(it.obj))
        __atomic_fetch_add(&s_unknown, 1, __ATOMIC_RELAXED);
    memset(it.obj, 0xDD, sizeof(struct hdr)); /* poison the header */
    pool_free(s_pools[it.pool], it.obj);
}

static int pick_pool(uint64_t r)
{
    unsigned x = (unsigned)(r % 1000);
    if (x < 400)
        return 0;
    if (x < 700)
        return 1;
    if (x < 995)
        return 2;
    return 3;
}

static void *stress_thread(void *arg)
{
    uint64_t rng = 0x9E3779B97F4A7C15ull * ((uint64_t)(intptr_t)arg + 1);
    struct held held[S_HOLD];
    int nheld = 0;

    for (int op = 0; op < S_OPS; op++) {
        uint64_t r = xorshift(&rng);
        unsigned what = (unsigned)(r % 1000);
        r >>= 10;
        if (what < 450) {
            if (nheld == S_HOLD)
                continue;
            int pool = pick_pool(r);
            int zero = (r >> 12) % 8 == 0;
            struct hdr *h = zero ? pool_zalloc(s_pools[pool]) : pool_alloc(s_pools[pool]);
            if (!h) {
                __atomic_fetch_add(&s_null, 1, __ATOMIC_RELAXED);
                continue;
            }
            if (!is_aligned16(h))
                __atomic_fetch_add(&s_misaligned, 1, __ATOMIC_RELAXED);
            if (zero) {
                const unsigned char *b = (const unsigned char *)h;
                size_t n = s_sizes[pool] < 4096 ? s_sizes[pool] : 4096;
                for (size_t i = 0; i < n; i++)
                    if (b[i]) {
                        __atomic_fetch_add(&s_notzero, 1, __ATOMIC_RELAXED);
                        break;
                    }
            }
            if (!live_insert(h))
                __atomic_fetch_add(&s_double, 1, __ATOMIC_RELAXED);
            fill(h, pool, __atomic_fetch_add(&s_next_token, 1, __ATOMIC_RELAXED));
            held[nheld].obj = h;
            held[nheld].pool = pool;
            nheld++;
        } else if (what < 850) {
            if (nheld == 0)
                continue;
            int k = (int)(r % (uint64_t)nheld);
            stress_free(held[k]);
            held[k] = held[--nheld];
        } else if (what < 920) {
            if (nheld == 0)
                continue;
            int k = (int)(r % (uint64_t)nheld);
            pthread_mutex_lock(&mailbox.lock);
            if (mailbox.len < S_MAILBOX) {
                mailbox.slots[mailbox.len++] = held[k];
                held[k] = held[--nheld];
            }
            pthread_mutex_unlock(&mailbox.lock);
        } else if (what < 980) {
            struct held it = {NULL, 0};
            pthread_mutex_lock(&mailbox.lock);
            if (mailbox.len > 0) {
                int k = (int)(r % (uint64_t)mailbox.len);
                it = mailbox.slots[k];
                mailbox.slots[k] = mailbox.slots[--mailbox.len];
            }
            pthread_mutex_unlock(&mailbox.lock);
            if (it.obj)
                stress_free(it); /* usually allocated by another thread */
        } else if (what < 990) {
            pool_evict_local_cache();
        } else if (what < 994) {
            pool_flush(s_pools[r % S_NPOOLS]);
        } else if (what < 997) {
            pool_gc(NULL);
        } else if (what < 999) {
            /* counters read while others work: only what cannot move */
            struct pool_stats st;
            int k = (int)(r % S_NPOOLS);
            if (pool_get_stats(s_pools[k], &st) != 0 || st.size != ((s_sizes[k] + 15) & ~(size_t)15) ||
                st.users != 1 || st.failed != 0)
                __atomic_fetch_add(&s_badstats, 1, __ATOMIC_RELAXED);
            (void)pool_total_allocated();
            (void)pool_total_used();
        } else {
            pool_dump(s_devnull);
        }
    }
    while (nheld > 0)
        stress_free(held[--nheld]);
    return NULL;
}

static void test_stress(void)
{
    static const char *names[S_NPOOLS] = {"st_small", "st_mid", "st_big", "st_huge"};
    unsigned long long used0 = pool_total_used();
    for (int i = 0; i < S_NPOOLS; i++) {
        s_pools[i] = pool_create(names[i], s_sizes[i], 0);
        CHECK(s_pools[i] != NULL);
    }
    CHECK_EQ(pool_set_minavail(s_pools[0], 10), 0);
    s_devnull = open("/dev/null", O_WRONLY);
    CHECK(s_devnull >= 0);

    pthread_t th[S_THREADS];
    for (int t = 0; t < S_THREADS; t++)
        CHECK(pthread_create(&th[t], NULL, stress_thread, (void *)(intptr_t)t) == 0);
    for (int t = 0; t < S_THREADS; t++)
        CHECK(pthread_join(th[t], NULL) == 0);
    /* what the threads left in the mailbox, freed by main */
    while (mailbox.len > 0)
        stress_free(mailbox.slots[--mailbox.len]);

    CHECK_EQ(s_double, 0);
    CHECK_EQ(s_corrupt, 0);
    CHECK_EQ(s_unknown, 0);
    CHECK_EQ(s_null, 0);
    CHECK_EQ(s_misaligned, 0);
    CHECK_EQ(s_notzero, 0);
    CHECK_EQ(s_badstats, 0);
    close(s_devnull);
    CHECK_EQ(pool_total_used(), used0);

    for (int i = 0; i < S_NPOOLS; i++) {
        struct pool_stats s = STATS(s_pools[i]);
        CHECK_EQ(s.used, 0);
        CHECK_EQ(s.failed, 0);
        /* main's cache may hold what it freed from the mailbox */
        CHECK_EQ(s.allocated, s.cached + s.shared);
        pool_evict_local_cache();
        s = STATS(s_pools[i]);
        CHECK_EQ(s.cached, 0);
        CHECK_EQ(s.allocated, s.shared);
        pool_flush(s_pools[i]);
        CHECK_COUNTS(s_pools[i], 0, 0, 0, 0);
        CHECK(pool_destroy(s_pools[i]) == NULL);
    }
}

int main(void)
{
    test_exit_with_warm_caches();
    test_producer_consumer();
    test_eviction();
    test_default_budget();
    test_stress();
    return check_done();
}
