/* POOL_DEBUG=fail=N and POOL_PROFILE=1 under the preload. Each case runs in
 * a child started afresh (the preload reads the environment at its first
 * malloc, before main):
 *
 *   - fail=10 (POOL_FAIL_SEED fixed): 10 % +- 2 % of malloc(64) with warm
 *     caches, of calloc and of large mallocs return NULL with ENOMEM;
 *     without it, none does;
 *   - POOL_PROFILE=1 POOL_STATS=1: the profile printed at exit names the
 *     child's call sites (built with -rdynamic) with exact counts. */
#include "preload.h"
#include <errno.h>
#include <stdint.h>
#include <sys/wait.h>

#define CALLS 10000

static void say(const char *s)
{
    ssize_t n = write(2, s, strlen(s));
    (void)n;
}

/* Counts the NULLs (each with ENOMEM) of `calls` allocations of `size`. */
static unsigned long nulls_of(size_t size, int zeroed, int calls)
{
    unsigned long nulls = 0;
    for (int i = 0; i < calls; i++) {
        errno = 0;
        void *p = zeroed ? calloc(1, size) : malloc(size);
        if (p == NULL) {
            CHECK(errno == ENOMEM);
            nulls++;
        }
        free(p);
    }
    return nulls;
}

static int fail_child(int expect_failures)
{
    require_preload();
    /* Warm the cache of the class. */
    void *warm[64];
    for (int i = 0; i < 64; i++)
        warm[i] = malloc(64);
    for (int i = 0; i < 64; i++)
        free(warm[i]);
    unsigned long small = nulls_of(64, 0, CALLS);
    unsigned long zeroed = nulls_of(64, 1, CALLS);
    unsigned long large = nulls_of(100000, 0, CALLS);
    char line[160];
    snprintf(line, sizeof line, "fail child: %lu %lu %lu NULLs\n", small, zeroed, large);
    say(line);
    if (expect_failures) {
        CHECK(small >= 800 && small <= 1200);
        CHECK(zeroed >= 800 && zeroed <= 1200);
        CHECK(large >= 800 && large <= 1200);
    } else {
        CHECK(small == 0 && zeroed == 0 && large == 0);
    }
    return 0;
}

__attribute__((noinline)) void *profiled_malloc_site(size_t n)
{
    void *p = malloc(n);
    __asm__ volatile("" ::: "memory");
    return p;
}

__attribute__((noinline)) void profiled_free_site(void *p)
{
    free(p);
    __asm__ volatile("" ::: "memory");
}

static int profile_child(void)
{
    require_preload();
    static void *kept[777];
    for (int i = 0; i < 777; i++)
        kept[i] = profiled_malloc_site(100); /* the 112-byte class */
    for (int i = 0; i < 777; i++)
        profiled_free_site(kept[i]);
    void *big = profiled_malloc_site(200000);
    profiled_free_site(big);
    return 0;
}

/* Runs this program as `argv0 mode` with `env` added; returns its status
 * and its stderr in `err`. */
static int run(const char *argv0, const char *mode, char *const env[], char *err, size_t len)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        for (int i = 0; env[i] != NULL; i++)
            putenv(env[i]);
        execl(argv0, argv0, mode, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t n;
    while (got < len - 1 && (n = read(fds[0], err + got, len - 1 - got)) > 0)
        got += (size_t)n;
    err[got] = 0;
    close(fds[0]);
    int status = -1;
    CHECK(waitpid(pid, &status, 0) == pid);
    return status;
}

/* The profile line of `symbol` for pool `pool`: its alloc and free counts. */
static int site(const char *err, const char *pool, const char *symbol, unsigned long c[4])
{
    char needle[96];
    snprintf(needle, sizeof needle, "pool=%s at 0x", pool);
    for (const char *l = err; *l; l++) {
        const char *eol = strchr(l, '\n');
        if (eol == NULL)
            eol = l + strlen(l);
        const char *at = strstr(l, needle);
        const char *sym = strstr(l, symbol);
        if (at != NULL && at < eol && sym != NULL && sym < eol &&
            sscanf(l, " %lu allocs %lu bytes %lu frees %lu bytes", &c[0], &c[1], &c[2], &c[3]) == 4)
            return 1;
        l = eol;
        if (*l == 0)
            break;
    }
    return 0;
}

static char err[1 << 17];

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "fail") == 0)
        return fail_child(1);
    if (argc > 1 && strcmp(argv[1], "nofail") == 0)
        return fail_child(0);
    if (argc > 1 && strcmp(argv[1], "profile") == 0)
        return profile_child();
    require_preload();

    char *fail_env[] = { "POOL_DEBUG=fail=10", "POOL_FAIL_SEED=7", NULL };
    int st = run(argv[0], "fail", fail_env, err, sizeof err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "fail=10 child: status 0x%x:\n%s\n", st, err);
        return 1;
    }
    printf("%s", err);
    char *plain_env[] = { NULL };
    st = run(argv[0], "nofail", plain_env, err, sizeof err);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "child without fail: status 0x%x:\n%s\n", st, err);
        return 1;
    }

    char *prof_env[] = { "POOL_PROFILE=1", "POOL_STATS=1", NULL };
    st = run(argv[0], "profile", prof_env, err, sizeof err);
    unsigned long c[4] = { 0, 0, 0, 0 };
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(err, "Memory profile: ") != NULL;
    ok = ok && site(err, "malloc-112", "profiled_malloc_site+0x", c) && c[0] == 777 &&
         c[1] == 777 * 112 && c[2] == 0;
    ok = ok && site(err, "malloc-112", "profiled_free_site+0x", c) && c[0] == 0 && c[2] == 777 &&
         c[3] == 777 * 112;
    ok = ok && site(err, "(large)", "profiled_malloc_site+0x", c) && c[0] == 1 && c[1] >= 200000;
    ok = ok && site(err, "(large)", "profiled_free_site+0x", c) && c[2] == 1 && c[3] >= 200000;
    if (!ok) {
        fprintf(stderr, "profile child: status 0x%x, counts %lu %lu %lu %lu:\n%s\n", st, c[0], c[1],
                c[2], c[3], err);
        return 1;
    }
    printf("POOL_DEBUG=fail=10 and POOL_PROFILE=1 under the preload: ok\n");
    return 0;
}
