/* malloc-hit STEPS SIZE: bench/hit.c's loop on malloc and free (called
 * through volatile pointers, so that the compiler keeps every pair), for
 * counting the LD_PRELOAD malloc's hit path. */
#include <stdlib.h>
int main(int argc, char **argv)
{
    long steps = argc > 1 ? atol(argv[1]) : 100000;
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : 64;
    void *(*volatile get)(size_t) = malloc;
    void (*volatile put)(void *) = free;
    void *win[64] = { 0 };
    for (long s = 0; s < steps; s++) {
        void *o = get(size);
        if (!o) return 1;
        ((volatile char *)o)[0] = (char)s;
        if (win[s % 64]) put(win[s % 64]);
        win[s % 64] = o;
    }
    return 0;
}
