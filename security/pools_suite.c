/*
 * pools_suite: the security suite's cases that have a meaning for the C API
 * (pool_create / pool_alloc / pool_free, linked with -lpools), under the
 * same names as in malloc_suite.c. Not here: realloc, calloc's n * m and
 * malloc(0), which the C API has no call for. A pointer that pool_free
 * refuses with EINVAL (one not aligned to 16) is an error returned where
 * one is due: the child exits HANDLED. See security/README.md.
 */
#include "harness.h"

#include <errno.h>
#include <pools.h>
#include <pthread.h>

static void *(*volatile do_alloc)(struct pool_head *) = pool_alloc;
static void *(*volatile do_zalloc)(struct pool_head *) = pool_zalloc;
static void (*volatile do_free_raw)(struct pool_head *, void *) = pool_free;

/* pool_free, and HANDLED if it refused the pointer with EINVAL. */
static void do_free(struct pool_head *pool, void *p)
{
    errno = 0;
    do_free_raw(pool, p);
    if (errno == EINVAL)
        _exit(HANDLED);
}

static struct pool_head *pool_of(size_t size)
{
    struct pool_head *p = pool_create("security", size, 0);
    if (!p)
        _exit(SETUP_FAILED);
    return p;
}

static char *must(struct pool_head *pool)
{
    char *p = do_alloc(pool);
    if (!p)
        _exit(SETUP_FAILED);
    sec_memset(p, 0x5a, pool_size(pool));
    return p;
}

/* ---- double frees ---- */

static void df_immediate(size_t size, int bug)
{
    struct pool_head *pool = pool_of(size);
    char *p = must(pool);
    do_free(pool, p);
    if (!bug)
        p = must(pool);
    do_free(pool, p);
}

static void df_same_size(size_t size, int bug)
{
    struct pool_head *pool = pool_of(size);
    char *p = must(pool), *o[16];
    for (int i = 0; i < 16; i++)
        o[i] = must(pool);
    do_free(pool, p);
    for (int i = 0; i < 16; i++)
        do_free(pool, o[i]);
    if (!bug)
        p = must(pool);
    do_free(pool, p);
}

static void df_other_sizes(size_t size, int bug)
{
    static const size_t other[] = { 24, 200, 3000, 100000 };
    struct pool_head *pool = pool_of(size);
    char *p = must(pool);
    do_free(pool, p);
    for (int k = 0; k < 4; k++) {
        struct pool_head *q = pool_of(other[k] == size ? other[k] + 16 : other[k]);
        char *o[16];
        for (int i = 0; i < 16; i++)
            o[i] = must(q);
        for (int i = 0; i < 16; i++)
            do_free(q, o[i]);
    }
    if (!bug)
        p = must(pool);
    do_free(pool, p);
}

static struct pool_head *thread_pool;

static void *free_arg(void *p)
{
    do_free(thread_pool, p);
    return NULL;
}

static void df_thread(size_t size, int bug)
{
    struct pool_head *pool = thread_pool = pool_of(size);
    char *p = must(pool);
    do_free(pool, p);
    if (!bug)
        p = must(pool);
    pthread_t t;
    if (pthread_create(&t, NULL, free_arg, p) != 0 || pthread_join(t, NULL) != 0)
        _exit(SETUP_FAILED);
}

static void df_after_reuse(size_t size, int bug)
{
    struct pool_head *pool = pool_of(size);
    char *p = must(pool);
    do_free(pool, p);
    char *q = must(pool);
    if (!bug)
        p = must(pool);
    do_free(pool, p);
    do_free(pool, q);
}

/* ---- invalid frees ---- */

/* A free and an alloc: the pool's thread-cache entry is open, so that the
 * next pool_free takes the hit path, as in a program that runs. */
static char *warm_must(struct pool_head *pool)
{
    do_free(pool, must(pool));
    return must(pool);
}

static _Alignas(64) char global_buf[256 * 1024 + 64];

static void invalid_stack(size_t size, int bug)
{
    _Alignas(64) char buf[size + 64];
    sec_memset(buf, 0, size + 64);
    struct pool_head *pool = pool_of(size);
    char *p = warm_must(pool);
    do_free(pool, bug ? buf + 16 : p);
}

static void invalid_global(size_t size, int bug)
{
    sec_memset(global_buf, 0, size + 64);
    struct pool_head *pool = pool_of(size);
    char *p = warm_must(pool);
    do_free(pool, bug ? global_buf + 16 : p);
}

/* Eight objects past the newest one: in its span, never handed out. */
static void invalid_forged(size_t size, int bug)
{
    struct pool_head *pool = pool_of(size);
    char *p = warm_must(pool), *q = must(pool);
    do_free(pool, bug ? q + 8 * pool_size(pool) : p);
}

/* The freed pointer, off bytes into the newest object, goes to pool_free
 * on its cache-hit path (a free and an alloc first open the thread
 * cache's grant), then two objects are taken and given back. */
#define PAST_END SIZE_MAX
static void interior(size_t size, int bug, size_t off)
{
    struct pool_head *pool = pool_of(size);
    char *warm = must(pool);
    do_free(pool, warm);
    char *p = must(pool);
    if (off == PAST_END)
        off = pool_size(pool);
    do_free(pool, bug ? p + off : p);
    char *x = must(pool), *y = must(pool);
    do_free(pool, x);
    do_free(pool, y);
}
static void interior_16(size_t size, int bug) { interior(size, bug, 16); }
static void interior_half(size_t size, int bug) { interior(size, bug, size / 2); }
static void past_end(size_t size, int bug) { interior(size, bug, PAST_END); }

/* ---- overflows and underflows: as in malloc_suite.c, neighbours of the
 * same pool ---- */

static void overrun(size_t size, int bug, size_t len, int under, int then_alloc)
{
    struct pool_head *pool = pool_of(size);
    char *a = must(pool), *p = must(pool), *b = must(pool), *keep = must(pool);
    do_free(pool, a);
    do_free(pool, b);
    if (bug)
        sec_memset(under ? p - len : p + size, 0x41, len);
    else
        sec_memset(p, 0x41, len < size ? len : size);
    if (then_alloc) {
        char *x = must(pool), *y = must(pool);
        do_free(pool, x);
        do_free(pool, y);
    }
    do_free(pool, p);
    do_free(pool, keep);
    char *z = must(pool);
    do_free(pool, z);
}
#define OVERRUN(name, len, under, then_alloc)                                    \
    static void name(size_t size, int bug) { overrun(size, bug, len, under, then_alloc); }
OVERRUN(overflow_1_free, 1, 0, 0)
OVERRUN(overflow_1_malloc, 1, 0, 1)
OVERRUN(overflow_32_free, 32, 0, 0)
OVERRUN(overflow_32_malloc, 32, 0, 1)
OVERRUN(overflow_1m_free, MIB, 0, 0)
OVERRUN(overflow_1m_malloc, MIB, 0, 1)
OVERRUN(underflow_1_free, 1, 1, 0)
OVERRUN(underflow_1_malloc, 1, 1, 1)
OVERRUN(underflow_32_free, 32, 1, 0)
OVERRUN(underflow_32_malloc, 32, 1, 1)
OVERRUN(underflow_1m_free, MIB, 1, 0)
OVERRUN(underflow_1m_malloc, MIB, 1, 1)

/* ---- writes after free ---- */

static void write_after_free(size_t size, int bug, int whole)
{
    struct pool_head *pool = pool_of(size);
    char *p = must(pool), *q = must(pool), *keep = must(pool);
    do_free(pool, q);
    do_free(pool, p);
    if (bug)
        sec_memset(p, 0x41, whole ? size : (size < 16 ? size : 16));
    char *x = must(pool), *y = must(pool);
    do_free(pool, x);
    do_free(pool, y);
    do_free(pool, keep);
}
static void waf_links(size_t size, int bug) { write_after_free(size, bug, 0); }
static void waf_whole(size_t size, int bug) { write_after_free(size, bug, 1); }

/* ---- zeroing and sizes ---- */

/* pool_zalloc after a dirty object was freed: HANDLED when it is zero. */
static void zalloc_zeroed(size_t size, int bug)
{
    struct pool_head *pool = pool_of(size);
    if (bug) {
        char *d = must(pool);
        sec_memset(d, 0xa5, size);
        do_free(pool, d);
    }
    unsigned char *p = do_zalloc(pool);
    if (!p)
        _exit(SETUP_FAILED);
    for (size_t i = 0; i < size; i++)
        if (p[i] != 0)
            _exit(0);
    _exit(HANDLED);
}

/* pool_create of SIZE_MAX - size + 1 bytes must fail. */
static void create_huge(size_t size, int bug)
{
    struct pool_head *pool = pool_create("huge", bug ? SIZE_MAX - size + 1 : size, 0);
    if (bug) {
        if (!pool)
            _exit(HANDLED);
        _exit(0);
    }
    if (!pool)
        _exit(SETUP_FAILED);
}

static const struct sec_case cases[] = {
    { "double-free-immediate", df_immediate, 0 },
    { "double-free-same-size", df_same_size, 0 },
    { "double-free-other-sizes", df_other_sizes, 0 },
    { "double-free-other-thread", df_thread, 0 },
    { "double-free-after-reuse", df_after_reuse, 0 },
    { "invalid-free-stack", invalid_stack, 0 },
    { "invalid-free-global", invalid_global, 0 },
    { "invalid-free-forged", invalid_forged, 0 },
    { "interior-free-16", interior_16, 0 },
    { "interior-free-half", interior_half, 0 },
    { "free-past-end", past_end, 0 },
    { "overflow-1-free", overflow_1_free, 0 },
    { "overflow-1-malloc", overflow_1_malloc, 0 },
    { "overflow-32-free", overflow_32_free, 0 },
    { "overflow-32-malloc", overflow_32_malloc, 0 },
    { "overflow-1M-free", overflow_1m_free, 0 },
    { "overflow-1M-malloc", overflow_1m_malloc, 0 },
    { "underflow-1-free", underflow_1_free, 0 },
    { "underflow-1-malloc", underflow_1_malloc, 0 },
    { "underflow-32-free", underflow_32_free, 0 },
    { "underflow-32-malloc", underflow_32_malloc, 0 },
    { "underflow-1M-free", underflow_1m_free, 0 },
    { "underflow-1M-malloc", underflow_1m_malloc, 0 },
    { "write-after-free-links", waf_links, 0 },
    { "write-after-free-whole", waf_whole, 0 },
    { "calloc-zeroed", zalloc_zeroed, 0 },
    { "malloc-huge", create_huge, 0 },
};

int main(int argc, char **argv)
{
    return sec_main(cases, sizeof cases / sizeof *cases, argc, argv);
}
