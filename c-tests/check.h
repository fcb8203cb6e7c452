/*
 * check.h: a minimal test harness for the libpools C tests.
 *
 *   CHECK(cond)        counts a pass, or prints "file:line: CHECK failed: cond"
 *   CHECK_EQ(a, b)     same, printing both values (as unsigned long long)
 *   CHECK_ERRNO(e)     CHECK_EQ(errno, e) with errno's name in the message
 *   check_done()       prints "N passed, N failed" and returns the exit status
 *                      (0 only when nothing failed and something passed)
 *   under_memcheck()   whether valgrind's memcheck runs the program: every
 *                      pool then takes the debugging path, each object a
 *                      block with a prefix for the cache links (README,
 *                      "valgrind and AddressSanitizer"), so tests of where
 *                      objects lie check less
 *
 * Counting is thread-safe (atomic builtins), so checks may run in threads.
 * Each test program is one translation unit, hence the static counters.
 */
#ifndef LIBPOOLS_C_TESTS_CHECK_H
#define LIBPOOLS_C_TESTS_CHECK_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline int under_memcheck(void)
{
    const char *pre = getenv("LD_PRELOAD");
    return pre != NULL && strstr(pre, "vgpreload_memcheck") != NULL;
}

static unsigned long check_passed_;
static unsigned long check_failed_;

static inline int check_record_(int ok, const char *file, int line, const char *expr)
{
    if (ok) {
        __atomic_fetch_add(&check_passed_, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&check_failed_, 1, __ATOMIC_RELAXED);
        fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, expr);
        fflush(stderr);
    }
    return ok;
}

static inline int check_record_eq_(unsigned long long got, unsigned long long want,
                                   const char *file, int line, const char *a, const char *b)
{
    int ok = got == want;
    if (ok) {
        __atomic_fetch_add(&check_passed_, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&check_failed_, 1, __ATOMIC_RELAXED);
        fprintf(stderr, "%s:%d: CHECK failed: %s == %s (got %llu, expected %llu)\n",
                file, line, a, b, got, want);
        fflush(stderr);
    }
    return ok;
}

#define CHECK(cond) check_record_(!!(cond), __FILE__, __LINE__, #cond)

#define CHECK_EQ(a, b)                                                         \
    check_record_eq_((unsigned long long)(a), (unsigned long long)(b),        \
                     __FILE__, __LINE__, #a, #b)

#define CHECK_ERRNO(e)                                                         \
    do {                                                                       \
        int check_errno_ = errno;                                              \
        if (check_errno_ == (e)) {                                             \
            check_record_(1, __FILE__, __LINE__, "errno == " #e);              \
        } else {                                                               \
            char check_msg_[128];                                              \
            snprintf(check_msg_, sizeof check_msg_, "errno == " #e " (got %d: %s)", \
                     check_errno_, strerror(check_errno_));                    \
            check_record_(0, __FILE__, __LINE__, check_msg_);                  \
        }                                                                      \
    } while (0)

static inline unsigned long check_failures(void)
{
    return __atomic_load_n(&check_failed_, __ATOMIC_RELAXED);
}

static inline int check_done(void)
{
    unsigned long passed = __atomic_load_n(&check_passed_, __ATOMIC_RELAXED);
    unsigned long failed = __atomic_load_n(&check_failed_, __ATOMIC_RELAXED);
    printf("%lu passed, %lu failed\n", passed, failed);
    fflush(stdout);
    return (failed == 0 && passed > 0) ? 0 : 1;
}

/*
 * With pools.h included first: CHECK_COUNTS(pool, allocated, used, cached,
 * shared) checks the four object counters of a pool one by one, so that a
 * failure names the counter that is off.
 */
#ifdef LIBPOOLS_POOLS_H
static inline struct pool_stats check_stats_of_(struct pool_head *pool, const char *file, int line)
{
    struct pool_stats s;
    memset(&s, 0, sizeof s);
    if (pool_get_stats(pool, &s) != 0) {
        check_record_(0, file, line, "pool_get_stats(pool, &s) == 0");
        memset(&s, 0xff, sizeof s);
        s.name = "";
    }
    return s;
}
#define STATS(pool) check_stats_of_((pool), __FILE__, __LINE__)
#define CHECK_COUNTS(pool, a, u, c, s)                                         \
    do {                                                                       \
        struct pool_stats cs_ = STATS(pool);                                   \
        check_record_eq_(cs_.allocated, (unsigned long long)(a), __FILE__,    \
                         __LINE__, "stats(" #pool ").allocated", #a);          \
        check_record_eq_(cs_.used, (unsigned long long)(u), __FILE__,         \
                         __LINE__, "stats(" #pool ").used", #u);               \
        check_record_eq_(cs_.cached, (unsigned long long)(c), __FILE__,       \
                         __LINE__, "stats(" #pool ").cached", #c);             \
        check_record_eq_(cs_.shared, (unsigned long long)(s), __FILE__,       \
                         __LINE__, "stats(" #pool ").shared", #s);             \
    } while (0)
#endif

/* Whether a memory checker runs the test: ASan (built in) or valgrind's
 * memcheck (it preloads vgpreload_memcheck). The library then sends every
 * pool down the debugging path (README, "valgrind and AddressSanitizer"),
 * and the checker's own bookkeeping is resident beside the pools' memory. */
static inline int under_memory_checker(void)
{
#ifdef __SANITIZE_ADDRESS__
    return 1;
#else
    const char *preload = getenv("LD_PRELOAD");
    return preload && strstr(preload, "vgpreload_memcheck") != NULL;
#endif
}

#endif /* LIBPOOLS_C_TESTS_CHECK_H */
