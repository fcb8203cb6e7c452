/*
 * test_basic: pool creation, size rounding, POOL_F_EXACT, alignment over
 * many sizes, name copying, zalloc, LIFO reuse, each stats counter, flush,
 * gc against minavail, totals, pool_dump, the cache-size knob, and the
 * HAProxy spellings (DECLARE_POOL, DECLARE_STATIC_POOL, create_pool, MEM_F_*).
 */
#include <pools.h>
#include "check.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

/* Sizes chosen so that no other shareable pool of this program has them. */
DECLARE_POOL(decl_pool, "decl_pool", 200);               /* rounds to 208 */
DECLARE_STATIC_POOL(decl_static_pool, "decl_static", 300); /* rounds to 304 */

static size_t round16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

static int is_aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

static void test_declare(void)
{
    CHECK(decl_pool != NULL);
    CHECK(decl_static_pool != NULL);
    CHECK(decl_pool != decl_static_pool);

    struct pool_stats s = STATS(decl_pool);
    CHECK(strcmp(s.name, "decl_pool") == 0);
    CHECK_EQ(s.size, 208);
    CHECK_EQ(s.users, 1);

    s = STATS(decl_static_pool);
    CHECK(strcmp(s.name, "decl_static") == 0);
    CHECK_EQ(s.size, 304);
    CHECK_EQ(s.users, 1);

    char *a = pool_alloc(decl_pool);
    char *b = pool_alloc(decl_static_pool);
    CHECK(a != NULL && b != NULL);
    memset(a, 1, 200);
    memset(b, 2, 300);
    CHECK_COUNTS(decl_pool, 1, 1, 0, 0);
    CHECK_COUNTS(decl_static_pool, 1, 1, 0, 0);
    pool_free(decl_pool, a);
    pool_free(decl_static_pool, b);
    CHECK_COUNTS(decl_pool, 1, 0, 1, 0);
    CHECK_COUNTS(decl_static_pool, 1, 0, 1, 0);
}

static void test_haproxy_spellings(void)
{
    CHECK_EQ(MEM_F_SHARED, POOL_F_SHARED);
    CHECK_EQ(MEM_F_EXACT, POOL_F_EXACT);
    CHECK_EQ(POOL_F_SHARED, 1);
    CHECK_EQ(POOL_F_EXACT, 2);
    CHECK_EQ(POOL_MAX_SIZE, 1u << 30);

    /* 77 rounds to 80; no other shareable pool of 80 bytes exists here. */
    struct pool_head *p = create_pool("hap_shared", 77, MEM_F_SHARED);
    CHECK(p != NULL);
    struct pool_stats s = STATS(p);
    CHECK_EQ(s.size, 80);
    CHECK(strcmp(s.name, "hap_shared") == 0);

    struct pool_head *q = create_pool("hap_exact", 77, MEM_F_EXACT);
    CHECK(q != NULL);
    CHECK(q != p);
    s = STATS(q);
    CHECK_EQ(s.size, 77);

    void *o = pool_alloc(q);
    CHECK(o != NULL && is_aligned16(o));
    memset(o, 0x5a, 77);
    pool_free(q, o);

    CHECK(pool_destroy(p) == NULL);
    CHECK(pool_destroy(q) == NULL);
}

/* Rounding (or not), alignment and distinctness for many sizes. */
static void test_sizes(void)
{
    static const size_t extra[] = {
        100, 127, 128, 129, 255, 256, 1000, 1023, 1024, 4095, 4096, 4097,
        10000, 65535, 65536, 65537, 100000, 1 << 20, (1 << 20) + 1,
    };
    enum { NOBJ = 6 };
    size_t sizes[64 + sizeof extra / sizeof extra[0]];
    size_t nsizes = 0;
    for (size_t i = 1; i <= 64; i++)
        sizes[nsizes++] = i;
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
        sizes[nsizes++] = extra[i];

    int bad_size = 0, bad_align = 0, bad_distinct = 0, bad_null = 0, bad_destroy = 0;
    int bad_content = 0;
    for (size_t i = 0; i < nsizes; i++) {
        for (int exact = 0; exact <= 1; exact++) {
            size_t sz = sizes[i];
            struct pool_head *p = pool_create(exact ? "size_exact" : "size_round", sz,
                                              exact ? POOL_F_EXACT : 0);
            if (!p) {
                bad_null++;
                fprintf(stderr, "pool_create(%zu, exact=%d) failed\n", sz, exact);
                continue;
            }
            struct pool_stats s = STATS(p);
            size_t want = exact ? sz : round16(sz);
            if (s.size != want) {
                bad_size++;
                fprintf(stderr, "size %zu exact=%d: stats.size %zu, expected %zu\n",
                        sz, exact, s.size, want);
            }
            unsigned char *objs[NOBJ];
            for (int k = 0; k < NOBJ; k++) {
                objs[k] = pool_alloc(p);
                if (!objs[k]) {
                    bad_null++;
                    continue;
                }
                if (!is_aligned16(objs[k])) {
                    bad_align++;
                    fprintf(stderr, "size %zu exact=%d: object %p not 16-aligned\n",
                            sz, exact, (void *)objs[k]);
                }
                memset(objs[k], k + 1, sz); /* the whole object is writable */
            }
            for (int k = 0; k < NOBJ; k++)
                for (int m = 0; m < k; m++)
                    if (objs[k] && objs[k] == objs[m])
                        bad_distinct++;
            for (int k = 0; k < NOBJ; k++) {
                if (!objs[k])
                    continue;
                /* neighbours did not overwrite this object */
                if (objs[k][0] != k + 1 || objs[k][sz - 1] != k + 1)
                    bad_content++;
                pool_free(p, objs[k]);
            }
            if (pool_destroy(p) != NULL)
                bad_destroy++;
        }
    }
    CHECK_EQ(bad_null, 0);
    CHECK_EQ(bad_size, 0);
    CHECK_EQ(bad_align, 0);
    CHECK_EQ(bad_distinct, 0);
    CHECK_EQ(bad_content, 0);
    CHECK_EQ(bad_destroy, 0);
}

static void test_name_copied(void)
{
    char stack_name[] = "copied_name";
    char *heap_name = strdup("heap_name");
    CHECK(heap_name != NULL);
    struct pool_head *p = pool_create(stack_name, 40, 0);
    struct pool_head *q = pool_create(heap_name, 40, 0);
    CHECK(p != NULL && q != NULL);
    memset(stack_name, 'X', sizeof stack_name - 1);
    memset(heap_name, 'Y', strlen(heap_name));
    free(heap_name);
    struct pool_stats s = STATS(p);
    CHECK(strcmp(s.name, "copied_name") == 0);
    s = STATS(q);
    CHECK(strcmp(s.name, "heap_name") == 0);
    CHECK(pool_destroy(p) == NULL);
    CHECK(pool_destroy(q) == NULL);
}

static void test_zalloc_and_lifo(void)
{
    struct pool_head *p = pool_create("zalloc", 1000, 0);
    CHECK(p != NULL);

    unsigned char *o = pool_alloc(p);
    CHECK(o != NULL);
    memset(o, 0xAB, 1008);
    pool_free(p, o);
    unsigned char *z = pool_zalloc(p);
    CHECK(z == o); /* the object just freed comes back first */
    size_t nonzero = 0;
    for (size_t i = 0; i < 1008; i++)
        nonzero += z[i] != 0;
    CHECK_EQ(nonzero, 0);

    /* zalloc from malloc is zeroed too */
    unsigned char *z2 = pool_zalloc(p);
    CHECK(z2 != NULL && z2 != z);
    nonzero = 0;
    for (size_t i = 0; i < 1008; i++)
        nonzero += z2[i] != 0;
    CHECK_EQ(nonzero, 0);
    pool_free(p, z2);
    pool_free(p, z);

    /* LIFO over several objects */
    enum { N = 10 };
    void *objs[N];
    for (int i = 0; i < N; i++) {
        objs[i] = pool_alloc(p);
        CHECK(objs[i] != NULL);
    }
    for (int i = 0; i < N; i++)
        pool_free(p, objs[i]);
    int lifo_ok = 1;
    for (int i = N - 1; i >= 0; i--) {
        void *back = pool_alloc(p);
        if (back != objs[i]) {
            lifo_ok = 0;
            fprintf(stderr, "LIFO: alloc #%d returned %p, expected %p\n", N - 1 - i, back,
                    objs[i]);
        }
    }
    CHECK(lifo_ok);
    for (int i = 0; i < N; i++)
        pool_free(p, objs[i]);
    CHECK(pool_destroy(p) == NULL);
}

static void test_counters(void)
{
    struct pool_head *p = pool_create("counters", 96, 0);
    CHECK(p != NULL);
    struct pool_stats s = STATS(p);
    CHECK(strcmp(s.name, "counters") == 0);
    CHECK_EQ(s.size, 96);
    CHECK_EQ(s.users, 1);
    CHECK_EQ(s.failed, 0);
    CHECK_COUNTS(p, 0, 0, 0, 0);

    void *a = pool_alloc(p), *b = pool_alloc(p), *c = pool_alloc(p);
    CHECK(a && b && c);
    CHECK_COUNTS(p, 3, 3, 0, 0);

    pool_free(p, b);
    CHECK_COUNTS(p, 3, 2, 1, 0);

    void *b2 = pool_alloc(p); /* from the thread cache */
    CHECK(b2 == b);
    CHECK_COUNTS(p, 3, 3, 0, 0);

    pool_free(p, a);
    pool_free(p, b2);
    pool_free(p, c);
    CHECK_COUNTS(p, 3, 0, 3, 0);

    pool_evict_local_cache();
    CHECK_COUNTS(p, 3, 0, 0, 3);

    /* the thread cache is empty: the next object comes from the shared cache */
    void *d = pool_alloc(p);
    CHECK(d == a || d == b || d == c);
    s = STATS(p);
    CHECK_EQ(s.allocated, 3);
    CHECK_EQ(s.used, 1);
    CHECK_EQ(s.cached + s.shared, 2);
    CHECK(s.shared <= 2);

    /* flush returns the shared cache to malloc but leaves thread caches */
    pool_evict_local_cache();
    pool_free(p, d);
    s = STATS(p);
    CHECK_EQ(s.cached, 1);
    CHECK_EQ(s.shared, 2);
    pool_flush(p);
    CHECK_COUNTS(p, 1, 0, 1, 0);
    pool_flush(p); /* idempotent */
    CHECK_COUNTS(p, 1, 0, 1, 0);
    CHECK_EQ(STATS(p).failed, 0);

    CHECK(pool_destroy(p) == NULL);
}

static void test_gc_minavail(void)
{
    struct pool_head *p = pool_create("gc_minavail", 64, 0);
    CHECK(p != NULL);
    CHECK_EQ(pool_set_minavail(p, 5), 0);
    CHECK_EQ(STATS(p).minavail, 5);

    enum { N = 20 };
    void *objs[N];
    for (int i = 0; i < N; i++)
        objs[i] = pool_alloc(p);
    for (int i = 0; i < N; i++)
        pool_free(p, objs[i]);
    pool_evict_local_cache();
    CHECK_COUNTS(p, N, 0, 0, N);

    /* gc acts on every pool: a second one with its own minavail */
    struct pool_head *q = pool_create("gc_minavail_2", 640, 0);
    CHECK(q != NULL);
    CHECK_EQ(pool_set_minavail(q, 2), 0);
    void *qo[6];
    for (int i = 0; i < 6; i++)
        qo[i] = pool_alloc(q);
    for (int i = 0; i < 6; i++)
        pool_free(q, qo[i]);
    pool_evict_local_cache();
    CHECK_COUNTS(q, 6, 0, 0, 6);

    pool_gc(NULL);
    CHECK_COUNTS(p, 5, 0, 0, 5);
    CHECK_COUNTS(q, 2, 0, 0, 2);
    pool_gc(NULL); /* nothing more to release */
    CHECK_COUNTS(p, 5, 0, 0, 5);
    CHECK_COUNTS(q, 2, 0, 0, 2);
    CHECK(pool_destroy(q) == NULL);

    /* cached objects count towards minavail: 10 cached + 5 shared > 5,
     * and only shared objects can go, so all of them go */
    for (int i = 0; i < 15; i++)
        objs[i] = pool_alloc(p);
    CHECK_COUNTS(p, 15, 15, 0, 0);
    for (int i = 0; i < 5; i++)
        pool_free(p, objs[i]);
    pool_evict_local_cache();
    for (int i = 5; i < 15; i++)
        pool_free(p, objs[i]);
    CHECK_COUNTS(p, 15, 0, 10, 5);
    pool_gc(NULL);
    CHECK_COUNTS(p, 10, 0, 10, 0);

    /* minavail 0: gc empties the shared cache */
    CHECK_EQ(pool_set_minavail(p, 0), 0);
    CHECK_EQ(STATS(p).minavail, 0);
    pool_evict_local_cache();
    CHECK_COUNTS(p, 10, 0, 0, 10);
    pool_gc(NULL);
    CHECK_COUNTS(p, 0, 0, 0, 0);

    CHECK(pool_destroy(p) == NULL);
}

static void test_totals(void)
{
    struct pool_head *p = pool_create("totals", 250, 0); /* size 256 */
    struct pool_head *q = pool_create("totals_exact", 33, POOL_F_EXACT);
    CHECK(p != NULL && q != NULL);
    unsigned long long ta = pool_total_allocated(), tu = pool_total_used();

    void *a[4], *b[3];
    for (int i = 0; i < 4; i++)
        a[i] = pool_alloc(p);
    for (int i = 0; i < 3; i++)
        b[i] = pool_alloc(q);
    CHECK_EQ(pool_total_allocated() - ta, 4 * 256 + 3 * 33);
    CHECK_EQ(pool_total_used() - tu, 4 * 256 + 3 * 33);

    pool_free(p, a[0]);
    pool_free(q, b[0]);
    CHECK_EQ(pool_total_allocated() - ta, 4 * 256 + 3 * 33);
    CHECK_EQ(pool_total_used() - tu, 3 * 256 + 2 * 33);

    for (int i = 1; i < 4; i++)
        pool_free(p, a[i]);
    for (int i = 1; i < 3; i++)
        pool_free(q, b[i]);
    CHECK_EQ(pool_total_used(), tu);
    pool_evict_local_cache();
    pool_flush(p);
    pool_flush(q);
    CHECK_EQ(pool_total_allocated(), ta);
    CHECK_EQ(pool_total_used(), tu);
    CHECK(pool_destroy(p) == NULL);
    CHECK(pool_destroy(q) == NULL);
}

static char *dump_to_string(void)
{
    FILE *f = tmpfile();
    if (!f)
        return NULL;
    pool_dump(fileno(f));
    long len = lseek(fileno(f), 0, SEEK_END);
    char *buf = NULL;
    if (len >= 0 && lseek(fileno(f), 0, SEEK_SET) == 0) {
        buf = malloc((size_t)len + 1);
        if (buf) {
            ssize_t got = 0, r;
            while (got < len && (r = read(fileno(f), buf + got, (size_t)(len - got))) > 0)
                got += r;
            buf[got] = 0;
        }
    }
    fclose(f);
    return buf;
}

static int has_line_containing(const char *text, const char *needle)
{
    const char *line = text;
    while (*line) {
        const char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        const char *hit = strstr(line, needle);
        if (hit && hit < line + n)
            return 1;
        if (!end)
            break;
        line = end + 1;
    }
    return 0;
}

static void test_dump(void)
{
    struct pool_head *p = pool_create("dump_me_please", 48, 0);
    struct pool_head *q = pool_create("dump_me_too", 4000, 0);
    CHECK(p != NULL && q != NULL);
    void *o = pool_alloc(p);

    char *text = dump_to_string();
    CHECK(text != NULL);
    if (text) {
        CHECK(has_line_containing(text, "dump_me_please"));
        CHECK(has_line_containing(text, "dump_me_too"));
        CHECK(has_line_containing(text, "decl_pool"));
        CHECK(has_line_containing(text, "decl_static"));
        /* the last line starts with "Total" */
        size_t len = strlen(text);
        CHECK(len > 0 && text[len - 1] == '\n');
        const char *last = text;
        for (size_t i = 0; i + 1 < len; i++)
            if (text[i] == '\n')
                last = text + i + 1;
        CHECK(strncmp(last, "Total", 5) == 0);
        /* one line per pool before it: at least the four pools above */
        int lines = 0;
        for (size_t i = 0; i < len; i++)
            lines += text[i] == '\n';
        CHECK(lines >= 5);
        free(text);
    }

    /* a destroyed pool is no longer dumped */
    pool_free(p, o);
    CHECK(pool_destroy(p) == NULL);
    text = dump_to_string();
    CHECK(text != NULL);
    if (text) {
        CHECK(!has_line_containing(text, "dump_me_please"));
        CHECK(has_line_containing(text, "dump_me_too"));
        free(text);
    }
    CHECK(pool_destroy(q) == NULL);

    /* dumping through a pipe works as well */
    int fds[2];
    CHECK(pipe(fds) == 0);
    pool_dump(fds[1]);
    close(fds[1]);
    char buf[4096];
    ssize_t n = read(fds[0], buf, sizeof buf - 1);
    CHECK(n > 0);
    if (n > 0) {
        buf[n] = 0;
        CHECK(strstr(buf, "Total") != NULL);
        CHECK(strstr(buf, "decl_pool") != NULL);
    }
    close(fds[0]);
}

static void test_cache_size_knob(void)
{
    if (getenv("POOL_CACHE_SIZE") == NULL)
        CHECK_EQ(pool_get_cache_size(), 512 * 1024);
    CHECK_EQ(POOL_DEFAULT_CACHE_SIZE, 512 * 1024);
    size_t old = pool_get_cache_size();
    CHECK_EQ(pool_set_cache_size(1 << 20), 0);
    CHECK_EQ(pool_get_cache_size(), 1 << 20);
    CHECK_EQ(pool_set_cache_size(old), 0);
    CHECK_EQ(pool_get_cache_size(), old);
}

/* Runs as `test_basic --env-child` with POOL_CACHE_SIZE=4096 and
 * POOL_SHARED_CACHE=none in the environment. */
static int env_child(void)
{
    CHECK_EQ(pool_get_cache_size(), 4096);
    errno = 0;
    CHECK_EQ(pool_set_shared_cache("xchg"), -1); /* DECLARE_POOL made pools */
    CHECK_ERRNO(EBUSY);

    /* 1000 bytes > 4096 / 8: bypasses the thread cache, and with no shared
     * cache goes straight back to malloc */
    struct pool_head *big = pool_create("env_big", 1000, 0);
    CHECK(big != NULL);
    void *o = pool_alloc(big);
    CHECK(o != NULL);
    pool_free(big, o);
    CHECK_COUNTS(big, 0, 0, 0, 0);

    /* 65 objects of 64 bytes overflow 4096 bytes: the oldest go to malloc */
    struct pool_head *small = pool_create("env_small", 64, 0);
    CHECK(small != NULL);
    void *objs[65];
    for (int i = 0; i < 65; i++)
        objs[i] = pool_alloc(small);
    for (int i = 0; i < 65; i++)
        pool_free(small, objs[i]);
    struct pool_stats s = STATS(small);
    CHECK_EQ(s.shared, 0);
    CHECK(s.allocated >= 65 - 16 && s.allocated <= 65 - 9);
    CHECK_EQ(s.cached, s.allocated);
    return check_done();
}

/* The environment variables are read by the library: checked in a re-executed
 * copy of this program. */
static void test_environment(const char *argv0)
{
    /* argv[0] when it is a path (under valgrind /proc/self/exe is valgrind) */
    const char *self = strchr(argv0, '/') ? argv0 : "/proc/self/exe";
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 1); /* keep the child's summary line out of ours */
        setenv("POOL_CACHE_SIZE", "4096", 1);
        setenv("POOL_SHARED_CACHE", "none", 1);
        char *args[] = {"test_basic", "--env-child", NULL};
        execv(self, args);
        perror("execv");
        _exit(127);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        fprintf(stderr, "  environment child: status 0x%x (its failed checks are above)\n",
                status);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--env-child") == 0)
        return env_child();
    test_declare();
    test_haproxy_spellings();
    test_sizes();
    test_name_copied();
    test_zalloc_and_lifo();
    test_counters();
    test_gc_minavail();
    test_totals();
    test_dump();
    test_cache_size_knob();
    test_environment(argv[0]);
    return check_done();
}
