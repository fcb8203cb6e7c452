/* A size class that the program stopped using gives its memory back while
 * the heap grows: its freed blocks, pushed out of the thread cache into the
 * shared cache or still in the thread cache, keep their pages as long as
 * nothing grows (they may be taken again), and lose them once the heap has
 * grown by more than four spans (1 MiB) with no block of that class taken
 * past the thread cache. Blocks of the class allocated afterwards are
 * usable. mincore says which pages are resident
 * (a range unmapped altogether counts as not resident).
 * malloc and free go through volatile pointers: nothing is elided. */
#include "preload.h"
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>

enum { PAGE = 4096, IDLE_SIZE = 640, IDLE = 64, CACHED_SIZE = 1280, CACHED = 32,
       FLOOD_SIZE = 4000, FLOOD = 1000, GROW_SIZE = 3000, GROW = 1000 };

static void *(*volatile get)(size_t) = malloc;
static void (*volatile put)(void *) = free;

/* Allocates and frees FLOOD blocks of FLOOD_SIZE bytes: enough frees of
 * another class to push every older block out of the thread cache. */
static void flood(void)
{
    static void *b[FLOOD];
    for (int i = 0; i < FLOOD; i++) {
        b[i] = get(FLOOD_SIZE);
        CHECK(b[i] != NULL);
        memset(b[i], 1, FLOOD_SIZE);
    }
    for (int i = 0; i < FLOOD; i++)
        put(b[i]);
}

/* Allocates `count` blocks of `n` bytes into `b`, each written whole, and
 * the range [*lo, *hi) of the middle ones (the first may be lent by another
 * class). */
static void fill(unsigned char **b, int count, size_t n, uintptr_t *lo, uintptr_t *hi)
{
    *lo = UINTPTR_MAX;
    *hi = 0;
    for (int i = 0; i < count; i++) {
        b[i] = get(n);
        CHECK(b[i] != NULL);
        memset(b[i], 0x5a, n);
    }
    for (int i = count / 8; i < count - count / 8; i++) {
        uintptr_t a = (uintptr_t)b[i];
        *lo = a < *lo ? a : *lo;
        *hi = a + n > *hi ? a + n : *hi;
    }
    CHECK(*hi - *lo < (size_t)count * n * 2);
}

/* Allocates `count` blocks of `n` bytes into `b`, writes each with its
 * index, checks and frees them. */
static void serves(unsigned char **b, int count, size_t n)
{
    for (int i = 0; i < count; i++) {
        b[i] = get(n);
        CHECK(b[i] != NULL);
        memset(b[i], i, n);
    }
    for (int i = 0; i < count; i++) {
        CHECK(b[i][0] == i && b[i][n - 1] == i);
        put(b[i]);
    }
}

/* Resident pages among the whole pages of [from, to), counted in *all. */
static size_t resident(uintptr_t from, uintptr_t to, size_t *all)
{
    size_t r = 0;
    *all = 0;
    from = (from + PAGE - 1) & ~(uintptr_t)(PAGE - 1);
    for (uintptr_t a = from; a + PAGE <= to; a += PAGE) {
        unsigned char v;
        (*all)++;
        if (mincore((void *)a, PAGE, &v) == 0)
            r += v & 1;
        else
            CHECK(errno == ENOMEM);
    }
    return r;
}

int main(void)
{
    require_preload();
    /* The flood's own blocks first, so that the floods below grow nothing. */
    flood();

    static unsigned char *idle[IDLE];
    uintptr_t lo, hi;
    fill(idle, IDLE, IDLE_SIZE, &lo, &hi);
    for (int i = 0; i < IDLE; i++)
        put(idle[i]);
    flood();
    size_t all, r = resident(lo, hi, &all);
    CHECK(all >= 4);
    if (r != all) {
        fprintf(stderr, "idle %d-byte blocks lost %zu of %zu pages with no growth\n", IDLE_SIZE,
                all - r, all);
        return 1;
    }
    /* Blocks of another class, freed last: they stay in the thread cache. */
    static unsigned char *cached[CACHED];
    uintptr_t clo, chi;
    fill(cached, CACHED, CACHED_SIZE, &clo, &chi);
    for (int i = 0; i < CACHED; i++)
        put(cached[i]);
    size_t call, cr = resident(clo, chi, &call);
    CHECK(call >= 4);
    if (cr != call) {
        fprintf(stderr, "cached %d-byte blocks lost %zu of %zu pages with no growth\n",
                CACHED_SIZE, call - cr, call);
        return 1;
    }

    /* The heap grows by several spans (256 KiB each) of another class. */
    static unsigned char *grow[GROW];
    for (int i = 0; i < GROW; i++) {
        grow[i] = get(GROW_SIZE);
        CHECK(grow[i] != NULL);
        memset(grow[i], 2, GROW_SIZE);
    }
    r = resident(lo, hi, &all);
    if (r != 0) {
        fprintf(stderr, "idle %d-byte blocks keep %zu of %zu pages after the heap grew by %d KiB\n",
                IDLE_SIZE, r, all, GROW * GROW_SIZE / 1024);
        return 1;
    }
    cr = resident(clo, chi, &call);
    if (cr != 0) {
        fprintf(stderr, "%d-byte blocks idle in the thread cache keep %zu of %zu pages after the "
                "heap grew by %d KiB\n", CACHED_SIZE, cr, call, GROW * GROW_SIZE / 1024);
        return 1;
    }
    for (int i = 0; i < GROW; i++) {
        CHECK(grow[i][0] == 2 && grow[i][GROW_SIZE - 1] == 2);
        put(grow[i]);
    }

    /* The classes serve again. */
    serves(idle, IDLE, IDLE_SIZE);
    serves(cached, CACHED, CACHED_SIZE);
    printf("test_idle_classes: %zu pages of idle %d-byte blocks in the shared cache and %zu "
           "of %d-byte blocks in the thread cache kept while nothing grew, given back after "
           "the heap grew by %d KiB\n", all, IDLE_SIZE, call, CACHED_SIZE,
           GROW * GROW_SIZE / 1024);
    return 0;
}
