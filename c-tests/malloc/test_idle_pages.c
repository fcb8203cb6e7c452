/* Freed blocks of two pages or more, of a class of at most 8 blocks in
 * all, give their pages back to the system (all but those holding their
 * first bytes) as they leave the thread cache, here pushed out by other
 * sizes' frees: a buffer that grew through several classes and sits idle
 * in a shared cache costs no memory. Blocks of a class of more blocks keep
 * their pages, whether other sizes' frees or their own push them out, so
 * that a flow of such blocks reuses them without page faults; so do those
 * of a class whose blocks were taken back after losing their pages 16
 * times (in use after all). mincore
 * says which pages are resident; the blocks stay mapped (they are the
 * preload's, in its spans). No flood grows the heap (its blocks are made
 * before the cases, and again after the case that grows the heap): a class
 * idle while the heap grows gives back its memory altogether, blocks in
 * the thread cache included (test_idle_classes).
 * malloc and free go through volatile pointers: nothing is elided. */
#include "preload.h"
#include <stdint.h>
#include <sys/mman.h>

enum { PAGE = 4096, BIG = 20000, MANY_SIZE = 16000, MANY = 16, SMALL = 4000, FLOOD = 1000,
       OWN = 64, REUSED = 24000, REUSES = 20 };

static void *(*volatile get)(size_t) = malloc;
static void (*volatile put)(void *) = free;

/* The whole pages of a block of `n` bytes at `p` past its first 64 bytes,
 * and how many of them are resident. */
static size_t pages(const unsigned char *p, size_t n, size_t *resident);

/* Allocates `count` blocks of `n` bytes into `b`, each written whole. */
static void fill(unsigned char **b, int count, size_t n)
{
    for (int i = 0; i < count; i++) {
        b[i] = get(n);
        CHECK(b[i] != NULL);
        memset(b[i], i, n);
    }
}

/* Allocates and frees FLOOD blocks of SMALL bytes: enough frees of another
 * size to push every older block out of the thread cache. */
static void flood(void)
{
    static unsigned char *small[FLOOD];
    fill(small, FLOOD, SMALL);
    for (int i = 0; i < FLOOD; i++)
        put(small[i]);
}

/* Resident pages among those of `count` blocks of `n` bytes. */
static size_t kept(unsigned char **b, int count, size_t n, size_t *total)
{
    size_t k = 0, resident;
    *total = 0;
    for (int i = 0; i < count; i++) {
        *total += pages(b[i], n, &resident);
        k += resident;
    }
    return k;
}

static size_t pages(const unsigned char *p, size_t n, size_t *resident)
{
    uintptr_t from = ((uintptr_t)p + 64 + PAGE - 1) & ~(uintptr_t)(PAGE - 1);
    uintptr_t to = ((uintptr_t)p + n) & ~(uintptr_t)(PAGE - 1);
    size_t all = 0;
    *resident = 0;
    for (uintptr_t a = from; a < to; a += PAGE) {
        unsigned char v;
        CHECK(mincore((void *)a, PAGE, &v) == 0);
        all++;
        *resident += v & 1;
    }
    return all;
}

int main(void)
{
    require_preload();
    size_t resident;
    flood();

    /* Pushed out by another class's frees: a lone block's pages go, those
     * of a class of many blocks stay. */
    /* The many first: a class without a pool borrows its first block
     * from a larger class's (lending), which would make the lone block's
     * class one of two blocks. */
    static unsigned char *many[MANY];
    fill(many, MANY, MANY_SIZE);
    unsigned char *p = get(BIG);
    CHECK(p != NULL);
    memset(p, 0x5a, BIG);
    size_t whole = pages(p, BIG, &resident);
    CHECK(whole >= 3 && resident == whole);
    put(p);
    for (int i = 0; i < MANY; i++)
        put(many[i]);
    flood();
    pages(p, BIG, &resident);
    if (resident != 0) {
        fprintf(stderr, "a %d-byte block pushed out by other frees keeps %zu of its %zu pages\n",
                BIG, resident, whole);
        return 1;
    }
    size_t total;
    size_t k = kept(many, MANY, MANY_SIZE, &total);
    if (k != total) {
        fprintf(stderr, "%d blocks of %d bytes pushed out by other frees lost %zu of %zu pages\n",
                MANY, MANY_SIZE, total - k, total);
        return 1;
    }

    /* Pushed out by its own class's frees: the pages stay. */
    static unsigned char *own[OWN];
    fill(own, OWN, BIG);
    for (int i = 0; i < OWN; i++)
        put(own[i]);
    k = kept(own, OWN, BIG, &total);
    if (k != total) {
        fprintf(stderr, "%d blocks of %d bytes pushed out by their own frees lost %zu of %zu pages\n",
                OWN, BIG, total - k, total);
        return 1;
    }
    /* A lone block taken back again and again after losing its pages: from
     * the 16th time on, it keeps them. The flood's class was idle while the
     * blocks above grew the heap: its blocks are made again first. */
    flood();
    size_t lost = 0;
    for (int r = 0; r < REUSES; r++) {
        unsigned char *q = get(REUSED);
        CHECK(q != NULL);
        memset(q, r, REUSED);
        put(q);
        flood();
        size_t all = pages(q, REUSED, &resident);
        if (r == REUSES - 1 && resident != all) {
            fprintf(stderr, "a %d-byte block taken back %d times after losing its pages "
                    "still loses them (%zu of %zu)\n", REUSED, r, all - resident, all);
            return 1;
        }
        lost += resident == 0;
    }
    CHECK(lost >= 1);
    printf("test_idle_pages: a lone block pushed out by other sizes gave back its %zu pages; "
           "%d of a class of %d, and %d pushed out by their own size, kept theirs; "
           "a block in use again gave back its pages %zu times, then kept them\n",
           whole, MANY, MANY, OWN, lost);
    return 0;
}
