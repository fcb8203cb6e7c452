/* interleave [STEPS]: the access pattern of two threads that each cycle
 * through their own 96 objects of 64 bytes (a load and a store to each, as
 * a free's double-free check and mark do), without any allocator, for
 * four placements of the two threads' lines: far apart, runs of 32 lines
 * alternating between the threads, runs of 2, and single lines. Prints ns
 * per step per thread. BENCHMARKS.md, issue #13, "Two threads on a quiet
 * machine". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { N = 96 };
static char *region;
static long steps = 20000000;
struct lines { long idx[N]; };
static struct lines a, b;

static void *walk(void *p)
{
    const struct lines *l = p;
    long hits = 0;
    for (long s = 0; s < steps; s++) {
        volatile long *o = (long *)(region + 64 * l->idx[s % N]);
        hits += o[2] == s;
        o[2] = s;
        o[0] = s;
    }
    return (void *)hits;
}

/* Runs of `run` lines, alternating between a and b. */
static void place(long run)
{
    int na = 0, nb = 0;
    for (long line = 0; na < N || nb < N; line++) {
        if ((line / run) % 2 == 0) {
            if (na < N) a.idx[na++] = line;
        } else if (nb < N) {
            b.idx[nb++] = line;
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
    if (argc > 1) steps = atol(argv[1]);
    region = aligned_alloc(1 << 20, 1 << 22);
    if (!region) return 1;
    for (int r = 0; r < 3; r++) {
        place(1000);
        double apart = timed();
        place(32);
        double r32 = timed();
        place(2);
        double r2 = timed();
        place(1);
        double r1 = timed();
        printf("apart %.2f | runs of 32 %.2f | runs of 2 %.2f | single lines %.2f ns/step\n",
               apart, r32, r2, r1);
    }
    return 0;
}
