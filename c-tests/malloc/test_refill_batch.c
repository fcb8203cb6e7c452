/*
 * test_refill_batch (under the preload): a thread that misses in its cache,
 * with nothing in the shared cache, takes a batch of new objects of the
 * class at once (up to a page of them) and hands them out in address
 * order: of two threads that allocate in turns from a class nobody used
 * before, each one's blocks are neighbours of each other, not of the other
 * thread's.
 *
 * The steps run one at a time, each on a named worker (a semaphore per
 * worker).
 */
#include "preload.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>

/* A class that start-up does not use: 216 bytes land in the 224-byte
 * class, 18 blocks to a page. */
#define REQUEST 216u
#define TURNS 12u

struct worker {
    pthread_t th;
    sem_t go;
    sem_t done;
    int quit;
    void *blocks[TURNS];
    unsigned n;
};

static void *(*volatile get)(size_t) = malloc;
static void (*volatile put)(void *) = free;

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (;;) {
        sem_wait(&w->go);
        if (w->quit)
            return NULL;
        w->blocks[w->n] = get(REQUEST);
        CHECK(w->blocks[w->n] != NULL);
        w->n++;
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

static void step(struct worker *w)
{
    sem_post(&w->go);
    sem_wait(&w->done);
}

static void stop(struct worker *w)
{
    w->quit = 1;
    sem_post(&w->go);
    CHECK(pthread_join(w->th, NULL) == 0);
    for (unsigned i = 0; i < w->n; i++)
        put(w->blocks[i]);
}

/* How many of w's blocks start where the previous one ends. */
static unsigned neighbours(const struct worker *w, size_t class_size)
{
    unsigned k = 0;
    for (unsigned i = 1; i < w->n; i++)
        k += (uintptr_t)w->blocks[i] == (uintptr_t)w->blocks[i - 1] + class_size;
    return k;
}

int main(void)
{
    require_preload();
    void *probe = get(REQUEST);
    CHECK(probe != NULL);
    size_t class_size = malloc_usable_size(probe);
    CHECK(class_size == 224);
    put(probe);

    struct worker wa, wb;
    start(&wa);
    start(&wb);
    for (unsigned t = 0; t < TURNS; t++) {
        step(&wa);
        step(&wb);
    }
    unsigned na = neighbours(&wa, class_size), nb = neighbours(&wb, class_size);
    stop(&wa);
    stop(&wb);
    if (na != TURNS - 1 || nb != TURNS - 1) {
        fprintf(stderr, "blocks in address order: %u and %u of %u\n", na, nb, TURNS - 1);
        return 1;
    }
    printf("a thread's new blocks are neighbours: ok\n");
    return 0;
}
