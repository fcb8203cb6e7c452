/* realloc of large blocks under the preload: growth and shrinking through
 * many sizes (in and out of the size classes, past 32 MiB) keep the contents
 * (checksums); growth moves the pages with mremap instead of copying them
 * (no page fault on new pages for the old contents), and a big shrink gives
 * the tail back in place (same pointer, resident set drops). */
#include "preload.h"
#include <stdint.h>
#include <sys/resource.h>
#include <unistd.h>

static long minor_faults(void)
{
    struct rusage ru;
    CHECK(getrusage(RUSAGE_SELF, &ru) == 0);
    return ru.ru_minflt;
}

static uint64_t sum(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)((i * 131 + seed) ^ (i >> 12));
}

/* Growth by realloc, with the large cache empty (mremap) or holding blocks
 * of the target sizes (cached block and copy, for blocks up to 4 MiB). */
static void growth_and_shrink(int warm)
{
    static const size_t sizes[] = {
        40000,     100000,    1 << 20,   3 << 20,   (10 << 20) + 5, 40 << 20,
        5 << 20,   200000,    40000,     1000,      2 << 20,        33 << 20,
        34000,     70 << 20,  100,       5000000,
    };
    malloc_trim(0);
    if (warm)
        for (size_t k = 1; k < sizeof sizes / sizeof sizes[0]; k++) {
            unsigned char *c = malloc(sizes[k]);
            CHECK(c != NULL);
            memset(c, 0xee, sizes[k]);
            free(c);
        }
    size_t n = sizes[0];
    unsigned char *p = malloc(n);
    CHECK(p != NULL);
    fill(p, n, 1);
    for (size_t k = 1; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t m = sizes[k], keep = n < m ? n : m;
        uint64_t before = sum(p, keep);
        unsigned char *q = realloc(p, m);
        CHECK(q != NULL && (uintptr_t)q % 16 == 0);
        CHECK(malloc_usable_size(q) >= m);
        if (sum(q, keep) != before) {
            fprintf(stderr, "realloc %zu -> %zu lost the contents\n", n, m);
            exit(1);
        }
        fill(q, m, (unsigned)k);
        p = q;
        n = m;
    }
    free(p);
    printf("large realloc keeps contents through growth and shrink (%s cache): ok\n",
           warm ? "warm" : "empty");
}

static void no_copy(void)
{
    size_t n = 24 << 20;
    unsigned char *p = malloc(n);
    CHECK(p != NULL);
    fill(p, n, 7);
    uint64_t h = sum(p, n);
    malloc_trim(0);
    size_t before = rss_kib();
    long faults = minor_faults();
    /* Twice the size: copying would fault in 24 MiB of new pages (6144
     * faults of 4 KiB pages); moving the pages faults none of them. */
    unsigned char *q = realloc(p, 2 * n);
    CHECK(q != NULL);
    faults = minor_faults() - faults;
    size_t grown = rss_kib();
    fprintf(stderr, "growth: %ld minor faults; rss KiB: %zu before, %zu after growth\n", faults,
            before, grown);
    CHECK(faults < 500);
    CHECK(grown < before + 4096);
    CHECK(sum(q, n) == h);
    /* A shrink to far less than half stays in place and unmaps the tail. */
    uint64_t h1 = sum(q, 1 << 20);
    unsigned char *r = realloc(q, 1 << 20);
    size_t shrunk = rss_kib();
    fprintf(stderr, "rss KiB after shrink: %zu\n", shrunk);
    CHECK(r == q);
    CHECK(shrunk + 16 * 1024 < grown);
    CHECK(sum(r, 1 << 20) == h1);
    free(r);
    printf("large realloc remaps instead of copying: ok\n");
}

int main(void)
{
    require_preload();
    growth_and_shrink(0);
    growth_and_shrink(1);
    no_copy();
    return 0;
}
