/* The large-block cache is sized by recent demand (issue #19): a repeating
 * pattern of large blocks (5 to 25 MiB, 20 live, freed and allocated again)
 * is served from the cache, its pages still mapped (few page faults); once
 * the demand has fallen for two windows of a second, the next large free
 * shrinks the cache to its floor and advises what stays idle with
 * MADV_FREE (LazyFree in smaps_rollup); malloc_trim(0) then brings resident
 * memory back to within 1 MiB of where it started. */
#include "preload.h"
#include <stdint.h>
#include <sys/resource.h>
#include <time.h>

enum { MIB = 1 << 20, PAGE = 4096, SLOTS = 20, ITERS = 300 };

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static long minflt(void)
{
    struct rusage u;
    CHECK(getrusage(RUSAGE_SELF, &u) == 0);
    return u.ru_minflt;
}

/* KiB of the "LazyFree:" line of /proc/self/smaps_rollup. */
static size_t lazyfree_kib(void)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    CHECK(f != NULL);
    char line[256];
    size_t kib = 0;
    int found = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "LazyFree: %zu kB", &kib) == 1) {
            found = 1;
            break;
        }
    fclose(f);
    CHECK(found);
    return kib;
}

static void sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0)
        ;
}

static unsigned char *blk[SLOTS];
static size_t len[SLOTS];

/* ITERS rounds of the pattern; returns the pages it touched. */
static long pattern(void)
{
    long pages = 0;
    for (int i = 0; i < ITERS; i++) {
        int s = (int)(next() % SLOTS);
        if (blk[s]) {
            CHECK(blk[s][0] == (unsigned char)s && blk[s][len[s] - 1] == (unsigned char)s);
            free(blk[s]);
        }
        len[s] = 5 * (size_t)MIB + (size_t)(next() % (20 * (uint64_t)MIB));
        blk[s] = malloc(len[s]);
        CHECK(blk[s] != NULL);
        for (size_t o = 0; o < len[s]; o += PAGE)
            blk[s][o] = (unsigned char)s;
        blk[s][len[s] - 1] = (unsigned char)s;
        pages += (long)(len[s] / PAGE);
    }
    return pages;
}

int main(void)
{
    require_preload();
    malloc_trim(0);
    size_t base = rss_kib();

    pattern(); /* warm-up: the cache learns the demand */
    long f0 = minflt();
    long pages = pattern();
    long faults = minflt() - f0;
    fprintf(stderr, "pattern: %ld minor faults for %ld pages touched\n", faults, pages);
    /* Fresh mappings fault on every page: reuse must avoid most of that. */
    CHECK(faults * 10 < pages);

    for (int s = 0; s < SLOTS; s++) {
        free(blk[s]);
        blk[s] = NULL;
    }
    size_t freed = rss_kib();
    /* The demand was several hundred MiB: the cache keeps much of it. */
    CHECK(freed > base + 64 * 1024);

    /* Two windows without large frees, then one small large free. */
    sleep_ms(2200);
    free(malloc(MIB));
    size_t decayed = rss_kib(), lazy = lazyfree_kib();
    fprintf(stderr, "rss KiB: base %zu, freed %zu, decayed %zu (LazyFree %zu)\n", base, freed,
            decayed, lazy);
    /* Shrunk to the floor (16 MiB), and what is left advised. */
    CHECK(decayed <= base + 20 * 1024);
    CHECK(lazy >= 4 * 1024);

    CHECK(malloc_trim(0) == 1);
    size_t trimmed = rss_kib();
    fprintf(stderr, "rss KiB after malloc_trim: %zu\n", trimmed);
    CHECK(trimmed <= base + 1024);
    CHECK(lazyfree_kib() < 1024);
    printf("large cache: pattern reused, demand decays, MADV_FREE, trim: ok\n");
    return 0;
}
