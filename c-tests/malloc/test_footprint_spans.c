/* Memory that large blocks freed serves the small blocks that come next:
 * a freed 2 MiB block stays cached (resident) while nothing else happens,
 * but once small blocks need fresh spans, the cache gives its blocks back
 * (the smallest first), so the resident set grows by the small blocks
 * alone, as with a single heap, not by both. Then a cached block is still
 * reused when no span was made in between. */
#include "preload.h"
#include <stdint.h>

static void *(*volatile do_malloc)(size_t) = malloc;
static void (*volatile do_free)(void *) = free;

#define MIB (1024 * 1024)
#define BIG (2 * MIB)
/* Small blocks: 4 MiB of them, in a class no earlier call used. */
#define SMALL 3000
#define NSMALL (4 * MIB / SMALL)

static void *small[NSMALL];

int main(void)
{
    require_preload();
    malloc_trim(0);
    size_t base = rss_kib();

    unsigned char *big = do_malloc(BIG);
    CHECK(big != NULL);
    memset(big, 0x5a, BIG);
    do_free(big);
    size_t cached = rss_kib();
    fprintf(stderr, "rss KiB: base %zu, after the 2 MiB block's free %zu\n", base, cached);
    /* The cache keeps it resident for reuse. */
    CHECK(cached >= base + BIG / 1024 - 256);

    for (int i = 0; i < NSMALL; i++) {
        small[i] = do_malloc(SMALL);
        CHECK(small[i] != NULL);
        memset(small[i], 0xa5, SMALL);
    }
    size_t grown = rss_kib();
    fprintf(stderr, "rss KiB after %d small blocks (%d KiB): %zu\n", NSMALL,
            NSMALL * SMALL / 1024, grown);
    /* Without the give-back: base + 2 MiB cached + 4 MiB of small blocks. */
    CHECK(grown <= base + (size_t)NSMALL * SMALL / 1024 + 1024);

    /* With no span made in between, a freed block is still reused. */
    unsigned char *p = do_malloc(BIG);
    CHECK(p != NULL);
    memset(p, 0x3c, BIG);
    do_free(p);
    unsigned char *q = do_malloc(BIG);
    CHECK(q == p && q[BIG / 2] == 0x3c);
    do_free(q);
    for (int i = 0; i < NSMALL; i++)
        do_free(small[i]);
    printf("cached large blocks give way to fresh spans: ok\n");
    return 0;
}
