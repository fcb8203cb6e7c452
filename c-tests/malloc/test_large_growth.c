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

static void grows_into_a_much_larger_cached_block(void)
{
    malloc_trim(0);
    unsigned char *big = malloc(2 << 20);
    CHECK(big != NULL);
    memset(big, 0x11, 2 << 20);
    free(big); /* cached */
    size_t n = 100000;
    unsigned char *p = malloc(n);
    CHECK(p != NULL && p != big);
    fill(p, n, 3);
    unsigned char *q = realloc_v(p, 300000);
    CHECK(q == big);
    CHECK(!mapped(p));
    check_fill(q, n, 3);
    free(q);
    printf("a growing realloc takes a cached block 16 times larger and unmaps the old one: ok\n");
}

static void leaves_no_cached_leftover(void)
{
    malloc_trim(0);
    size_t n = 200000;
    unsigned char *p = malloc(n);
    CHECK(p != NULL);
    fill(p, n, 9);
    unsigned char *c = malloc(400000);
    CHECK(c != NULL);
    memset(c, 0x22, 400000);
    free(c); /* cached */
    unsigned char *q = realloc_v(p, 350000);
    CHECK(q == c);
    /* The block left behind is unmapped, not kept in the cache. */
    CHECK(!mapped(p));
    check_fill(q, n, 9);
    free(q);
    printf("the block a growth leaves is unmapped, not cached: ok\n");
}

int main(void)
{
    require_preload();
    grows_into_a_much_larger_cached_block();
    leaves_no_cached_leftover();
    return 0;
}
