/*
 * demo: simulated proxy traffic on libpools.
 *
 * Four worker threads each accept "requests": a task (~100 B) that carries a
 * session (~600 B), usually a 16 KiB buffer and, rarely, a 2 MiB buffer.
 * Each payload is filled and checksummed, then the task is handed to the
 * next worker through a small mutex-protected queue; the receiving worker
 * verifies every checksum and frees the objects there, so most objects are
 * freed by another thread than the one that allocated them. The main thread
 * calls pool_gc(NULL) every 100 ms and prints progress. At the end: a pool
 * dump and a one-line summary. Exits 0 when no checksum failed and nothing
 * is left in use.
 */
#include <pools.h>

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WORKERS 4
#define QUEUE_CAP 128
#define RUN_MS 1500
#define SESSION_SIZE 600
#define BUFFER_SIZE 16384
#define TASK_SIZE 100
#define LARGE_SIZE (2u << 20)

struct session {
    uint64_t id;
    uint64_t sum; /* checksum of payload */
    unsigned char payload[SESSION_SIZE - 16];
};

struct task {
    uint64_t id;
    uint32_t origin; /* worker that allocated it */
    uint32_t buf_len;
    struct session *sess;
    unsigned char *buf;   /* from pool "buffer" or "large", or NULL */
    struct pool_head *buf_pool;
    uint64_t buf_sum;
};

_Static_assert(sizeof(struct session) == SESSION_SIZE, "session size");
_Static_assert(sizeof(struct task) <= TASK_SIZE, "task size");

DECLARE_STATIC_POOL(pool_session, "session", SESSION_SIZE);
DECLARE_STATIC_POOL(pool_buffer, "buffer", BUFFER_SIZE);
DECLARE_STATIC_POOL(pool_task, "task", TASK_SIZE);
DECLARE_STATIC_POOL(pool_large, "large", LARGE_SIZE);

struct queue {
    pthread_mutex_t lock;
    struct task *slot[QUEUE_CAP];
    unsigned head, len;
};

static struct queue inbox[WORKERS];
static int stopping;
static uint64_t progress_requests; /* requests accepted so far, for the progress lines */
static pthread_barrier_t drain_barrier;

static struct {
    uint64_t requests, handed_over, freed_locally, bytes_checked;
    uint64_t bad_sums, alloc_failures, large_used;
} totals;

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void fill(unsigned char *p, size_t n, uint64_t *rng)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = rnd(rng);
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++)
        p[i] = (unsigned char)rnd(rng);
}

/* The large buffer is only sampled: one byte per 4 KiB page. */
static uint64_t large_sum(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i += 4096) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int push(struct queue *q, struct task *t)
{
    int ok = 0;
    pthread_mutex_lock(&q->lock);
    if (q->len < QUEUE_CAP) {
        q->slot[(q->head + q->len) % QUEUE_CAP] = t;
        q->len++;
        ok = 1;
    }
    pthread_mutex_unlock(&q->lock);
    return ok;
}

static struct task *pop(struct queue *q)
{
    struct task *t = NULL;
    pthread_mutex_lock(&q->lock);
    if (q->len > 0) {
        t = q->slot[q->head];
        q->head = (q->head + 1) % QUEUE_CAP;
        q->len--;
    }
    pthread_mutex_unlock(&q->lock);
    return t;
}

struct worker_stats {
    uint64_t requests, handed_over, freed_locally, bytes_checked, bad_sums, alloc_failures,
        large_used;
};

/* Verifies and releases a task and everything it carries. */
static void finish(struct task *t, struct worker_stats *ws)
{
    struct session *s = t->sess;
    if (fnv1a(s->payload, sizeof s->payload) != s->sum || s->id != t->id)
        ws->bad_sums++;
    ws->bytes_checked += sizeof s->payload;
    if (t->buf) {
        uint64_t sum = t->buf_pool == pool_large ? large_sum(t->buf, LARGE_SIZE)
                                                 : fnv1a(t->buf, t->buf_len);
        if (sum != t->buf_sum)
            ws->bad_sums++;
        ws->bytes_checked += t->buf_len;
        pool_free(t->buf_pool, t->buf);
    }
    pool_free(pool_session, s);
    pool_free(pool_task, t);
}

/* Accepts one request: allocates and fills its objects. */
static struct task *accept_request(int id, uint64_t seq, uint64_t *rng, struct worker_stats *ws)
{
    struct task *t = pool_alloc(pool_task);
    struct session *s = pool_alloc(pool_session);
    if (!t || !s) {
        ws->alloc_failures++;
        if (t)
            pool_free(pool_task, t);
        if (s)
            pool_free(pool_session, s);
        return NULL;
    }
    t->id = ((uint64_t)id << 48) | seq;
    t->origin = (uint32_t)id;
    t->sess = s;
    t->buf = NULL;
    t->buf_pool = NULL;
    t->buf_len = 0;
    t->buf_sum = 0;
    s->id = t->id;
    fill(s->payload, sizeof s->payload, rng);
    s->sum = fnv1a(s->payload, sizeof s->payload);

    uint64_t r = rnd(rng) % 4000;
    if (r == 0) { /* rarely: a 2 MiB buffer */
        t->buf = pool_alloc(pool_large);
        if (t->buf) {
            t->buf_pool = pool_large;
            t->buf_len = LARGE_SIZE;
            for (size_t i = 0; i < LARGE_SIZE; i += 4096)
                t->buf[i] = (unsigned char)rnd(rng);
            t->buf_sum = large_sum(t->buf, LARGE_SIZE);
            ws->large_used++;
        } else {
            ws->alloc_failures++;
        }
    } else if (r < 3000) { /* usually: a 16 KiB buffer, partly filled */
        t->buf = pool_alloc(pool_buffer);
        if (t->buf) {
            t->buf_pool = pool_buffer;
            t->buf_len = (uint32_t)(256 + rnd(rng) % (BUFFER_SIZE - 256));
            fill(t->buf, t->buf_len, rng);
            t->buf_sum = fnv1a(t->buf, t->buf_len);
        } else {
            ws->alloc_failures++;
        }
    }
    return t;
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint64_t rng = 0x2545F4914F6CDD1Dull * (uint64_t)(id + 1);
    struct worker_stats ws = {0, 0, 0, 0, 0, 0, 0};
    uint64_t seq = 0;
    struct queue *next = &inbox[(id + 1) % WORKERS];

    while (!__atomic_load_n(&stopping, __ATOMIC_ACQUIRE)) {
        /* a small burst of new requests, handed to the next worker */
        uint64_t accepted = 0;
        for (int i = 0; i < 8; i++) {
            struct task *t = accept_request(id, seq++, &rng, &ws);
            if (!t)
                continue;
            ws.requests++;
            accepted++;
            int pushed = push(next, t);
            for (int tries = 0; !pushed && tries < 4; tries++) {
                /* queue full: serve our own inbox, let the next worker run */
                struct task *in;
                while ((in = pop(&inbox[id])) != NULL)
                    finish(in, &ws);
                sched_yield();
                pushed = push(next, t);
            }
            if (pushed) {
                ws.handed_over++;
            } else { /* the next worker is still busy: serve it here */
                finish(t, &ws);
                ws.freed_locally++;
            }
        }
        /* serve what the previous worker handed over */
        struct task *t;
        while ((t = pop(&inbox[id])) != NULL)
            finish(t, &ws);
        __atomic_fetch_add(&progress_requests, accepted, __ATOMIC_RELAXED);
    }

    /* nobody pushes once every worker has passed the barrier */
    pthread_barrier_wait(&drain_barrier);
    struct task *t;
    while ((t = pop(&inbox[id])) != NULL)
        finish(t, &ws);

    __atomic_fetch_add(&totals.requests, ws.requests, __ATOMIC_RELAXED);
    __atomic_fetch_add(&totals.handed_over, ws.handed_over, __ATOMIC_RELAXED);
    __atomic_fetch_add(&totals.freed_locally, ws.freed_locally, __ATOMIC_RELAXED);
    __atomic_fetch_add(&totals.bytes_checked, ws.bytes_checked, __ATOMIC_RELAXED);
    __atomic_fetch_add(&totals.bad_sums, ws.bad_sums, __ATOMIC_RELAXED);
    __atomic_fetch_add(&totals.alloc_failures, ws.alloc_failures, __ATOMIC_RELAXED);
    __atomic_fetch_add(&totals.large_used, ws.large_used, __ATOMIC_RELAXED);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned long sum_used(void)
{
    struct pool_head *pools[] = {pool_session, pool_buffer, pool_task, pool_large};
    unsigned long n = 0;
    for (size_t i = 0; i < sizeof pools / sizeof pools[0]; i++) {
        struct pool_stats s;
        if (pool_get_stats(pools[i], &s) == 0)
            n += s.used;
    }
    return n;
}

int main(void)
{
    for (int i = 0; i < WORKERS; i++) {
        pthread_mutex_init(&inbox[i].lock, NULL);
        inbox[i].head = inbox[i].len = 0;
    }
    pthread_barrier_init(&drain_barrier, NULL, WORKERS);
    pool_set_minavail(pool_buffer, 64);

    printf("demo: %d workers for %.1f s; pools session=%d B, buffer=%d B, task=%d B, "
           "large=%u B; per-thread cache %zu KiB\n",
           WORKERS, RUN_MS / 1000.0, SESSION_SIZE, BUFFER_SIZE, TASK_SIZE, LARGE_SIZE,
           pool_get_cache_size() / 1024);

    pthread_t th[WORKERS];
    for (int i = 0; i < WORKERS; i++)
        if (pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i) != 0) {
            perror("pthread_create");
            return 1;
        }

    double start = now_s(), next_report = start + 0.5;
    unsigned gcs = 0;
    for (;;) {
        struct timespec tick = {0, 100 * 1000 * 1000};
        nanosleep(&tick, NULL);
        pool_gc(NULL);
        gcs++;
        double t = now_s();
        if (t >= next_report) {
            printf("[%4.1fs] %" PRIu64 " requests done, %lu objects in use, pool memory "
                   "%llu KiB allocated / %llu KiB used, %u gc runs\n",
                   t - start, __atomic_load_n(&progress_requests, __ATOMIC_RELAXED),
                   sum_used(), pool_total_allocated() / 1024, pool_total_used() / 1024, gcs);
            fflush(stdout);
            next_report += 0.5;
        }
        if (t - start >= RUN_MS / 1000.0)
            break;
    }
    __atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(th[i], NULL);
    double elapsed = now_s() - start;

    unsigned long left = sum_used();
    printf("\n");
    fflush(stdout);
    pool_dump(1);
    printf("\n");

    pool_flush(pool_session);
    pool_flush(pool_buffer);
    pool_flush(pool_task);
    pool_flush(pool_large);

    int ok = totals.bad_sums == 0 && left == 0 && totals.requests > 0;
    printf("demo: %" PRIu64 " requests in %.2f s (%.0f/s) on %d threads, %" PRIu64
           " freed on another thread, %" PRIu64 " served locally, %" PRIu64
           " large buffers, %.1f MiB checksummed, %" PRIu64 " checksum errors, %" PRIu64
           " allocation failures, %lu objects left in use: %s\n",
           totals.requests, elapsed, (double)totals.requests / elapsed, WORKERS,
           totals.handed_over, totals.freed_locally, totals.large_used,
           (double)totals.bytes_checked / (1024.0 * 1024.0), totals.bad_sums,
           totals.alloc_failures, left, ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
