/* Threaded stress under the preload: blocks of every size class (and large
 * ones) are allocated on one thread, filled with a pattern and a checksum,
 * handed to another thread through a ring, verified there, grown or shrunk
 * with realloc (contents checked), then freed there. */
#include "preload.h"
#include <pthread.h>
#include <stdint.h>

enum { THREADS = 4, ROUNDS = 60000, RING = 256 };

struct ring {
    pthread_mutex_t lock;
    void *slot[RING];
    size_t size[RING];
    unsigned head, tail;
};

static struct ring rings[THREADS];

static uint32_t hash(const unsigned char *p, size_t n, uint32_t seed)
{
    uint32_t h = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/* Block layout: [size_t n][uint32 checksum of the rest][payload]. */
static void fill(unsigned char *p, size_t n, uint32_t seed)
{
    size_t hdr = sizeof(size_t) + sizeof(uint32_t);
    memcpy(p, &n, sizeof n);
    for (size_t i = hdr; i < n; i++)
        p[i] = (unsigned char)(seed + i * 7);
    uint32_t h = hash(p + hdr, n - hdr, (uint32_t)n);
    memcpy(p + sizeof(size_t), &h, sizeof h);
}

static void verify(const unsigned char *p, size_t n)
{
    size_t hdr = sizeof(size_t) + sizeof(uint32_t), stored;
    uint32_t h;
    memcpy(&stored, p, sizeof stored);
    memcpy(&h, p + sizeof(size_t), sizeof h);
    CHECK(stored == n);
    CHECK(h == hash(p + hdr, n - hdr, (uint32_t)n));
}

static size_t pick(uint64_t *rng)
{
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    uint64_t r = *rng;
    /* Mostly small, every class up to 32 KiB, sometimes large. */
    if (r % 64 == 0)
        return 32768 + (size_t)(r >> 8) % 200000;
    size_t shift = 4 + (size_t)(r >> 16) % 12; /* 16 B .. 32 KiB */
    size_t n = ((size_t)1 << shift) + (size_t)(r >> 32) % ((size_t)1 << shift);
    n = n > 32768 ? 32768 : n;
    return n < 16 ? 16 : n;
}

static int push(struct ring *r, void *p, size_t n)
{
    pthread_mutex_lock(&r->lock);
    int ok = r->head - r->tail < RING;
    if (ok) {
        r->slot[r->head % RING] = p;
        r->size[r->head % RING] = n;
        r->head++;
    }
    pthread_mutex_unlock(&r->lock);
    return ok;
}

static void *pop(struct ring *r, size_t *n)
{
    void *p = NULL;
    pthread_mutex_lock(&r->lock);
    if (r->head != r->tail) {
        p = r->slot[r->tail % RING];
        *n = r->size[r->tail % RING];
        r->tail++;
    }
    pthread_mutex_unlock(&r->lock);
    return p;
}

static void consume(void *p, size_t n, uint64_t *rng)
{
    verify(p, n);
    /* Grow or shrink, and check the contents moved along. */
    size_t m = pick(rng);
    if (m < 16)
        m = 16;
    unsigned char *q = realloc(p, m);
    CHECK(q != NULL && malloc_usable_size(q) >= m);
    if (m >= n)
        verify(q, n);
    else
        CHECK(memcmp(q, &n, sizeof n) == 0);
    fill(q, m, (uint32_t)m);
    verify(q, m);
    free(q);
}

static void *worker(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (id + 1);
    struct ring *mine = &rings[id], *next = &rings[(id + 1) % THREADS];
    for (int i = 0; i < ROUNDS; i++) {
        size_t n = pick(&rng);
        unsigned char *p = malloc(n);
        CHECK(p != NULL && (uintptr_t)p % 16 == 0);
        fill(p, n, (uint32_t)i);
        if (!push(next, p, n))
            consume(p, n, &rng);
        size_t m;
        void *q = pop(mine, &m);
        if (q)
            consume(q, m, &rng);
    }
    return NULL;
}

int main(void)
{
    require_preload();
    pthread_t t[THREADS];
    for (unsigned i = 0; i < THREADS; i++)
        pthread_mutex_init(&rings[i].lock, NULL);
    for (unsigned i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i) == 0);
    for (unsigned i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    uint64_t rng = 1;
    for (unsigned i = 0; i < THREADS; i++) {
        size_t n;
        void *p;
        while ((p = pop(&rings[i], &n)) != NULL)
            consume(p, n, &rng);
    }
    puts("malloc stress: ok");
    return 0;
}
