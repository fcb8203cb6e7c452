/* hit STEPS: a window of 64 live objects, one replaced per step (the floor
 * benchmark's loop), on libpools: every call after the warm-up is a hit. */
#include <pools.h>
#include <stdlib.h>
int main(int argc, char **argv)
{
    long steps = argc > 1 ? atol(argv[1]) : 100000;
    struct pool_head *p = pool_create("hit", 64, 0);
    void *win[64] = { 0 };
    for (long s = 0; s < steps; s++) {
        void *o = pool_alloc(p);
        ((volatile char *)o)[0] = (char)s;
        if (win[s % 64]) pool_free(p, win[s % 64]);
        win[s % 64] = o;
    }
    return 0;
}
