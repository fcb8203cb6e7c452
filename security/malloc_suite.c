/*
 * malloc_suite: the security suite against whatever malloc the process has
 * (glibc's, or one preloaded: libpools_malloc.so, jemalloc, mimalloc).
 * See security/README.md for the kinds of bug and harness.h for how a case
 * is judged. Every call to the allocator goes through a volatile function
 * pointer, so the compiler can neither see nor delete the misuse.
 */
#include "harness.h"

#include <pthread.h>

static void *(*volatile do_malloc)(size_t) = malloc;
static void *(*volatile do_calloc)(size_t, size_t) = calloc;
static void *(*volatile do_realloc)(void *, size_t) = realloc;
static void (*volatile do_free)(void *) = free;

static char *must(size_t size)
{
    char *p = do_malloc(size);
    if (!p)
        _exit(SETUP_FAILED);
    sec_memset(p, 0x5a, size);
    return p;
}

/* A slot of `size` as most allocators round it: 16 bytes at least. */
static size_t slot(size_t size) { return size < 16 ? 16 : (size + 15) & ~(size_t)15; }

/* ---- double frees ---- */

static void df_immediate(size_t size, int bug)
{
    char *p = must(size);
    do_free(p);
    if (!bug)
        p = must(size);
    do_free(p);
}

/* free(p), then 16 other blocks of the size freed, then free(p). */
static void df_same_size(size_t size, int bug)
{
    char *p = must(size), *o[16];
    for (int i = 0; i < 16; i++)
        o[i] = must(size);
    do_free(p);
    for (int i = 0; i < 16; i++)
        do_free(o[i]);
    if (!bug)
        p = must(size);
    do_free(p);
}

/* free(p), then 16 blocks of each of four other sizes freed, then free(p). */
static void df_other_sizes(size_t size, int bug)
{
    static const size_t other[] = { 24, 200, 3000, 100000 };
    char *p = must(size);
    do_free(p);
    for (int k = 0; k < 4; k++) {
        char *o[16];
        for (int i = 0; i < 16; i++)
            o[i] = must(other[k] == size ? other[k] + 16 : other[k]);
        for (int i = 0; i < 16; i++)
            do_free(o[i]);
    }
    if (!bug)
        p = must(size);
    do_free(p);
}

static void *free_arg(void *p)
{
    do_free(p);
    return NULL;
}

/* free(p) in this thread, free(p) again in another. */
static void df_thread(size_t size, int bug)
{
    char *p = must(size);
    do_free(p);
    if (!bug)
        p = must(size);
    pthread_t t;
    if (pthread_create(&t, NULL, free_arg, p) != 0 || pthread_join(t, NULL) != 0)
        _exit(SETUP_FAILED);
}

/* realloc(p, 0) (which frees p in glibc and the preloads here), then free(p).
 * Where realloc(p, 0) returns a block instead, that block is freed first
 * and the case is a double free all the same. */
static void df_realloc0(size_t size, int bug)
{
    char *p = must(size);
    char *q = do_realloc(p, 0);
    do_free(q);
    if (!bug)
        p = must(size);
    do_free(p);
}

/* free(p); q = malloc(size) (often p again, the new owner's); free(p);
 * free(q). Whichever of the last two frees is the second of a block, it is
 * a double free. */
static void df_after_reuse(size_t size, int bug)
{
    char *p = must(size);
    do_free(p);
    char *q = must(size);
    if (!bug)
        p = must(size);
    do_free(p);
    do_free(q);
}

/* free(p), then realloc(p, 2 * size). */
static void realloc_after_free(size_t size, int bug)
{
    char *p = must(size);
    do_free(p);
    if (!bug)
        p = must(size);
    char *q = do_realloc(p, 2 * size);
    if (q)
        sec_memset(q, 0x5b, 2 * size);
    do_free(q);
}

/* ---- invalid frees: pointers never allocated ---- */

static _Alignas(64) char global_buf[256 * 1024 + 64];

static void invalid_stack(size_t size, int bug)
{
    _Alignas(64) char buf[size + 64];
    sec_memset(buf, 0, size + 64);
    char *p = must(size);
    do_free(bug ? buf + 16 : p);
}

static void invalid_global(size_t size, int bug)
{
    sec_memset(global_buf, 0, size + 64);
    char *p = must(size);
    do_free(bug ? global_buf + 16 : p);
}

/* A 16-aligned address in the heap that no malloc returned: eight slots
 * past the newest block (for small sizes, in the same slab or heap; for
 * 256 KiB, 2 MiB on, wherever that is). */
static void invalid_forged(size_t size, int bug)
{
    char *p = must(size), *q = must(size);
    do_free(bug ? q + 8 * slot(size) : p);
}

/* ---- interior and past-the-end frees ---- */

static void interior(size_t size, int bug, size_t off)
{
    char *p = must(size);
    do_free(bug ? p + off : p);
}
static void interior_16(size_t size, int bug) { interior(size, bug, 16); }
static void interior_half(size_t size, int bug) { interior(size, bug, size / 2); }
static void past_end(size_t size, int bug) { interior(size, bug, size); }

/* realloc of a pointer inside a block. */
static void realloc_interior(size_t size, int bug)
{
    char *p = must(size);
    char *q = do_realloc(bug ? p + 16 : p, 2 * size);
    if (q)
        sec_memset(q, 0x5b, 2 * size);
    do_free(q);
}

/* ---- overflows and underflows ---- */

/* p between two neighbours of its size, one freed on each side (so that an
 * allocator's metadata, if it keeps any there, is in reach); then `len`
 * bytes written from p's end (or, `under`, ending at p's start); then
 * either p freed (`then_malloc` 0), or blocks of the size allocated and
 * freed first (1). The twin writes `len` bytes only where p owns them (at
 * most its size). */
static void overrun(size_t size, int bug, size_t len, int under, int then_malloc)
{
    char *a = must(size), *p = must(size), *b = must(size), *keep = must(size);
    do_free(a);
    do_free(b);
    if (bug)
        sec_memset(under ? p - len : p + size, 0x41, len);
    else
        sec_memset(p, 0x41, len < size ? len : size);
    if (then_malloc) {
        char *x = must(size), *y = must(size);
        do_free(x);
        do_free(y);
    }
    do_free(p);
    do_free(keep);
    char *z = must(size);
    do_free(z);
}
#define OVERRUN(name, len, under, then_malloc)                                   \
    static void name(size_t size, int bug) { overrun(size, bug, len, under, then_malloc); }
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

/* free(q), free(p), a write into p (its first 16 bytes, where free lists
 * keep their links, or all of it), then two blocks of the size allocated
 * (often p, then what p's link says) and freed. */
static void write_after_free(size_t size, int bug, int whole)
{
    char *p = must(size), *q = must(size);
    char *keep = must(size);
    do_free(q);
    do_free(p);
    if (bug)
        sec_memset(p, 0x41, whole ? size : (size < 16 ? size : 16));
    char *x = must(size), *y = must(size);
    do_free(x);
    do_free(y);
    do_free(keep);
}
static void waf_links(size_t size, int bug) { write_after_free(size, bug, 0); }
static void waf_whole(size_t size, int bug) { write_after_free(size, bug, 1); }

/* ---- sizes ---- */

/* malloc(0), then a write of 1 byte into it (the twin: malloc(1)), free. */
static void zero_size_write(size_t size, int bug)
{
    (void)size;
    char *p = do_malloc(bug ? 0 : 1);
    if (!p)
        _exit(HANDLED); /* malloc(0) may return NULL: nothing to write into */
    sec_memset(p, 0x41, 1);
    do_free(p);
    char *q = must(16);
    do_free(q);
}

/* calloc of a block of the size after a dirty block of the size was
 * freed: HANDLED when every byte is zero (the twin: a first calloc). */
static void calloc_zeroed(size_t size, int bug)
{
    if (bug) {
        char *d = must(size);
        sec_memset(d, 0xa5, size);
        do_free(d);
    }
    unsigned char *p = do_calloc(1, size);
    if (!p)
        _exit(SETUP_FAILED);
    for (size_t i = 0; i < size; i++)
        if (p[i] != 0)
            _exit(0);
    _exit(HANDLED);
}

/* calloc(n, size) with n * size past SIZE_MAX must return NULL (the twin:
 * calloc(2, size)). */
static void calloc_overflow(size_t size, int bug)
{
    size_t n = bug ? SIZE_MAX / size + 2 : 2;
    unsigned char *p = do_calloc(n, size);
    if (bug) {
        if (!p)
            _exit(HANDLED);
        sec_memset(p, 0x41, 4 * size); /* what a program would do with it */
        _exit(0);
    }
    if (!p)
        _exit(SETUP_FAILED);
    do_free(p);
}

/* malloc(SIZE_MAX - size + 1) must return NULL. */
static void malloc_huge(size_t size, int bug)
{
    char *p = do_malloc(bug ? SIZE_MAX - size + 1 : size);
    if (bug) {
        if (!p)
            _exit(HANDLED);
        _exit(0);
    }
    if (!p)
        _exit(SETUP_FAILED);
    do_free(p);
}

static const struct sec_case cases[] = {
    { "double-free-immediate", df_immediate, 0 },
    { "double-free-same-size", df_same_size, 0 },
    { "double-free-other-sizes", df_other_sizes, 0 },
    { "double-free-other-thread", df_thread, 0 },
    { "double-free-realloc0", df_realloc0, 0 },
    { "double-free-after-reuse", df_after_reuse, 0 },
    { "realloc-after-free", realloc_after_free, 0 },
    { "invalid-free-stack", invalid_stack, 0 },
    { "invalid-free-global", invalid_global, 0 },
    { "invalid-free-forged", invalid_forged, 0 },
    { "interior-free-16", interior_16, 0 },
    { "interior-free-half", interior_half, 0 },
    { "free-past-end", past_end, 0 },
    { "realloc-interior", realloc_interior, 0 },
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
    { "zero-size-write", zero_size_write, 1 },
    { "calloc-zeroed", calloc_zeroed, 0 },
    { "calloc-overflow", calloc_overflow, 0 },
    { "malloc-huge", malloc_huge, 0 },
};

int main(int argc, char **argv)
{
    return sec_main(cases, sizeof cases / sizeof *cases, argc, argv);
}
