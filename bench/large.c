/* The large-block pattern of issue #19: blocks of 5 to 25 MiB, at most 20
 * live, freed and allocated again in a loop (image, compression and database
 * buffers). Each new block is written once per page (its pages are touched,
 * as a buffer being filled touches them) and checked before it is freed.
 *
 *   large [ITERATIONS] [SLOTS]
 *
 * Prints "WALL CPU MINFLT": wall seconds of the loop, CPU seconds (user +
 * system) of the loop, and the minor page faults it took. Exits non-zero if
 * a block's contents changed. Deterministic: the same sizes in the same
 * order under every allocator. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

enum { MIB = 1 << 20, PAGE = 4096, MAX_SLOTS = 64 };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static double cpu(long *minflt)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    *minflt = u.ru_minflt;
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec * 1e-6 +
           (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec * 1e-6;
}

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void fill(unsigned char *p, size_t n, unsigned char s)
{
    for (size_t i = 0; i < n; i += PAGE)
        p[i] = (unsigned char)(s + (i >> 12));
    p[n - 1] = s;
}

static int check(const unsigned char *p, size_t n, unsigned char s)
{
    for (size_t i = 0; i < n; i += PAGE)
        if (p[i] != (unsigned char)(s + (i >> 12)))
            return 0;
    return p[n - 1] == s;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 1500;
    int slots = argc > 2 ? atoi(argv[2]) : 20;
    if (iters < 1 || slots < 1 || slots > MAX_SLOTS) {
        fprintf(stderr, "usage: large [ITERATIONS >= 1] [SLOTS 1..%d]\n", MAX_SLOTS);
        return 2;
    }
    static unsigned char *blk[MAX_SLOTS];
    static size_t len[MAX_SLOTS];
    static unsigned char seed[MAX_SLOTS];
    long f0, f1;
    double t0 = now(), c0 = cpu(&f0);
    for (long i = 0; i < iters; i++) {
        int s = (int)(next() % (uint64_t)slots);
        if (blk[s]) {
            if (!check(blk[s], len[s], seed[s])) {
                fprintf(stderr, "large: block %d changed\n", s);
                return 1;
            }
            free(blk[s]);
        }
        len[s] = 5 * (size_t)MIB + (size_t)(next() % (20 * (uint64_t)MIB + 1));
        seed[s] = (unsigned char)i;
        blk[s] = malloc(len[s]);
        if (!blk[s]) {
            fprintf(stderr, "large: malloc(%zu) failed\n", len[s]);
            return 1;
        }
        fill(blk[s], len[s], seed[s]);
    }
    for (int s = 0; s < slots; s++)
        free(blk[s]);
    double t1 = now(), c1 = cpu(&f1);
    printf("%.4f %.4f %ld\n", t1 - t0, c1 - c0, f1 - f0);
    return 0;
}
