/* twoclass [ROUNDS]: a thread cache too small for what one thread churns.
 * Each round allocates 48 blocks of 16000 bytes and 48 of 20000 (1.7 MiB,
 * more than the 512 KiB budget), writes a byte in each page, and frees
 * them all. Most of each size are evicted to the shared cache and taken
 * back the next round; a policy that gave their pages back at each
 * eviction would fault them in again every round. Prints the wall
 * seconds of the loop (BENCHMARKS.md, issue #19):
 *   gcc -O2 bench/twoclass.c -o twoclass
 *   LD_PRELOAD=target/release/libpools_malloc.so ./twoclass */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { N = 48, A = 16000, B = 20000, PAGE = 4096 };

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 3000;
    void *(*volatile get)(size_t) = malloc; /* not elided */
    void (*volatile put)(void *) = free;
    static char *a[N], *b[N];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < N; i++) {
            a[i] = get(A);
            b[i] = get(B);
            if (a[i] == NULL || b[i] == NULL)
                return 1;
            for (int k = 0; k < A; k += PAGE)
                a[i][k] = 1;
            for (int k = 0; k < B; k += PAGE)
                b[i][k] = 1;
        }
        for (int i = 0; i < N; i++)
            put(a[i]);
        for (int i = 0; i < N; i++)
            put(b[i]);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.3f\n", (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    return 0;
}
