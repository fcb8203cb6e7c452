/* interleave-pages [SIZE [STEPS]]: the access pattern of floor_bench's two
 * threads (each cycles through its own 65 objects of SIZE bytes, 64 by
 * default, a load and a store at offset 16 and a store at offset 0, as
 * pool_free's double-free check and mark and the benchmark's touch do),
 * without any allocator, for placements of the two threads' objects in
 * 4 KiB pages. A placement is a pattern repeated over the pages: 'a' and
 * 'b' are pages of one thread, '.' a page nobody uses; objects start 128
 * bytes into the first page (a span's header) and never cross a page.
 * Prints ns per step of one thread (the two run at once, as in
 * bench/interleave.c) for each placement, three times. BENCHMARKS.md, issue #13, "New objects apart". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { N = 65 };
static char *region;
static long steps = 20000000, size = 64;
struct objs { long off[N]; };
static struct objs a, b;

static void *walk(void *p)
{
    const struct objs *l = p;
    long hits = 0;
    for (long s = 0; s < steps; s++) {
        volatile long *o = (long *)(region + l->off[s % N]);
        hits += o[2] == s;
        o[2] = s;
        o[0] = s;
    }
    return (void *)hits;
}

static void place(const char *pattern)
{
    int na = 0, nb = 0;
    long len = (long)strlen(pattern);
    for (long page = 0; na < N || nb < N; page++) {
        char t = pattern[page % len];
        for (long off = page ? 0 : 128; off + size <= 4096; off += size) {
            if (t == 'a' && na < N)
                a.off[na++] = page * 4096 + off;
            if (t == 'b' && nb < N)
                b.off[nb++] = page * 4096 + off;
        }
    }
}

static double timed(void)
{
    struct timespec x, y;
    pthread_t t[2];
    clock_gettime(CLOCK_MONOTONIC, &x);
    pthread_create(&t[0], NULL, walk, &a);
    pthread_create(&t[1], NULL, walk, &b);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    clock_gettime(CLOCK_MONOTONIC, &y);
    return ((y.tv_sec - x.tv_sec) * 1e9 + (y.tv_nsec - x.tv_nsec)) / steps;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        size = atol(argv[1]);
    if (argc > 2)
        steps = atol(argv[2]);
    if (size < 24 || size > 4096 - 128) {
        fprintf(stderr, "size: 24 to 3968\n");
        return 2;
    }
    region = aligned_alloc(1 << 21, 1 << 23);
    if (!region)
        return 1;
    memset(region, 0, 1 << 23);
    static const char *const patterns[] = {
        "ab", "aabb", "aaaabbbb", "aaaaaaaabbbbbbbb", "aa..bb..", "a.b.",
    };
    printf("%ld-byte objects, ns per step of one thread:\n", size);
    for (int r = 0; r < 3; r++) {
        for (unsigned k = 0; k < sizeof patterns / sizeof *patterns; k++) {
            place(patterns[k]);
            printf("%s%s %.2f", k ? " | " : "", patterns[k], timed());
        }
        printf("\n");
    }
    return 0;
}
