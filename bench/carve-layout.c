/* carve-layout [SIZE [ROUNDS [STEPS]]]: floor_bench's libpools loop with two
 * threads (fresh threads every round, each keeping a window of 64 live
 * objects and replacing one per step), printing after each round its ns per
 * step (both threads' steps counted, as floor_bench) and, for each thread,
 * the 4 KiB pages its window objects start in (numbered from the lowest
 * page of both), with how many objects each holds, and how many pages hold
 * objects of both threads. Unlike floor_bench, the threads start and end
 * together (barriers). BENCHMARKS.md, issue #13, "New objects apart".
 * Build: gcc -O2 -pthread bench/carve-layout.c -Iinclude -Ltarget/release
 *        -lpools -Wl,-rpath,$PWD/target/release */
#include <pools.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define W 64
#define SPREAD 4096 /* pages shown, from the lowest */
static struct pool_head *pool;
static long steps = 4000000;
static uintptr_t seen[2][W];
/* Both threads start together and hold their windows together at the end,
 * so that neither takes the other's objects through the shared cache
 * within a round (on a loaded machine one could else run all its steps and
 * exit before the other starts). */
static pthread_barrier_t start, end;

static void *run(void *arg)
{
    long id = (long)arg;
    void *win[W] = { 0 };
    pthread_barrier_wait(&start);
    for (long s = 0; s < steps; s++) {
        void *o = pool_alloc(pool);
        if (!o) {
            perror("pool_alloc");
            exit(1);
        }
        ((volatile char *)o)[0] = (char)s;
        if (win[s % W])
            pool_free(pool, win[s % W]);
        win[s % W] = o;
    }
    for (int i = 0; i < W; i++)
        seen[id][i] = (uintptr_t)win[i];
    pthread_barrier_wait(&end);
    for (int i = 0; i < W; i++)
        pool_free(pool, win[i]);
    return NULL;
}

static double timed(void)
{
    struct timespec a, b;
    pthread_t t[2];
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, run, (void *)i);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (2.0 * steps);
}

static void layout(void)
{
    static unsigned short count[2][SPREAD];
    uintptr_t lo = UINTPTR_MAX;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < W; i++)
            if (seen[k][i] / 4096 < lo)
                lo = seen[k][i] / 4096;
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < SPREAD; p++)
            count[k][p] = 0;
    int far = 0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < W; i++) {
            uintptr_t p = seen[k][i] / 4096 - lo;
            if (p < SPREAD)
                count[k][p]++;
            else
                far++;
        }
    int both = 0;
    for (int p = 0; p < SPREAD; p++)
        both += count[0][p] && count[1][p];
    for (int k = 0; k < 2; k++) {
        printf("  thread %d:", k);
        for (int p = 0; p < SPREAD; p++)
            if (count[k][p])
                printf(" %d(%u)", p, count[k][p]);
        printf("\n");
    }
    printf("  pages holding objects of both threads: %d%s\n", both, far ? " (some objects too far to show)" : "");
}

int main(int argc, char **argv)
{
    size_t size = argc > 1 ? strtoul(argv[1], NULL, 0) : 64;
    int rounds = argc > 2 ? atoi(argv[2]) : 5;
    if (argc > 3)
        steps = atol(argv[3]);
    pool = pool_create("carve_layout", size, 0);
    pthread_barrier_init(&start, NULL, 2);
    pthread_barrier_init(&end, NULL, 2);
    if (!pool) {
        perror("pool_create");
        return 1;
    }
    for (int r = 0; r < rounds; r++) {
        printf("round %d: %.2f ns per step\n", r, timed());
        layout();
    }
    return 0;
}
