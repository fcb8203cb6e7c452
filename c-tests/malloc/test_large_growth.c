/* A realloc that grows a large block into a block the large cache holds
 * (issue #19, the peak resident memory of a buffer that grows by doubling,
 * as sqlite's sorter does, while the cache holds what the previous sort
 * freed):
 * - it takes a cached block up to 16 times its size, rather than growing
 *   by mremap (fresh pages) while the cached block stays resident beside;
 * - the block it leaves is unmapped, not cached: a chain of growths would
 *   otherwise keep one resident leftover per step;
 * - the contents survive the move (it is copied in steps, the old pages
 *   dropped as it goes). */
#include "preload.h"
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>

enum { PAGE = 4096 };

/* Whether the page holding `p` is mapped (mincore fails with ENOMEM on an
 * unmapped page). */
static int mapped(const void *p)
{
    unsigned char vec;
    void *page = (void *)((uintptr_t)p & ~(uintptr_t)(PAGE - 1));
    if (mincore(page, PAGE, &vec) == 0)
        return 1;
    CHECK(errno == ENOMEM);
    return 0;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 7 + seed + (i >> 12));
}

static void check_fill(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 7 + seed + (i >> 12))) {
            fprintf(stderr, "byte %zu of %zu lost in the move\n", i, n);
            exit(1);
        }
}

/* Called through a volatile pointer: the compiler must not fold the
 * malloc/realloc/free sequence. */
static void *(*volatile realloc_v)(void *, size_t) = realloc;

/* Takes a block of `n` bytes, caches one of `cached` bytes, then grows the
 * first to `m` by realloc: the growth must move into the cached block,
 * keep the contents, and unmap the block it leaves (not cache it). */
static void grow_into_cached(size_t cached, size_t n, size_t m, unsigned char seed)
{
    malloc_trim(0);
    unsigned char *p = malloc(n);
    CHECK(p != NULL);
    fill(p, n, seed);
    unsigned char *c = malloc(cached);
    CHECK(c != NULL);
    memset(c, 0x11, cached);
    free(c); /* cached */
    unsigned char *q = realloc_v(p, m);
    CHECK(q == c);
    CHECK(!mapped(p));
    check_fill(q, n, seed);
    free(q);
}

int main(void)
{
    require_preload();
    /* 2 MiB cached, 100000 bytes grown to 300000: 16 times its pages away. */
    grow_into_cached(2 << 20, 100000, 300000, 3);
    printf("a growing realloc takes a cached block 16 times larger and unmaps the old one: ok\n");
    /* A block grown into a cached one leaves nothing cached behind. */
    grow_into_cached(400000, 200000, 350000, 9);
    printf("the block a growth leaves is unmapped, not cached: ok\n");
    return 0;
}
