/* POOL_DEBUG=canary under the preload (issue #18): every block sits between
 * a sealed header and a canary, checked at free, realloc and
 * malloc_usable_size, and a freed block's marks are checked when it is
 * handed out again. Each case commits its bug in a child started afresh
 * (the option is read when the preload starts) with POOL_DEBUG=canary,
 * which must die of SIGABRT with the case's message; its harmless twin
 * (the same calls without the bug) must exit 0 with the option on; and the
 * bug without the option must go through (exit 0), so that what catches it
 * is the option. Sizes: small blocks of several classes, the largest small
 * one, and large blocks. */
#include "preload.h"
#include "../child.h"
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>

extern char **environ;

/* Through volatile pointers, so the compiler keeps the bugs. */
static void *(*volatile do_malloc)(size_t) = malloc;
static void (*volatile do_free)(void *) = free;
static void *(*volatile do_realloc)(void *, size_t) = realloc;
static void *(*volatile do_memset)(void *, int, size_t) = memset;

static const size_t sizes[] = {8, 100, 4096, 32 * 1024 - 40, 32 * 1024, 262144};
enum { NSIZES = sizeof sizes / sizeof sizes[0] };

struct kase {
    const char *name;
    void (*fn)(size_t n, int bug);
    const char *message; /* in the child's stderr when the bug is caught */
    int small_only;      /* the case needs a block of a class pool */
};

/* The child runs with the option (it checks the usable sizes then). */
static int with_canary;

/* Under the option, a block's usable size is exactly what was asked: the
 * canary starts right after it. */
static void check_usable(void *p, size_t n)
{
    CHECK(!with_canary || malloc_usable_size(p) == n);
}

/* A block with neighbours of its size on both sides, as a program has. */
static char *between(size_t n, char **keep)
{
    keep[0] = do_malloc(n);
    char *p = do_malloc(n);
    keep[1] = do_malloc(n);
    CHECK(keep[0] && p && keep[1]);
    check_usable(p, n);
    return p;
}

static void overflow(size_t n, int bug, size_t len)
{
    char *keep[2];
    char *p = between(n, keep);
    do_memset(p + (bug ? n : 0), 0x41, bug ? len : (len < n ? len : n));
    do_free(p);
}
static void overflow_1(size_t n, int bug) { overflow(n, bug, 1); }
static void overflow_32(size_t n, int bug) { overflow(n, bug, 32); }

static void underflow(size_t n, int bug, size_t len)
{
    char *keep[2];
    char *p = between(n, keep);
    if (bug)
        do_memset(p - len, 0x42, len);
    else
        do_memset(p, 0x42, len < n ? len : n);
    do_free(p);
}
static void underflow_1(size_t n, int bug) { underflow(n, bug, 1); }
static void underflow_32(size_t n, int bug) { underflow(n, bug, 32); }

/* The overflow found by realloc, before it copies. */
static void overflow_realloc(size_t n, int bug)
{
    char *keep[2];
    char *p = between(n, keep);
    if (bug)
        do_memset(p + n, 0x43, 1);
    char *q = do_realloc(p, 2 * n);
    CHECK(q != NULL);
    do_free(q);
}

/* ... and by malloc_usable_size. */
static void overflow_usable(size_t n, int bug)
{
    char *keep[2];
    char *p = between(n, keep);
    if (bug)
        do_memset(p + n, 0x44, 1);
    check_usable(p, n);
    do_free(p);
}

/* A write into a freed block, found when the block is handed out again
 * (the next malloc of its size, from the thread's cache). */
static void write_after_free(size_t n, int bug)
{
    char *keep[2];
    char *p = between(n, keep);
    do_free(p);
    if (bug)
        do_memset(p, 0x45, 1);
    char *q = do_malloc(n);
    CHECK(q != NULL);
    do_free(q);
}

static void double_free(size_t n, int bug)
{
    char *keep[2];
    char *p = between(n, keep);
    do_free(p);
    if (bug)
        do_free(p);
}

static void interior_free(size_t n, int bug)
{
    char *keep[2];
    char *p = between(n, keep);
    do_free(bug ? p + 16 : p);
}

/* The start of the block's slot, where a block of the default layout
 * would begin: not a block under the option. */
static void slot_free(size_t n, int bug)
{
    char *keep[2];
    char *p = between(n, keep);
    do_free(bug ? p - 32 : p);
}

/* malloc(0) gives a block of no bytes: the canary is at its start. */
static void zero_size_write(size_t n, int bug)
{
    (void)n;
    char *p = do_malloc(bug ? 0 : 1);
    CHECK(p != NULL);
    do_memset(p, 0x46, 1);
    do_free(p);
}

/* A block of an aligned request has a canary too. */
static void aligned_overflow(size_t n, int bug)
{
    void *p = NULL;
    CHECK(posix_memalign(&p, 64, n) == 0 && (uintptr_t)p % 64 == 0);
    check_usable(p, n);
    do_memset((char *)p + (bug ? n : 0), 0x47, 1);
    do_free(p);
}

/* calloc's blocks: zeroed, exactly the size asked, with a canary. */
static void calloc_overflow(size_t n, int bug)
{
    unsigned char *p = calloc(1, n);
    CHECK(p != NULL);
    check_usable(p, n);
    for (size_t i = 0; i < n; i++)
        CHECK(p[i] == 0);
    do_memset(p + (bug ? n : 0), 0x48, 1);
    do_free(p);
}

static const struct kase cases[] = {
    {"overflow by 1", overflow_1, "the canary after the block is overwritten", 0},
    {"overflow by 32", overflow_32, "the canary after the block is overwritten", 0},
    {"underflow by 1", underflow_1, "overwritten", 0},
    {"underflow by 32", underflow_32, "overwritten", 0},
    {"overflow, then realloc", overflow_realloc, "realloc(", 0},
    {"overflow, then malloc_usable_size", overflow_usable, "malloc_usable_size(", 0},
    {"write after free", write_after_free, "a free block was written to", 1},
    {"double free", double_free, "double free", 0},
    {"interior free", interior_free, "invalid pointer", 0},
    {"free of the block's slot", slot_free, "invalid pointer", 1},
    {"malloc(0), then a write", zero_size_write, "the canary after the block is overwritten", 0},
    {"posix_memalign(64), overflow by 1", aligned_overflow, "overwritten", 0},
    {"calloc, overflow by 1", calloc_overflow, "the canary after the block is overwritten", 0},
};
enum { NCASES = sizeof cases / sizeof cases[0] };

static int child(int k, size_t n, int bug)
{
    require_preload();
    const char *d = getenv("POOL_DEBUG");
    with_canary = d != NULL && strcmp(d, "canary") == 0;
    cases[k].fn(n, bug);
    return 0;
}

/* What a fresh process runs: case `k` at size `n`, the bug or its twin,
 * with the option or without. */
struct spawn {
    const char *self;
    char args[3][24];
    int canary;
};

static void exec_case(const void *arg)
{
    const struct spawn *s = arg;
    if (s->canary)
        setenv("POOL_DEBUG", "canary", 1);
    else
        unsetenv("POOL_DEBUG");
    char *argv[] = {(char *)s->self, "child", (char *)s->args[0], (char *)s->args[1],
                    (char *)s->args[2], NULL};
    execve(s->self, argv, environ); /* the alarm carries over */
    _exit(127);
}

/* Runs case `k` at size `n` in a fresh process; its stderr into `err`. */
static int run(const char *self, int k, size_t n, int bug, int canary, char *err, size_t len)
{
    struct spawn s = {.self = self, .canary = canary};
    snprintf(s.args[0], sizeof s.args[0], "%d", k);
    snprintf(s.args[1], sizeof s.args[1], "%zu", n);
    snprintf(s.args[2], sizeof s.args[2], "%d", bug);
    int st = run_in_child(exec_case, &s, 30, err, len);
    CHECK(st != -1);
    return st;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "child") == 0)
        return child(atoi(argv[2]), strtoul(argv[3], NULL, 10), atoi(argv[4]));
    require_preload();
    int failed = 0, runs = 0;
    char err[1024];
    for (int k = 0; k < NCASES; k++) {
        for (int s = 0; s < NSIZES; s++) {
            size_t n = sizes[s];
            if (cases[k].small_only && n + 40 > 32 * 1024)
                continue;
            runs++;
            int st = run(argv[0], k, n, 1, 1, err, sizeof err);
            if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT ||
                strstr(err, "libpools_malloc: ") == NULL || strstr(err, cases[k].message) == NULL) {
                fprintf(stderr, "%s, %zu B, canary: expected SIGABRT and \"%s\", got status %d: %s\n",
                        cases[k].name, n, cases[k].message, st, err);
                failed++;
            }
            st = run(argv[0], k, n, 0, 1, err, sizeof err);
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "%s, %zu B, canary, harmless twin: status %d: %s\n", cases[k].name, n,
                        st, err);
                failed++;
            }
            /* Without the option the small blocks' bug goes through; the
             * default mode catches double and interior frees itself, and a
             * large block's header, guard pages and double-free check do not
             * need the option, so it is not asked there. */
            int by_default = cases[k].fn == double_free || cases[k].fn == interior_free ||
                             cases[k].fn == slot_free;
            if (n + 40 <= 32 * 1024 && !by_default) {
                st = run(argv[0], k, n, 1, 0, err, sizeof err);
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                    fprintf(stderr, "%s, %zu B, without canary: expected the bug to go through, got status %d: %s\n",
                            cases[k].name, n, st, err);
                    failed++;
                }
            }
        }
    }
    if (failed) {
        fprintf(stderr, "POOL_DEBUG=canary: %d of %d cases failed\n", failed, runs);
        return 1;
    }
    printf("POOL_DEBUG=canary: %d cases caught with their message, their twins pass: ok\n", runs);
    return 0;
}
