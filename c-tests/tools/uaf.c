/*
 * uaf: a use after pool_free, for the memory checkers (mk/debug.mk).
 *
 *   uaf        allocates, frees, allocates the same object again: clean
 *   uaf bug    also writes into the object after pool_free: valgrind
 *              ("Invalid write") and ASan ("use-after-poison") must report it
 *
 * Without the library's valgrind/ASan hooks, both runs look clean to the
 * tools: the object is still valid malloc memory, parked in a pool cache.
 */
#include <pools.h>

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    int bug = argc > 1 && strcmp(argv[1], "bug") == 0;
    struct pool_head *p = pool_create("victim", 64, 0);
    volatile char *o = pool_alloc(p);
    if (o == NULL)
        return 2;
    memset((char *)o, 1, 64);
    pool_free(p, (char *)o);
    if (bug)
        o[0] = 2; /* the use after pool_free */
    char *again = pool_alloc(p); /* the same object, from the thread cache */
    if (again != (char *)o)
        return 3;
    again[0] = 3; /* allocated again: fine */
    pool_free(p, again);
    printf("uaf: %s run done\n", bug ? "bug" : "clean");
    return 0;
}
