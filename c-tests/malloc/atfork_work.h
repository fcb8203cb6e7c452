/* What the atfork handlers of test_fork_atfork.c (and of early_atfork.c,
 * the library that registers them at load) do: allocate a new size class,
 * 2,000 small blocks or 100,000 bytes, and give them back. */
#ifndef ATFORK_WORK_H
#define ATFORK_WORK_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef POOLS
#include <pools.h>
#endif

enum { KIND_NEW_CLASS, KIND_SMALL, KIND_LARGE, KINDS };
enum { WHERE_PREPARE, WHERE_PARENT, WHERE_CHILD, WHERES };
enum { SMALL_BLOCKS = 2000, LARGE_BYTES = 100000 };

static int atfork_kind = -1, atfork_where = -1;
static unsigned atfork_calls;
#ifdef POOLS
static struct pool_head *atfork_small, *atfork_large;
#endif

#define ATFORK_CHECK(cond)                                                   \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                  \
            _exit(1);                                                        \
        }                                                                    \
    } while (0)

static inline void *atfork_alloc(int small)
{
#ifdef POOLS
    return pool_alloc(small ? atfork_small : atfork_large);
#else
    return malloc(small ? 48 : LARGE_BYTES);
#endif
}

static inline void atfork_free(int small, void *p)
{
#ifdef POOLS
    pool_free(small ? atfork_small : atfork_large, p);
#else
    (void)small;
    free(p);
#endif
}

static inline void atfork_work(void)
{
    if (atfork_kind < 0)
        return;
    atfork_calls++;
    if (atfork_kind == KIND_NEW_CLASS) {
        /* A size nothing used before: a class (a pool) created now. */
#ifdef POOLS
        struct pool_head *p = pool_create("atfork-new", 1000 + 16 * atfork_calls, 0);
        ATFORK_CHECK(p != NULL);
        void *o = pool_alloc(p);
        ATFORK_CHECK(o != NULL);
        pool_free(p, o);
        ATFORK_CHECK(pool_destroy(p) == NULL);
#else
        size_t n = 9000 + 2600 * (atfork_calls % 9);
        void *o = malloc(n);
        ATFORK_CHECK(o != NULL);
        memset(o, 1, n);
        free(o);
#endif
    } else if (atfork_kind == KIND_SMALL) {
        static void *v[SMALL_BLOCKS];
        for (int i = 0; i < SMALL_BLOCKS; i++) {
            v[i] = atfork_alloc(1);
            ATFORK_CHECK(v[i] != NULL);
            memset(v[i], i, 48);
        }
        for (int i = 0; i < SMALL_BLOCKS; i++)
            atfork_free(1, v[i]);
    } else {
        void *o = atfork_alloc(0);
        ATFORK_CHECK(o != NULL);
        memset(o, 2, LARGE_BYTES);
        atfork_free(0, o);
    }
}

/* Called once the handlers are registered: the library's first use. */
static inline void atfork_setup(int kind, int where)
{
#ifdef POOLS
    atfork_small = pool_create("atfork-small", 48, 0);
    atfork_large = pool_create("atfork-large", LARGE_BYTES, 0);
    ATFORK_CHECK(atfork_small != NULL && atfork_large != NULL);
#endif
    atfork_kind = kind;
    atfork_where = where;
}
#endif
