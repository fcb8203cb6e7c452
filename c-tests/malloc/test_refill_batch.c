/*
 * test_refill_batch (under the preload): a thread that misses in its cache,
 * with nothing in the shared cache, takes a batch of new objects of the
 * class at once (up to a page of them) and hands them out in address
 * order: of two threads that allocate in turns from a class nobody used
 * before, each one's blocks are neighbours of each other, not of the other
 * thread's.
 *
 * The steps run one at a time, each on a named worker (stepper.h).
 */
#include "preload.h"
#include "../stepper.h"

#include <stdint.h>

/* A class that start-up does not use: 216 bytes land in the 224-byte
 * class, 18 blocks to a page. */
#define REQUEST 216u
#define TURNS 12u

/* A thread's blocks, taken one per step. */
struct worker {
    struct stepper thread;
    void *blocks[TURNS];
    unsigned n;
};

static void *(*volatile get)(size_t) = malloc;
static void (*volatile put)(void *) = free;

static void take(void *arg)
{
    struct worker *w = arg;
    w->blocks[w->n] = get(REQUEST);
    CHECK(w->blocks[w->n] != NULL);
    w->n++;
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

    struct worker wa = { .n = 0 }, wb = { .n = 0 };
    stepper_start(&wa.thread);
    stepper_start(&wb.thread);
    for (unsigned t = 0; t < TURNS; t++) {
        stepper_run(&wa.thread, take, &wa);
        stepper_run(&wb.thread, take, &wb);
    }
    unsigned na = neighbours(&wa, class_size), nb = neighbours(&wb, class_size);
    stepper_stop(&wa.thread);
    stepper_stop(&wb.thread);
    for (unsigned i = 0; i < wa.n; i++)
        put(wa.blocks[i]);
    for (unsigned i = 0; i < wb.n; i++)
        put(wb.blocks[i]);
    if (na != TURNS - 1 || nb != TURNS - 1) {
        fprintf(stderr, "blocks in address order: %u and %u of %u\n", na, nb, TURNS - 1);
        return 1;
    }
    printf("a thread's new blocks are neighbours: ok\n");
    return 0;
}
