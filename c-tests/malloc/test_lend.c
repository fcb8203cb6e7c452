/* A class that the process has asked for less than a page of objects has no
 * pool of its own yet: a larger class's pool, at most twice its size, lends
 * it objects (malloc_usable_size says which), and then the class gets its
 * own. A power-of-two class borrows from power-of-two classes only, so an
 * aligned request is still served by a class as aligned as its own. The
 * classes used here are ones that start-up does not use (checked first). */
#include "preload.h"
#include <stdint.h>

static void *(*volatile do_malloc)(size_t) = malloc;
static void (*volatile do_free)(void *) = free;

/* Whether the pool report (pool_dump_to_buffer, exported by the preload)
 * has a pool of this class. */
static int has_class(size_t size)
{
    static long (*dump)(char *, size_t, int, int);
    if (!dump)
        dump = (long (*)(char *, size_t, int, int))dlsym(RTLD_DEFAULT, "pool_dump_to_buffer");
    CHECK(dump != NULL);
    static char buf[65536];
    long n = dump(buf, sizeof buf, 0, 0);
    CHECK(n > 0 && (size_t)n < sizeof buf);
    char name[32];
    snprintf(name, sizeof name, "Pool malloc-%zu ", size);
    return strstr(buf, name) != NULL;
}

int main(void)
{
    require_preload();
    static const size_t unused[] = {512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072};
    for (size_t i = 0; i < sizeof unused / sizeof unused[0]; i++)
        CHECK(!has_class(unused[i]));

    /* 640 gets a pool (no class up to 1280 has one), but 512 is a power of
     * two: it takes a pool of its own rather than borrow from 640. */
    void *x = do_malloc(600);
    CHECK(x != NULL && malloc_usable_size(x) == 640);
    void *a = NULL;
    CHECK(posix_memalign(&a, 512, 512) == 0);
    CHECK(((uintptr_t)a & 511) == 0);
    CHECK(malloc_usable_size(a) == 512);
    CHECK(has_class(512));

    /* 1536 gets a pool; 1280 borrows from it for 4096 / 1280 = 3 blocks,
     * then takes its own. */
    void *lender = do_malloc(1500);
    CHECK(lender != NULL && malloc_usable_size(lender) == 1536);
    void *b[4];
    for (int i = 0; i < 3; i++) {
        b[i] = do_malloc(1200);
        CHECK(b[i] != NULL);
        CHECK(malloc_usable_size(b[i]) == 1536);
        memset(b[i], 0x5a, 1536);
    }
    CHECK(!has_class(1280));
    b[3] = do_malloc(1200);
    CHECK(b[3] != NULL && malloc_usable_size(b[3]) == 1280);
    CHECK(has_class(1280));
    /* A lent block goes back to the lender: the next 1536 reuses it. */
    do_free(b[2]);
    void *again = do_malloc(1500);
    CHECK(again == b[2]);

    do_free(again);
    do_free(b[0]);
    do_free(b[1]);
    do_free(b[3]);
    do_free(lender);
    do_free(x);
    do_free(a);
    puts("small classes borrow from a larger one: ok");
    return 0;
}
