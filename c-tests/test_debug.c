/*
 * test_debug: every POOL_DEBUG / pool_set_debugging option shows its
 * effect. Each case runs in a fork()ed child that sets the options before
 * creating its pools; the parent reads the child's stderr through a pipe and
 * checks how it ended (exit 0, SIGABRT with the expected message, SIGSEGV)
 * and what it printed.
 *
 * The cases that write into freed objects on purpose are skipped when the
 * program runs under AddressSanitizer or valgrind (scripts/verify-*.sh):
 * there the tool reports the write first, which is what mk/debug.mk tests.
 */
#include <pools.h>
#include "check.h"

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

static int under_memory_tool(void)
{
    const char *pre = getenv("LD_PRELOAD");
    return __asan_poison_memory_region != NULL || (pre != NULL && strstr(pre, "vgpreload") != NULL);
}

/* How a child ended and what it wrote on stderr. */
struct outcome {
    int status;
    char err[8192];
};

/* Runs fn(arg) in a child whose stderr goes into out->err, after setting the
 * debugging options `opts` (which must be accepted). */
static void run(const char *opts, int (*fn)(void *), void *arg, struct outcome *out)
{
    int fds[2];
    memset(out, 0, sizeof *out);
    fflush(stdout);
    fflush(stderr);
    if (!CHECK(pipe(fds) == 0))
        return;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        if (opts != NULL && pool_set_debugging(opts) != 0) {
            fprintf(stderr, "pool_set_debugging(\"%s\") refused\n", opts);
            _exit(99);
        }
        int rc = fn(arg);
        fflush(stderr);
        _exit(rc);
    }
    close(fds[1]);
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fds[0], out->err + len, sizeof out->err - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    out->err[len] = 0;
    close(fds[0]);
    CHECK(waitpid(pid, &out->status, 0) == pid);
}

static int exited_ok(const struct outcome *o)
{
    return WIFEXITED(o->status) && WEXITSTATUS(o->status) == 0;
}

static int died_of(const struct outcome *o, int sig)
{
    return WIFSIGNALED(o->status) && WTERMSIG(o->status) == sig;
}

static void expect_ok(const char *what, const struct outcome *o)
{
    if (!CHECK(exited_ok(o)))
        fprintf(stderr, "  %s: status 0x%x, stderr:\n%s\n", what, o->status, o->err);
}

static void expect_abort(const char *what, const struct outcome *o, const char *const *needles)
{
    if (!CHECK(died_of(o, SIGABRT)))
        fprintf(stderr, "  %s: status 0x%x, stderr:\n%s\n", what, o->status, o->err);
    for (; *needles != NULL; needles++)
        if (!CHECK(strstr(o->err, *needles) != NULL))
            fprintf(stderr, "  %s: \"%s\" not in:\n%s\n", what, *needles, o->err);
}

static void hex(char *buf, size_t len, const void *p)
{
    snprintf(buf, len, "%#lx", (unsigned long)(uintptr_t)p);
}

/* ---- option words ------------------------------------------------------ */

static int all_or_nothing_child(void *arg)
{
    (void)arg;
    errno = 0;
    if (pool_set_debugging("integrity,bogus") != -1 || errno != EINVAL)
        return 1;
    errno = 0;
    if (pool_set_debugging(NULL) != -1 || errno != EINVAL)
        return 2;
    if (pool_set_debugging("poison=0x100") != -1 || pool_set_debugging("fail=") != -1)
        return 3;
    struct pool_head *p = pool_create("words", 64, 0);
    pool_dump(2);
    return p == NULL;
}

static void test_words(void)
{
    struct outcome o;
    /* "tag" applies; the refused lists change nothing (no integrity). */
    run("tag", all_or_nothing_child, NULL, &o);
    expect_ok("all-or-nothing", &o);
    CHECK(strstr(o.err, "Pool words (64 bytes)") != NULL);
    CHECK(strstr(o.err, "[DEBUG tag") != NULL); /* (",valgrind" under valgrind) */
    CHECK(strstr(o.err, "integrity") == NULL);
    CHECK(strstr(o.err, "poison") == NULL);

    run("help", all_or_nothing_child, NULL, &o);
    expect_ok("help", &o);
    static const char *const words[] = {
        "fail=N", "no-fail", "no-merge", "merge", "cold-first", "hot-first", "integrity",
        "no-integrity", "no-global", "global", "no-cache", "cache", "caller", "no-caller",
        "tag", "no-tag", "poison", "no-poison", "uaf", "no-uaf", "backup", "no-backup",
        "canary", "no-canary", "help",
    };
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        char line[64];
        snprintf(line, sizeof line, "\n  %s ", words[i]);
        if (!CHECK(strstr(o.err, line) != NULL))
            fprintf(stderr, "  help has no line for \"%s\"\n", words[i]);
    }
}

/* ---- fail ---------------------------------------------------------------- */

static int fail_child(void *arg)
{
    (void)arg;
    struct pool_head *p = pool_create("failing", 64, 0);
    errno = 0;
    void *o = pool_alloc(p);
    if (o != NULL || errno != ENOMEM || STATS(p).failed != 1)
        return 1;
    if (pool_set_debugging("no-fail") != 0 || (o = pool_alloc(p)) == NULL)
        return 2;
    pool_free(p, o);
    return check_failures() != 0;
}

static void test_fail(void)
{
    struct outcome o;
    run("fail=100", fail_child, NULL, &o);
    expect_ok("fail=100", &o);
}

/* ---- no-merge / merge ---------------------------------------------------- */

static int merge_child(void *arg)
{
    int no_merge = *(int *)arg;
    struct pool_head *a = pool_create("merge_a", 96, POOL_F_SHARED);
    struct pool_head *b = pool_create("merge_b", 96, POOL_F_SHARED);
    struct pool_head *a2 = pool_create("merge_a", 96, POOL_F_SHARED);
    if (a == NULL || b == NULL || a2 == NULL)
        return 1;
    if (no_merge ? (a == b || a != a2) : (a != b || a != a2))
        return 2;
    /* Pools with different debugging options never merge. */
    if (pool_set_debugging("tag") != 0)
        return 3;
    struct pool_head *t = pool_create("merge_a", 96, POOL_F_SHARED);
    return t == NULL || t == a ? 4 : 0;
}

static void test_merge(void)
{
    struct outcome o;
    int no = 1, yes = 0;
    run("no-merge", merge_child, &no, &o);
    expect_ok("no-merge", &o);
    run("no-merge,merge", merge_child, &yes, &o);
    expect_ok("merge", &o);
}

/* ---- cold-first / hot-first ---------------------------------------------- */

static int order_child(void *arg)
{
    int cold = *(int *)arg;
    struct pool_head *p = pool_create("order", 64, 0);
    void *o[3];
    for (int i = 0; i < 3; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < 3; i++)
        pool_free(p, o[i]);
    void *first = pool_alloc(p);
    int ok = first == (cold ? o[0] : o[2]);
    pool_free(p, first);
    return ok ? 0 : 1;
}

static void test_cold_first(void)
{
    struct outcome o;
    int cold = 1, hot = 0;
    run("cold-first", order_child, &cold, &o);
    expect_ok("cold-first", &o);
    run("cold-first,hot-first", order_child, &hot, &o);
    expect_ok("hot-first", &o);
}

/* ---- no-global / no-cache ------------------------------------------------ */

struct layers {
    int no_cache, no_global;
};

static int layers_child(void *arg)
{
    const struct layers *l = arg;
    struct pool_head *p = pool_create("layers", 4096, 0);
    void *o[4];
    for (int i = 0; i < 4; i++)
        o[i] = pool_alloc(p);
    for (int i = 0; i < 4; i++)
        pool_free(p, o[i]);
    struct pool_stats s = STATS(p);
    unsigned long cached = l->no_cache ? 0 : 4;
    unsigned long shared = l->no_cache && !l->no_global ? 4 : 0;
    if (s.cached != cached || s.shared != shared || s.allocated != cached + shared)
        return 1;
    /* Evicting the thread cache: to the shared cache, or to the system. */
    pool_evict_local_cache();
    s = STATS(p);
    shared = l->no_global ? 0 : 4;
    return s.cached == 0 && s.shared == shared && s.allocated == shared ? 0 : 2;
}

static void test_layers(void)
{
    struct outcome o;
    struct layers plain = {0, 0}, nc = {1, 0}, ng = {0, 1}, both = {1, 1};
    run(NULL, layers_child, &plain, &o);
    expect_ok("cache,global", &o);
    run("no-cache", layers_child, &nc, &o);
    expect_ok("no-cache", &o);
    run("no-global", layers_child, &ng, &o);
    expect_ok("no-global", &o);
    run("no-cache,no-global", layers_child, &both, &o);
    expect_ok("no-cache,no-global", &o);
    run("no-cache,no-global,cache,global", layers_child, &plain, &o);
    expect_ok("cache,global again", &o);
}

/* integrity: objects freed again without being written are not double frees,
 * whether they come back from a cache (holding the pattern they had there)
 * or from malloc (which may hand out the same bytes, stale pattern and all). */
static int untouched_child(void *arg)
{
    (void)arg;
    struct pool_head *p = pool_create("untouched", 128, 0);
    for (int round = 0; round < 50; round++) {
        void *o = pool_alloc(p);
        pool_free(p, o);
        void *again = pool_alloc(p); /* from the cache, not written */
        pool_free(p, again);
        pool_evict_local_cache(); /* with no-global: back to malloc */
    }
    return 0;
}

/* ---- integrity and backup: a write after free ---------------------------- */

static char freed_at[32];

static int write_after_free_child(void *arg)
{
    (void)arg;
    struct pool_head *p = pool_create("watched", 128, 0);
    unsigned char *o = pool_alloc(p);
    memset(o, 0xab, 128);
    pool_free(p, o);
    o[72] = 0x11; /* the bug */
    unsigned char *again = pool_alloc(p);
    return again == o ? 0 : 1; /* reached only when nothing is detected */
}

static void test_write_after_free(void)
{
    struct outcome o;
    const char *const integrity[] = {"pool_alloc(\"watched\", ", "write after free",
                                     "first difference at offset 72", NULL};
    const char *const backup[] = {"pool_alloc(\"watched\", ", "write after free",
                                  "first difference at offset 72 (byte 0x11)", NULL};
    run("integrity", write_after_free_child, NULL, &o);
    expect_abort("integrity", &o, integrity);
    run("backup", write_after_free_child, NULL, &o);
    expect_abort("backup", &o, backup);
    run("integrity,backup", write_after_free_child, NULL, &o);
    expect_abort("integrity,backup", &o, integrity);
    run("integrity", untouched_child, NULL, &o);
    expect_ok("integrity: untouched objects", &o);
    run("integrity,no-global", untouched_child, NULL, &o);
    expect_ok("integrity,no-global: untouched objects", &o);
    /* Without them, the write goes unnoticed. */
    run("integrity,no-integrity,backup,no-backup", write_after_free_child, NULL, &o);
    expect_ok("no-integrity,no-backup", &o);
}

/* ---- tag, integrity: double free; tag: wrong pool, overflow -------------- */

static int double_free_child(void *arg)
{
    (void)arg;
    struct pool_head *p = pool_create("twice", 64, 0);
    void *o = pool_alloc(p);
    hex(freed_at, sizeof freed_at, o);
    fprintf(stderr, "object %s\n", freed_at);
    pool_free(p, o);
    pool_free(p, o); /* the bug */
    return 0;
}

static int wrong_pool_child(void *arg)
{
    (void)arg;
    struct pool_head *alpha = pool_create("alpha", 64, 0);
    struct pool_head *beta = pool_create("beta", 64, 0);
    void *o = pool_alloc(alpha);
    hex(freed_at, sizeof freed_at, o);
    fprintf(stderr, "object %s\n", freed_at);
    pool_free(beta, o); /* the bug */
    return 0;
}

static int overflow_child(void *arg)
{
    (void)arg;
    struct pool_head *p = pool_create("short", 48, 0);
    char *o = pool_alloc(p);
    memset(o, 'x', 49); /* the bug: one byte too many */
    pool_free(p, o);
    return 0;
}

/* The address after "object " in the child's output. */
static const char *object_of(const struct outcome *o, char *buf, size_t len)
{
    const char *s = strstr(o->err, "object 0x");
    buf[0] = 0;
    if (s != NULL)
        sscanf(s + 7, "%31s", buf);
    (void)len;
    return buf;
}

static void test_tag(void)
{
    struct outcome o;
    char addr[32], call[64];

    run("tag", double_free_child, NULL, &o);
    snprintf(call, sizeof call, "pool_free(\"twice\", %s): double free", object_of(&o, addr, sizeof addr));
    const char *const dbl[] = {call, NULL};
    expect_abort("tag: double free", &o, dbl);

    run("integrity", double_free_child, NULL, &o);
    snprintf(call, sizeof call, "pool_free(\"twice\", %s): double free", object_of(&o, addr, sizeof addr));
    const char *const dbl2[] = {call, NULL};
    expect_abort("integrity: double free", &o, dbl2);

    run("tag", wrong_pool_child, NULL, &o);
    snprintf(call, sizeof call, "pool_free(\"beta\", %s)", object_of(&o, addr, sizeof addr));
    const char *const wrong[] = {call, "belongs to pool \"alpha\" (in use), not to pool \"beta\"", NULL};
    expect_abort("tag: wrong pool", &o, wrong);

    run("tag", overflow_child, NULL, &o);
    const char *const over[] = {"pool_free(\"short\", ", "tag was overwritten", NULL};
    expect_abort("tag: overflow", &o, over);
    /* canary (the preload's option) gives pools of the C API the tag. */
    run("canary", overflow_child, NULL, &o);
    expect_abort("canary: overflow", &o, over);
    run("canary", wrong_pool_child, NULL, &o);
    snprintf(call, sizeof call, "pool_free(\"beta\", %s)", object_of(&o, addr, sizeof addr));
    const char *const wrong2[] = {call, "belongs to pool \"alpha\" (in use), not to pool \"beta\"", NULL};
    expect_abort("canary: wrong pool", &o, wrong2);
    /* Without tag, neither is seen (the 49th byte is padding). */
    run("tag,no-tag", overflow_child, NULL, &o);
    expect_ok("no-tag: overflow", &o);
    run("tag,no-tag", wrong_pool_child, NULL, &o);
    expect_ok("no-tag: wrong pool", &o);
}

/* ---- caller -------------------------------------------------------------- */

__attribute__((noinline)) static void free_site(struct pool_head *p, void *o)
{
    pool_free(p, o);
    __asm__ volatile("" ::: "memory"); /* not a tail call: a return address here */
}

__attribute__((noinline)) static void *alloc_site(struct pool_head *p)
{
    void *o = pool_alloc(p);
    __asm__ volatile("" ::: "memory");
    return o;
}

static int caller_child(void *arg)
{
    (void)arg;
    struct pool_head *p = pool_create("traced", 64, 0);
    void *o = alloc_site(p);
    free_site(p, o);
    free_site(p, o); /* the bug */
    return 0;
}

/* The address printed after `label`, or 0. */
static uintptr_t address_after(const char *text, const char *label)
{
    const char *s = strstr(text, label);
    unsigned long v = 0;
    if (s == NULL || sscanf(s + strlen(label), "%lx", &v) != 1)
        return 0;
    return v;
}

static void test_caller(void)
{
    struct outcome o;
    const char *const msg[] = {"pool_free(\"traced\", ", "double free", "this call from 0x",
                               "last allocated from 0x", "last freed from 0x", NULL};
    run("tag,caller", caller_child, NULL, &o);
    expect_abort("caller", &o, msg);
    uintptr_t fs = (uintptr_t)free_site, as = (uintptr_t)alloc_site;
    uintptr_t now = address_after(o.err, "this call from ");
    uintptr_t freed = address_after(o.err, "last freed from ");
    uintptr_t alloc = address_after(o.err, "last allocated from ");
    /* Return addresses inside the functions that made the calls. */
    if (!CHECK(now > fs && now < fs + 128) || !CHECK(freed > fs && freed < fs + 128) ||
        !CHECK(alloc > as && alloc < as + 128))
        fprintf(stderr, "  free_site %#lx alloc_site %#lx; stderr:\n%s\n", (unsigned long)fs,
                (unsigned long)as, o.err);
    /* Without caller, no call sites are kept. */
    run("tag,caller,no-caller", caller_child, NULL, &o);
    CHECK(died_of(&o, SIGABRT));
    CHECK(strstr(o.err, "last freed from") == NULL);
}

/* ---- poison -------------------------------------------------------------- */

static int poison_child(void *arg)
{
    int byte = *(int *)arg; /* -1: not poisoned */
    struct pool_head *p = pool_create("poisoned", 200, POOL_F_EXACT);
    unsigned char *o = pool_alloc(p);
    for (int i = 0; i < 200 && byte >= 0; i++)
        if (o[i] != byte)
            return 1;
    memset(o, 0, 200);
    pool_free(p, o);
    o = pool_alloc(p); /* the same object, from the cache: poisoned again */
    /* (bytes 0..31 held the cache links meanwhile) */
    for (int i = byte >= 0 ? 0 : 32; i < 200; i++)
        if (o[i] != (byte >= 0 ? byte : 0))
            return 2;
    unsigned char *z = pool_zalloc(p); /* zalloc still zeroes */
    for (int i = 0; i < 200; i++)
        if (z[i] != 0)
            return 3;
    pool_free(p, o);
    pool_free(p, z);
    return 0;
}

static void test_poison(void)
{
    struct outcome o;
    int p = 0x50, a = 0x41, none = -1;
    run("poison", poison_child, &p, &o);
    expect_ok("poison", &o);
    run("poison=0x41", poison_child, &a, &o);
    expect_ok("poison=0x41", &o);
    /* The zeros written before pool_free stay (valgrind would rightly call
     * reading them a use of undefined memory). */
    if (!under_memory_tool()) {
        run("poison=0x41,no-poison", poison_child, &none, &o);
        expect_ok("no-poison", &o);
    }
}

/* ---- uaf ----------------------------------------------------------------- */

static int uaf_child(void *arg)
{
    (void)arg;
    struct pool_head *p = pool_create("guarded", 64, 0);
    volatile char *o = pool_alloc(p);
    o[40] = 1;
    pool_free(p, (void *)o);
    o[40] = 2; /* the bug: the page is gone */
    return 0;
}

static void test_uaf(void)
{
    struct outcome o;
    run("uaf,no-cache,no-global", uaf_child, NULL, &o);
    if (!CHECK(died_of(&o, SIGSEGV) || died_of(&o, SIGBUS)))
        fprintf(stderr, "  uaf: status 0x%x\n%s\n", o.status, o.err);
    /* Cached objects stay mapped: uaf alone does not fault at pool_free. */
    run("uaf,no-cache,no-global,cache,global", uaf_child, NULL, &o);
    expect_ok("uaf with caches", &o);
}

/* ---- all the checks at once, from several threads ------------------------ */

#define T_THREADS 4
#define T_ROUNDS 20000

static struct pool_head *t_pools[2];
static void *volatile t_mailbox[T_THREADS];

static void *traffic(void *arg)
{
    int self = (int)(intptr_t)arg;
    unsigned x = 0x9e3779b9u * (unsigned)(self + 1);
    void *held[8] = {0};
    for (int r = 0; r < T_ROUNDS; r++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        int k = x % 8, which = k & 1;
        if (held[k] != NULL) {
            pool_free(t_pools[which], held[k]);
            held[k] = NULL;
        } else if ((held[k] = pool_alloc(t_pools[which])) != NULL) {
            memset(held[k], self, which ? 200 : 64);
        }
        /* hand an object to the next thread, which frees it */
        if ((x & 63) == 0) {
            void *o = pool_alloc(t_pools[0]);
            void *old = __atomic_exchange_n(&t_mailbox[(self + 1) % T_THREADS], o,
                                            __ATOMIC_ACQ_REL);
            if (old != NULL)
                pool_free(t_pools[0], old);
        }
    }
    for (int k = 0; k < 8; k++)
        if (held[k] != NULL)
            pool_free(t_pools[k & 1], held[k]);
    return NULL;
}

static int threads_child(void *arg)
{
    (void)arg;
    pthread_t t[T_THREADS];
    t_pools[0] = pool_create("thr_small", 64, 0);
    t_pools[1] = pool_create("thr_big", 200, POOL_F_SHARED);
    for (int i = 0; i < T_THREADS; i++)
        pthread_create(&t[i], NULL, traffic, (void *)(intptr_t)i);
    for (int i = 0; i < T_THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < T_THREADS; i++)
        if (t_mailbox[i] != NULL)
            pool_free(t_pools[0], t_mailbox[i]);
    for (int i = 0; i < 2; i++) {
        struct pool_stats s = STATS(t_pools[i]);
        if (s.used != 0 || s.allocated != s.cached + s.shared)
            return 1;
    }
    return 0;
}

static void test_threads(void)
{
    struct outcome o;
    /* No false alarm when objects cross threads under every check. */
    run("tag,integrity,caller,backup,poison", threads_child, NULL, &o);
    expect_ok("threads: tag,integrity,caller,backup,poison", &o);
    run("tag,integrity,cold-first,no-global", threads_child, NULL, &o);
    expect_ok("threads: cold-first,no-global", &o);
    run("tag,no-cache", threads_child, NULL, &o);
    expect_ok("threads: no-cache", &o);
}

int main(void)
{
    test_words();
    test_fail();
    test_merge();
    test_cold_first();
    test_layers();
    test_poison();
    test_threads();
    if (under_memory_tool()) {
        fprintf(stderr, "note: under ASan or valgrind: the write-after-free cases are skipped\n");
    } else {
        test_write_after_free();
        test_tag();
        test_caller();
        test_uaf();
    }
    return check_done();
}
