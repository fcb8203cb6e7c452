/* A library whose constructor registers pthread_atfork handlers that
 * allocate (the case of $ATFORK_CASE, "KIND WHERE", see atfork_work.h),
 * loaded so that its constructor runs before libpools_malloc.so's:
 * LD_PRELOAD="libpools_malloc.so early_atfork.so" (objects are initialised
 * in the reverse of their load order). Its prepare handler then runs after
 * ours and its parent and child handlers before ours. Used by
 * test_fork_atfork.c with EARLY_ATFORK_LIB=1. */
#include "atfork_work.h"
#include <pthread.h>

static void on_prepare(void)
{
    if (atfork_where == WHERE_PREPARE)
        atfork_work();
}

static void on_parent(void)
{
    if (atfork_where == WHERE_PARENT)
        atfork_work();
}

static void on_child(void)
{
    if (atfork_where == WHERE_CHILD)
        atfork_work();
}

__attribute__((constructor)) static void register_early(void)
{
    const char *c = getenv("ATFORK_CASE");
    int kind, where;
    if (c == NULL || sscanf(c, "%d %d", &kind, &where) != 2)
        return;
    ATFORK_CHECK(pthread_atfork(on_prepare, on_parent, on_child) == 0);
    atfork_setup(kind, where);
}
