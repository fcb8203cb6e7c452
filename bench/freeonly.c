/* freeonly [BLOCKS]: one thread mallocs BLOCKS blocks of 16 to 255 bytes
 * (a fixed pseudo-random sequence), then frees them all in the same order:
 * a heap that grows, then the consumer's side of bench/prodcons.c alone
 * (frees of many sizes, past the thread cache's budget). For counting
 * instructions under callgrind, with and without an LD_PRELOAD malloc. */
#include <stdlib.h>
int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    void **v = calloc((size_t)n, sizeof *v);
    if (!v)
        return 1;
    void *(*volatile get)(size_t) = malloc;
    void (*volatile put)(void *) = free;
    unsigned x = 1;
    for (long i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        if (!(v[i] = get(16 + (x >> 16) % 240)))
            return 1;
    }
    for (long i = 0; i < n; i++)
        put(v[i]);
    free(v);
    return 0;
}
