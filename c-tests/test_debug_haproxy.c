/*
 * test_debug_haproxy: the debugging options as HAProxy has them, and
 * memory profiling by call site (issue 17).
 *
 *   - `uaf` alone implies no-cache,no-global: a read after pool_free
 *     faults (in a child); `uaf,cache` re-enables the thread cache.
 *   - `fail=10` fails 10 % +- 2 % of pool_alloc/pool_zalloc calls with
 *     warm caches, NULL with ENOMEM, counted in `failed`; `fail` alone is
 *     1 %; POOL_FAIL_SEED replays the same failures.
 *   - pool_set_profiling / pool_dump_profile: exact counts per call site
 *     and pool, the call site named by address (and by symbol where the
 *     dynamic loader knows it: glibc builds link with -rdynamic).
 *   - pool_dump_filtered: a name prefix, and the key=value form.
 *   - pool_gc's trim: POOL_TRIM=0 skips it (pool_trim_count); resident
 *     memory drops after pool_gc, and under a preloaded jemalloc
 *     (POOL_BACKEND=malloc) only thanks to the purge.
 *
 * Each case runs in a fork()ed child (the options are process-wide, and
 * some must be in the environment before the first pool call).
 */
#include <pools.h>
#include "check.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern void __asan_poison_memory_region(void const volatile *, size_t) __attribute__((weak));

/* Under ASan or valgrind (scripts/verify-*.sh) the tool reports the use
 * after free itself, and resident memory says nothing about the library. */
static int under_memory_tool(void)
{
    const char *pre = getenv("LD_PRELOAD");
    return __asan_poison_memory_region != NULL || (pre != NULL && strstr(pre, "vgpreload") != NULL);
}

/* In a fresh child: it counts its own checks. */
static void child_start(void)
{
    check_passed_ = check_failed_ = 0;
}

/* Runs fn() in a child after setting the environment pairs `env` (NULL
 * terminated, may be NULL); returns its wait status. */
static int in_child(int (*fn)(void), const char *const *env)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        child_start();
        for (; env != NULL && env[0] != NULL; env += 2)
            setenv(env[0], env[1], 1);
        _exit(fn());
    }
    int status = -1;
    CHECK(waitpid(pid, &status, 0) == pid);
    return status;
}

static int exited_ok(int status)
{
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int child_result(void)
{
    return check_failures() == 0 ? 0 : 1;
}

/* Reads what `dump(fd)` writes, through a temporary file (the profile may
 * not fit a pipe). Returns a static NUL-terminated buffer. */
static char dump_buf[1 << 18];
static const char *capture(void (*dump)(int fd, void *arg), void *arg)
{
    FILE *f = tmpfile();
    dump_buf[0] = 0;
    if (!CHECK(f != NULL))
        return dump_buf;
    dump(fileno(f), arg);
    rewind(f);
    size_t n = fread(dump_buf, 1, sizeof dump_buf - 1, f);
    dump_buf[n] = 0;
    fclose(f);
    return dump_buf;
}

/* ---- 1. uaf implies no-cache,no-global --------------------------------- */

static const char *uaf_opts;

static int uaf_child(void)
{
    if (pool_set_debugging(uaf_opts) != 0)
        return 99;
    struct pool_head *p = pool_create("uaf", 64, 0);
    char *(*volatile alloc)(struct pool_head *) = (char *(*)(struct pool_head *))pool_alloc;
    char *o = alloc(p);
    if (o == NULL)
        return 98;
    o[40] = 1;
    pool_free(p, o);
    volatile char *stale = o;
    return stale[40] == 1 ? 0 : 2; /* the bug: a read after pool_free */
}

static void test_uaf_alone_faults(void)
{
    uaf_opts = "uaf";
    int st = in_child(uaf_child, NULL);
    if (!CHECK(WIFSIGNALED(st) && (WTERMSIG(st) == SIGSEGV || WTERMSIG(st) == SIGBUS)))
        fprintf(stderr, "  uaf alone: status 0x%x, expected a fault\n", st);
    /* Re-enabled after it: the object stays cached, mapped, readable. */
    uaf_opts = "uaf,cache";
    st = in_child(uaf_child, NULL);
    if (!CHECK(exited_ok(st)))
        fprintf(stderr, "  uaf,cache: status 0x%x, expected no fault\n", st);
}

/* ---- 2. fail=N at the top of pool_alloc -------------------------------- */

#define FAIL_CALLS 10000

static const char *fail_opts;
static unsigned long fail_lo, fail_hi;

/* Warm caches, then FAIL_CALLS alloc/free pairs (every other one through
 * pool_zalloc); checks the rate, errno and `failed`. Prints a checksum of
 * which calls failed on stdout, for the replay test. */
static int fail_child(void)
{
    struct pool_head *p = pool_create("failing", 64, 0);
    void *warm[64];
    for (int i = 0; i < 64; i++)
        warm[i] = pool_alloc(p);
    for (int i = 0; i < 64; i++)
        pool_free(p, warm[i]);
    if (pool_set_debugging(fail_opts) != 0)
        return 99;
    unsigned long nulls = 0, sum = 0;
    for (unsigned long i = 0; i < FAIL_CALLS; i++) {
        errno = 0;
        void *o = (i & 1) ? pool_zalloc(p) : pool_alloc(p);
        if (o == NULL) {
            CHECK_ERRNO(ENOMEM);
            nulls++;
            sum = sum * 31 + i;
        } else {
            pool_free(p, o);
        }
    }
    struct pool_stats s = STATS(p);
    if (!CHECK(nulls >= fail_lo && nulls <= fail_hi))
        fprintf(stderr, "  %s: %lu NULLs of %d calls\n", fail_opts, nulls, FAIL_CALLS);
    CHECK_EQ(s.failed, nulls);
    CHECK_EQ(s.used, 0);
    /* no-fail resets: every call succeeds again. */
    CHECK(pool_set_debugging("no-fail") == 0);
    unsigned long after = 0;
    for (int i = 0; i < 1000; i++) {
        void *o = pool_alloc(p);
        if (o == NULL)
            after++;
        pool_free(p, o);
    }
    CHECK_EQ(after, 0);
    printf("failsum %lu\n", sum);
    fflush(stdout);
    return child_result();
}

static void test_fail_rate(void)
{
    fail_opts = "fail=10";
    fail_lo = 800, fail_hi = 1200;
    CHECK(exited_ok(in_child(fail_child, NULL)));
    /* The same without a thread cache. */
    fail_opts = "no-cache,fail=10";
    CHECK(exited_ok(in_child(fail_child, NULL)));
    /* `fail` alone: 1 %. */
    fail_opts = "fail";
    fail_lo = 50, fail_hi = 150;
    CHECK(exited_ok(in_child(fail_child, NULL)));
}

/* The same seed fails the same calls; another seed other calls. */
static unsigned long seeded_sum(const char *seed)
{
    int fds[2];
    if (!CHECK(pipe(fds) == 0))
        return 0;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        child_start();
        close(fds[0]);
        dup2(fds[1], 1);
        setenv("POOL_FAIL_SEED", seed, 1);
        fail_opts = "fail=10";
        fail_lo = 800, fail_hi = 1200;
        _exit(fail_child());
    }
    close(fds[1]);
    char buf[256] = { 0 };
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 && (n = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)n;
    close(fds[0]);
    int status = -1;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(exited_ok(status));
    unsigned long sum = 0;
    const char *at = strstr(buf, "failsum ");
    if (!CHECK(at != NULL && sscanf(at, "failsum %lu", &sum) == 1))
        fprintf(stderr, "  seeded child wrote: %s\n", buf);
    return sum;
}

static void test_fail_seed(void)
{
    unsigned long a = seeded_sum("42"), b = seeded_sum("42"), c = seeded_sum("43");
    CHECK(a != 0);
    CHECK_EQ(a, b);
    CHECK(a != c);
}

/* ---- 3. memory profiling ------------------------------------------------ */

#define A_CALLS 300
#define B_CALLS 200

static struct pool_head *prof_a, *prof_b;

__attribute__((noinline)) void *profiled_site_a(void)
{
    void *o = pool_alloc(prof_a);
    __asm__ volatile("" ::: "memory");
    return o;
}

__attribute__((noinline)) void *profiled_site_b(void)
{
    void *o = pool_zalloc(prof_b);
    __asm__ volatile("" ::: "memory");
    return o;
}

__attribute__((noinline)) void profiled_free_site(struct pool_head *p, void *o)
{
    pool_free(p, o);
    __asm__ volatile("" ::: "memory");
}

/* Whether the dynamic loader knows this program's functions by name
 * (linked with -rdynamic, as the Makefile's glibc builds are). */
static int symbols_known(void)
{
    Dl_info info;
    return dladdr((void *)profiled_site_a, &info) != 0 && info.dli_sname != NULL &&
           strcmp(info.dli_sname, "profiled_site_a") == 0;
}

static void dump_profile(int fd, void *arg)
{
    (void)arg;
    CHECK(pool_dump_profile(fd, 0) == 0);
}

/* The line of the profile for pool `pool` whose call site lies in the
 * function at `fn` (its first 512 bytes); its counts in `c`. */
static int find_site(const char *dump, const char *pool, void *fn, unsigned long c[4],
                     const char **line_out)
{
    char needle[64];
    snprintf(needle, sizeof needle, "pool=%s at 0x", pool);
    for (const char *l = dump; l != NULL && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        const char *at = strstr(l, needle);
        const char *eol = strchr(l, '\n');
        if (at == NULL || (eol != NULL && at > eol))
            continue;
        uintptr_t addr = (uintptr_t)strtoull(at + strlen(needle) - 2, NULL, 16);
        if (addr < (uintptr_t)fn || addr >= (uintptr_t)fn + 512)
            continue;
        if (sscanf(l, " %lu allocs %lu bytes %lu frees %lu bytes", &c[0], &c[1], &c[2], &c[3]) != 4)
            continue;
        *line_out = l;
        return 1;
    }
    return 0;
}

static int profile_child(void)
{
    /* One pool exists before profiling is switched on, one after. */
    prof_a = pool_create("prof-a", 64, 0);
    void *warm = pool_alloc(prof_a);
    pool_free(prof_a, warm);
    if (pool_set_profiling(1) != 0)
        return 99;
    prof_b = pool_create("prof-b", 256, 0);
    static void *objs[A_CALLS + B_CALLS];
    for (int i = 0; i < A_CALLS; i++)
        objs[i] = profiled_site_a();
    for (int i = 0; i < B_CALLS; i++)
        objs[A_CALLS + i] = profiled_site_b();
    for (int i = 0; i < A_CALLS; i++)
        profiled_free_site(prof_a, objs[i]);
    CHECK(pool_dump_profile(1, -1) == -1);
    CHECK_ERRNO(EINVAL);
    const char *d = capture(dump_profile, NULL);
    unsigned long c[4];
    const char *line = NULL;
    if (CHECK(find_site(d, "prof-a", (void *)profiled_site_a, c, &line))) {
        CHECK_EQ(c[0], A_CALLS);
        CHECK_EQ(c[1], A_CALLS * 64);
        CHECK_EQ(c[2], 0);
        if (symbols_known())
            CHECK(strstr(line, "profiled_site_a+0x") != NULL &&
                  strstr(line, "profiled_site_a+0x") < strchr(line, '\n'));
    }
    if (CHECK(find_site(d, "prof-b", (void *)profiled_site_b, c, &line))) {
        CHECK_EQ(c[0], B_CALLS);
        CHECK_EQ(c[1], B_CALLS * 256);
    }
    if (CHECK(find_site(d, "prof-a", (void *)profiled_free_site, c, &line))) {
        CHECK_EQ(c[0], 0);
        CHECK_EQ(c[2], A_CALLS);
        CHECK_EQ(c[3], A_CALLS * 64);
    }
    CHECK(strstr(d, "Memory profile: ") == d);
    CHECK(strstr(d, "\nTotal: ") != NULL);
    /* Off: nothing more is recorded. */
    CHECK(pool_set_profiling(0) == 0);
    for (int i = 0; i < A_CALLS; i++)
        profiled_free_site(prof_a, profiled_site_a());
    d = capture(dump_profile, NULL);
    if (CHECK(find_site(d, "prof-a", (void *)profiled_site_a, c, &line)))
        CHECK_EQ(c[0], A_CALLS);
    if (check_failures() != 0)
        fprintf(stderr, "  profile:\n%s\n", d);
    return child_result();
}

static void test_profile(void)
{
    int st = in_child(profile_child, NULL);
    if (!CHECK(exited_ok(st)))
        fprintf(stderr, "  profile child: status 0x%x\n", st);
}

/* Threads record into tables of their own; the dump merges them. */
#define T_THREADS 4
#define T_CALLS 2500

static void *profile_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < T_CALLS; i++)
        profiled_free_site(prof_a, profiled_site_a());
    return NULL;
}

static int profile_threads_child(void)
{
    if (pool_set_profiling(1) != 0)
        return 99;
    prof_a = pool_create("prof-threads", 64, 0);
    pthread_t t[T_THREADS];
    for (int i = 0; i < T_THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, profile_thread, NULL) == 0);
    for (int i = 0; i < T_THREADS; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    const char *d = capture(dump_profile, NULL);
    unsigned long c[4];
    const char *line = NULL;
    if (CHECK(find_site(d, "prof-threads", (void *)profiled_site_a, c, &line))) {
        CHECK_EQ(c[0], T_THREADS * T_CALLS);
        CHECK_EQ(c[1], T_THREADS * T_CALLS * 64);
    }
    if (CHECK(find_site(d, "prof-threads", (void *)profiled_free_site, c, &line)))
        CHECK_EQ(c[2], T_THREADS * T_CALLS);
    if (check_failures() != 0)
        fprintf(stderr, "  threads profile:\n%s\n", d);
    return child_result();
}

/* Profiling off costs a pool nothing: no entry appears for it. */
static int profile_off_child(void)
{
    prof_a = pool_create("prof-off", 64, 0);
    for (int i = 0; i < 10; i++)
        profiled_free_site(prof_a, profiled_site_a());
    const char *d = capture(dump_profile, NULL);
    CHECK(strstr(d, "pool=prof-off") == NULL);
    CHECK(strstr(d, "Total: 0 call sites") != NULL);
    return child_result();
}

/* ---- 4. show pools: prefix and key=value -------------------------------- */

struct filter {
    const char *prefix;
    unsigned flags;
};

static void dump_filtered(int fd, void *arg)
{
    struct filter *f = arg;
    CHECK(pool_dump_filtered(fd, POOL_DUMP_BY_NAME, 0, f->prefix, f->flags) == 0);
}

static int filter_child(void)
{
    struct pool_head *one = pool_create("flt-one", 100, 0);
    struct pool_head *two = pool_create("flt-two", 200, 0);
    struct pool_head *sp = pool_create("flt sp=x", 48, 0);
    struct pool_head *other = pool_create("other-x", 300, 0);
    void *o = pool_alloc(two);
    struct filter f = { "flt-", 0 };
    const char *d = capture(dump_filtered, &f);
    CHECK(strstr(d, "  - Pool flt-one (112 bytes)") != NULL);
    CHECK(strstr(d, "  - Pool flt-two (208 bytes) : 1 allocated (208 bytes), 1 used") != NULL);
    CHECK(strstr(d, "flt sp") == NULL);
    CHECK(strstr(d, "other-x") == NULL);
    CHECK(strstr(d, "Total: 2 pools, 208 bytes allocated, 208 used") != NULL);
    CHECK(strstr(d, "flt-one") < strstr(d, "flt-two"));
    if (check_failures() != 0)
        fprintf(stderr, "  prefix dump:\n%s\n", d);
    f.prefix = "flt";
    f.flags = POOL_DUMP_F_KV;
    d = capture(dump_filtered, &f);
    CHECK(strstr(d, "pool name=flt%20sp%3Dx aliases= size=48 allocated=0 ") != NULL);
    CHECK(strstr(d, "pool name=flt-two aliases= size=208 allocated=1 allocated_bytes=208 used=1 "
                    "cached=0 shared=0 failed=0 users=1 minavail=0 limit=0 shared_flag=0 debug=") != NULL);
    CHECK(strstr(d, "total pools=3 allocated_bytes=208 used_bytes=208 ") != NULL);
    CHECK(strstr(d, "other-x") == NULL);
    CHECK(strstr(d, "  - Pool") == NULL);
    if (check_failures() != 0)
        fprintf(stderr, "  key=value dump:\n%s\n", d);
    /* NULL prefix: every pool. Bad arguments: EINVAL. */
    f.prefix = NULL;
    f.flags = 0;
    d = capture(dump_filtered, &f);
    CHECK(strstr(d, "other-x") != NULL && strstr(d, "flt-one") != NULL);
    CHECK(pool_dump_filtered(1, 42, 0, NULL, 0) == -1);
    CHECK_ERRNO(EINVAL);
    CHECK(pool_dump_filtered(1, POOL_DUMP_BY_NAME, 0, NULL, 2) == -1);
    CHECK_ERRNO(EINVAL);
    CHECK(pool_dump_filtered(1, POOL_DUMP_BY_NAME, -1, NULL, 0) == -1);
    CHECK_ERRNO(EINVAL);
    pool_free(two, o);
    (void)one, (void)sp, (void)other;
    return child_result();
}

/* ---- 5. the trim in pool_gc --------------------------------------------- */

static int jemalloc_underneath(void)
{
    const char *b = getenv("POOL_BACKEND");
    return dlsym(RTLD_DEFAULT, "mallctl") != NULL && b != NULL && strcmp(b, "malloc") == 0;
}

static long rss_kib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

#define TRIM_OBJS 16384 /* of 4 KiB: 64 MiB */

/* Allocates and frees 64 MiB, then runs pool_gc: prints the resident
 * memory it gave back and the trims it did. */
static int trim_child(void)
{
    struct pool_head *p = pool_create("trimmed", 4096, 0);
    static char *objs[TRIM_OBJS];
    for (int i = 0; i < TRIM_OBJS; i++) {
        objs[i] = pool_alloc(p);
        if (objs[i] == NULL)
            return 98;
        memset(objs[i], 0x5a, 4096);
    }
    for (int i = 0; i < TRIM_OBJS; i++)
        pool_free(p, objs[i]);
    pool_evict_local_cache();
    unsigned long before_count = pool_trim_count();
    long before = rss_kib();
    pool_gc(NULL);
    long after = rss_kib();
    printf("dropped %ld trims %lu\n", before - after, pool_trim_count() - before_count);
    fflush(stdout);
    return 0;
}

static void trim_run(const char *trim, long *dropped, unsigned long *trims)
{
    int fds[2];
    *dropped = -1, *trims = 99;
    if (!CHECK(pipe(fds) == 0))
        return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        child_start();
        close(fds[0]);
        dup2(fds[1], 1);
        if (trim != NULL)
            setenv("POOL_TRIM", trim, 1);
        else
            unsetenv("POOL_TRIM");
        _exit(trim_child());
    }
    close(fds[1]);
    char buf[256] = { 0 };
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 && (n = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)n;
    close(fds[0]);
    int status = -1;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(exited_ok(status));
    if (!CHECK(sscanf(buf, "dropped %ld trims %lu", dropped, trims) == 2))
        fprintf(stderr, "  trim child wrote: %s\n", buf);
}

static void test_trim(void)
{
    long dropped;
    unsigned long trims;
    trim_run(NULL, &dropped, &trims);
    printf("trim: default: %ld KiB given back, %lu trims\n", dropped, trims);
#ifdef __GLIBC__
    /* glibc's malloc_trim, or jemalloc's purge (ASan's malloc has neither). */
    if (!under_memory_tool())
        CHECK_EQ(trims, 1);
#endif
    /* Whichever malloc is underneath, pool_gc gives the memory back. */
    if (!under_memory_tool() && !CHECK(dropped > 32 * 1024))
        fprintf(stderr, "  only %ld KiB given back by pool_gc\n", dropped);
    trim_run("0", &dropped, &trims);
    printf("trim: POOL_TRIM=0: %ld KiB given back, %lu trims\n", dropped, trims);
    CHECK_EQ(trims, 0);
    if (jemalloc_underneath() && !under_memory_tool()) {
        /* jemalloc keeps freed pages resident until purged. */
        if (!CHECK(dropped < 16 * 1024))
            fprintf(stderr, "  POOL_TRIM=0 under jemalloc still gave back %ld KiB\n", dropped);
    }
}

int main(void)
{
    if (under_memory_tool())
        fprintf(stderr, "note: under ASan or valgrind: the use-after-free and memory cases are skipped\n");
    else
        test_uaf_alone_faults();
    test_fail_rate();
    test_fail_seed();
    test_profile();
    CHECK(exited_ok(in_child(profile_threads_child, NULL)));
    CHECK(exited_ok(in_child(profile_off_child, NULL)));
    CHECK(exited_ok(in_child(filter_child, NULL)));
    test_trim();
    return check_done();
}
