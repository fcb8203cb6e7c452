/* grow N SIZE: N calls of malloc(SIZE), nothing freed (a heap that only
 * grows). Run under the preload with callgrind twice, for two N, and
 * divide the difference of the totals by the difference of the N: the
 * instructions of one call (BENCHMARKS.md, "a growing heap"):
 *   gcc -O2 bench/grow.c -o grow
 *   LD_PRELOAD=target/release/libpools_malloc.so valgrind --tool=callgrind ./grow 50000 64 */
#include <stdlib.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : 64;
    void *(*volatile get)(size_t) = malloc; /* not elided */
    for (long i = 0; i < n; i++) {
        char *p = get(size);
        p[0] = 1;
    }
    return 0;
}
