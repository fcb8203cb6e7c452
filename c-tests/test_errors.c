/*
 * test_errors: every bad input of the API and its errno, destroyed handles,
 * and ENOMEM (with the `failed` counter) in a fork()ed child whose address
 * space is capped with RLIMIT_AS.
 */
#include <pools.h>
#include "check.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_create_errors(void)
{
    errno = 0;
    CHECK(pool_create(NULL, 64, 0) == NULL);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK(pool_create(NULL, 64, POOL_F_SHARED) == NULL);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK(pool_create("zero", 0, 0) == NULL);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK(pool_create("zero_exact", 0, POOL_F_EXACT) == NULL);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK(pool_create("too_big", (size_t)POOL_MAX_SIZE + 1, 0) == NULL);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK(pool_create("too_big_exact", (size_t)POOL_MAX_SIZE + 1, POOL_F_EXACT) == NULL);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK(pool_create("way_too_big", SIZE_MAX, 0) == NULL);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK(pool_create("way_too_big2", SIZE_MAX - 7, POOL_F_SHARED) == NULL);
    CHECK_ERRNO(EINVAL);

    static const unsigned int bad_flags[] = {4, 8, 1 | 4, 2 | 16, 3 | 0x100, 0x80000000u, ~0u};
    for (size_t i = 0; i < sizeof bad_flags / sizeof bad_flags[0]; i++) {
        errno = 0;
        struct pool_head *p = pool_create("bad_flags", 64, bad_flags[i]);
        if (!CHECK(p == NULL))
            fprintf(stderr, "  flags 0x%x accepted\n", bad_flags[i]);
        CHECK_ERRNO(EINVAL);
    }

    /* the largest size is accepted (creating a pool allocates no object) */
    struct pool_head *max = pool_create("max_size", POOL_MAX_SIZE, 0);
    CHECK(max != NULL);
    if (max) {
        CHECK_EQ(STATS(max).size, POOL_MAX_SIZE);
        CHECK(pool_destroy(max) == NULL);
    }
    /* and the smallest, with every valid flag combination */
    for (unsigned int f = 0; f <= 3; f++) {
        struct pool_head *p = pool_create("one_byte", 1, f);
        CHECK(p != NULL);
        if (p) {
            CHECK_EQ(STATS(p).size, (f & POOL_F_EXACT) ? 1 : 16);
            CHECK(pool_destroy(p) == NULL);
        }
    }
}

/* Every call that takes a pool refuses `p` (NULL or destroyed) with EINVAL. */
static void check_refused_handle(struct pool_head *p)
{
    struct pool_stats s;

    errno = 0;
    CHECK(pool_alloc(p) == NULL);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK(pool_zalloc(p) == NULL);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK_EQ(pool_get_stats(p, &s), -1);
    CHECK_ERRNO(EINVAL);

    errno = 0;
    CHECK_EQ(pool_set_minavail(p, 1), -1);
    CHECK_ERRNO(EINVAL);
}

static void test_null_pool_args(void)
{
    check_refused_handle(NULL);

    CHECK(pool_destroy(NULL) == NULL);
    pool_flush(NULL); /* does nothing */
    pool_gc(NULL);

    struct pool_head *p = pool_create("null_args", 64, 0);
    CHECK(p != NULL);

    errno = 0;
    CHECK_EQ(pool_get_stats(p, NULL), -1);
    CHECK_ERRNO(EINVAL);

    void *o = pool_alloc(p);
    CHECK(o != NULL);
    memset(o, 0x11, 64);
    CHECK_COUNTS(p, 1, 1, 0, 0);

    /* pool_free(pool, NULL) does nothing */
    errno = 0;
    pool_free(p, NULL);
    CHECK_ERRNO(0);
    CHECK_COUNTS(p, 1, 1, 0, 0);

    /* pool_free(NULL, obj) sets EINVAL and leaves the object to the caller */
    errno = 0;
    pool_free(NULL, o);
    CHECK_ERRNO(EINVAL);
    CHECK_COUNTS(p, 1, 1, 0, 0);
    /* still the caller's: not handed out again */
    void *o2 = pool_alloc(p);
    CHECK(o2 != NULL && o2 != o);
    CHECK_COUNTS(p, 2, 2, 0, 0);

    /* a pointer that is not 16-aligned is refused the same way */
    errno = 0;
    pool_free(p, (char *)o + 1);
    CHECK_ERRNO(EINVAL);
    CHECK_COUNTS(p, 2, 2, 0, 0);

    pool_free(p, o2);
    pool_free(p, o);
    CHECK_COUNTS(p, 2, 0, 2, 0);

    /* pool_flush(NULL) does nothing, even to the shared cache */
    pool_evict_local_cache();
    CHECK_COUNTS(p, 2, 0, 0, 2);
    pool_flush(NULL);
    CHECK_COUNTS(p, 2, 0, 0, 2);

    /* minavail on a good pool */
    CHECK_EQ(pool_set_minavail(p, 7), 0);
    CHECK_EQ(STATS(p).minavail, 7);

    CHECK(pool_destroy(p) == NULL);
}

static void test_destroyed_handle(void)
{
    struct pool_head *p = pool_create("to_destroy", 128, 0);
    CHECK(p != NULL);
    void *o = pool_alloc(p);
    CHECK(o != NULL);

    /* in use: nothing changes */
    errno = 0;
    CHECK(pool_destroy(p) == p);
    struct pool_stats s = STATS(p);
    CHECK_EQ(s.users, 1);
    CHECK_EQ(s.used, 1);
    CHECK_EQ(s.allocated, 1);

    pool_free(p, o);
    CHECK(pool_destroy(p) == NULL);

    /* no pool_create between here and the end of this function, so the
     * destroyed head cannot have been reused */
    errno = 0;
    CHECK(pool_destroy(p) == NULL);
    CHECK_ERRNO(EINVAL);

    check_refused_handle(p);

    /* freeing into a dead pool: EINVAL, the memory stays the caller's */
    void *mine = aligned_alloc(16, 128);
    CHECK(mine != NULL);
    errno = 0;
    pool_free(p, mine);
    CHECK_ERRNO(EINVAL);
    free(mine);

    pool_flush(p); /* must not crash: ignored for a dead pool */

    /* a third destroy is the same as the second */
    errno = 0;
    CHECK(pool_destroy(p) == NULL);
    CHECK_ERRNO(EINVAL);
}

static void test_shared_cache_knob(void)
{
    /* Pools exist already (above), so a bad name may be refused for either
     * reason; test_no_shared checks EINVAL before any pool exists. */
    errno = 0;
    CHECK_EQ(pool_set_shared_cache("bogus"), -1);
    CHECK(errno == EINVAL || errno == EBUSY);

    errno = 0;
    CHECK_EQ(pool_set_shared_cache(NULL), -1);
    CHECK(errno == EINVAL || errno == EBUSY);

    struct pool_head *p = pool_create("knob", 64, 0);
    CHECK(p != NULL);
    errno = 0;
    CHECK_EQ(pool_set_shared_cache("xchg"), -1);
    CHECK_ERRNO(EBUSY);
    errno = 0;
    CHECK_EQ(pool_set_shared_cache("none"), -1);
    CHECK_ERRNO(EBUSY);
    CHECK(pool_destroy(p) == NULL);
    /* still busy once every pool is gone: "once any pool exists" is for life */
    errno = 0;
    CHECK_EQ(pool_set_shared_cache("none"), -1);
    CHECK_ERRNO(EBUSY);
}

/* At most 4096 pools live at once: the next create fails with ENOMEM, a
 * merge into a live shareable pool still works (it needs no new pool), and
 * a destroy makes room again. No pool is alive when this runs. */
static void test_pool_slots(void)
{
    enum { LIMIT = 4096, TRY = LIMIT + 10 };
    static struct pool_head *p[TRY];
    int created = 0, err = 0;
    for (int i = 0; i < TRY; i++) {
        char name[32];
        snprintf(name, sizeof name, "slot_%d", i);
        errno = 0;
        /* the first one is shareable (size 32); all others private */
        p[i] = pool_create(name, 32, i == 0 ? POOL_F_SHARED : 0);
        if (!p[i]) {
            err = errno;
            break;
        }
        created++;
    }
    CHECK_EQ(created, LIMIT);
    CHECK_EQ(err, ENOMEM);

    errno = 0;
    CHECK(pool_create("slot_private", 64, 0) == NULL);
    CHECK_ERRNO(ENOMEM);
    errno = 0;
    CHECK(pool_create("slot_shared64", 64, POOL_F_SHARED) == NULL);
    CHECK_ERRNO(ENOMEM);
    struct pool_head *merged = pool_create("slot_merge", 20, POOL_F_SHARED); /* 32 */
    CHECK(merged != NULL && merged == p[0]);
    CHECK_EQ(STATS(p[0]).users, 2);
    CHECK(pool_destroy(merged) == NULL);

    int bad_destroy = 0;
    for (int i = 0; i < created; i++)
        bad_destroy += pool_destroy(p[i]) != NULL;
    CHECK_EQ(bad_destroy, 0);

    struct pool_head *a = pool_create("slot_again", 32, 0);
    CHECK(a != NULL);
    struct pool_head *b = pool_create("slot_again_shared", 48, POOL_F_SHARED);
    struct pool_head *c = pool_create("slot_again_shared_b", 48, POOL_F_SHARED);
    CHECK(b != NULL && c == b);
    if (a) {
        void *o = pool_alloc(a);
        CHECK(o != NULL);
        pool_free(a, o);
        CHECK(pool_destroy(a) == NULL);
    }
    CHECK(pool_destroy(b) == NULL);
    CHECK(pool_destroy(c) == NULL);
}

/* Program size in bytes, from /proc/self/statm (first field, in pages). */
static unsigned long long vm_size_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long pages = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%llu", &pages) != 1)
        pages = 0;
    fclose(f);
    return pages * (unsigned long long)sysconf(_SC_PAGESIZE);
}

#define BIG (64u << 20)

/* Runs in the child: its own check counters, result through the exit status. */
static int enomem_child(void)
{
    struct pool_head *p = pool_create("enomem_64M", BIG, 0);
    CHECK(p != NULL);
    if (!p)
        return 1;

    /* No object of this pool is allocated before the cap: an allocator such
     * as jemalloc keeps a freed 64 MiB extent mapped and would reuse it. The
     * pool is shown to work once the cap is lifted, below. */
    CHECK_COUNTS(p, 0, 0, 0, 0);

    unsigned long long cur = vm_size_bytes();
    CHECK(cur > 0);
    struct rlimit old, lim;
    CHECK(getrlimit(RLIMIT_AS, &old) == 0);
    lim = old;
    lim.rlim_cur = (rlim_t)(cur + (16u << 20)); /* 16 MiB of room: not 64 */
    CHECK(setrlimit(RLIMIT_AS, &lim) == 0);

    errno = 0;
    void *o = pool_alloc(p);
    int saved = errno;
    CHECK(o == NULL);
    errno = saved;
    CHECK_ERRNO(ENOMEM);
    struct pool_stats s = STATS(p);
    CHECK_EQ(s.failed, 1);
    CHECK_EQ(s.used, 0);
    CHECK_EQ(s.allocated, 0);

    errno = 0;
    o = pool_zalloc(p);
    saved = errno;
    CHECK(o == NULL);
    errno = saved;
    CHECK_ERRNO(ENOMEM);
    s = STATS(p);
    CHECK_EQ(s.failed, 2);
    CHECK_EQ(s.used, 0);
    CHECK_EQ(s.allocated, 0);

    /* small pools keep working under the cap */
    struct pool_head *small = pool_create("enomem_small", 32, 0);
    CHECK(small != NULL);
    void *so = pool_alloc(small);
    CHECK(so != NULL);
    pool_free(small, so);

    /* with the cap lifted, the big pool serves again */
    CHECK(setrlimit(RLIMIT_AS, &old) == 0);
    o = pool_alloc(p);
    CHECK(o != NULL);
    if (o) {
        ((char *)o)[0] = 1;
        ((char *)o)[BIG - 1] = 2;
    }
    s = STATS(p);
    CHECK_EQ(s.failed, 2);
    CHECK_EQ(s.used, 1);
    CHECK_EQ(s.allocated, 1);
    pool_free(p, o);
    return check_failures() == 0 ? 0 : 1;
}

/*
 * Runs in the child: pool_alloc's internal pool_gc and retry. 80 MiB of idle
 * 8 MiB objects sit in another pool's shared cache; under a cap that leaves
 * 16 MiB of room, malloc(64 MiB) fails until that gc gives them back.
 * Only meaningful where free() of a large block unmaps it at once (glibc's
 * and musl's malloc; not jemalloc, which keeps the address space, nor
 * valgrind, which holds freed blocks back), so the parent runs it only
 * without LD_PRELOAD.
 */
static int gc_retry_child(void)
{
    enum { NFILL = 10 };
    struct pool_head *filler = pool_create("gc_filler_8M", 8u << 20, 0);
    struct pool_head *big = pool_create("gc_retry_64M", BIG, 0);
    CHECK(filler != NULL && big != NULL);
    if (!filler || !big)
        return 1;
    void *f[NFILL];
    for (int i = 0; i < NFILL; i++) {
        f[i] = pool_alloc(filler);
        CHECK(f[i] != NULL);
        if (f[i])
            memset(f[i], 1, 4096);
    }
    for (int i = 0; i < NFILL; i++)
        pool_free(filler, f[i]); /* 8 MiB > 64 KiB: straight to the shared cache */
    CHECK_COUNTS(filler, NFILL, 0, 0, NFILL);

    unsigned long long cur = vm_size_bytes();
    struct rlimit old, lim;
    CHECK(getrlimit(RLIMIT_AS, &old) == 0);
    lim = old;
    lim.rlim_cur = (rlim_t)(cur + (16u << 20));
    CHECK(setrlimit(RLIMIT_AS, &lim) == 0);

    errno = 0;
    unsigned char *o = pool_alloc(big);
    int saved = errno;
    if (!CHECK(o != NULL))
        fprintf(stderr, "  pool_alloc after internal gc: NULL, errno %d\n", saved);
    if (o) {
        o[0] = 1;
        o[BIG - 1] = 2;
    }
    struct pool_stats s = STATS(big);
    CHECK_EQ(s.failed, 0);
    CHECK_EQ(s.used, o != NULL);
    CHECK_EQ(s.allocated, o != NULL);
    /* the internal gc emptied the filler's shared cache (minavail 0) */
    CHECK_COUNTS(filler, 0, 0, 0, 0);
    CHECK(setrlimit(RLIMIT_AS, &old) == 0);
    pool_free(big, o);
    return check_failures() == 0 ? 0 : 1;
}

static void run_child(int (*fn)(void), const char *what)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int rc = fn();
        fflush(stderr);
        _exit(rc);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fprintf(stderr, "  %s child: status 0x%x (its failed checks are printed above)\n",
                what, status);
}

static void test_enomem(void)
{
    run_child(enomem_child, "ENOMEM");
    const char *preload = getenv("LD_PRELOAD");
    if (preload == NULL || *preload == 0)
        run_child(gc_retry_child, "gc-and-retry");
    else
        fprintf(stderr, "note: LD_PRELOAD set: the gc-and-retry check is not run\n");
}

int main(void)
{
    test_create_errors();
    test_null_pool_args();
    test_destroyed_handle();
    test_shared_cache_knob();
    test_pool_slots();
    test_enomem();
    return check_done();
}
