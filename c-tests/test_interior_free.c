/*
 * test_interior_free: pool_free of a pointer inside an object, or just past
 * the newest one (where no object was ever handed out), of a pool on spans
 * (8 B and 4 KiB objects) aborts with "invalid free":
 *   - with any debugging option (here "zero-on-free"), a pointer inside
 *     an object at the pool_free itself, where the region map says the
 *     pointer starts no object (one just past the newest object starts a
 *     slot of the span: caught as in the default mode);
 *   - in the default mode, the hit path does not look (it costs 8
 *     instructions per pool_free, README): the pointer is caught when it
 *     reaches its span (inside an object: the region map; past the newest
 *     one: the span's bump pointer), here at pool_flush after
 *     pool_evict_local_cache.
 * 256 KiB objects come from malloc, which the pools cannot check.
 * Each case runs in a child, which must die of SIGABRT with the message;
 * its harmless twin frees the object itself and must exit 0. The frees go
 * through a volatile function pointer. (A pointer not aligned to 16 is
 * refused with EINVAL: test_errors.)
 */
#include <pools.h>
#include "check.h"
#include "child.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void (*volatile do_free)(struct pool_head *, void *) = pool_free;

static void child(size_t size, size_t off, int option, int twin)
{
    if (option && pool_set_debugging("zero-on-free") != 0)
        _exit(7);
    struct pool_head *p = pool_create("interior", size, 0);
    void *keep = pool_alloc(p); /* keeps the span mapped */
    void *warm = pool_alloc(p);
    if (!p || !keep || !warm)
        _exit(3);
    do_free(p, warm); /* opens the thread cache's grant: the next free hits */
    char *o = pool_alloc(p); /* `warm` again, the newest object */
    if (!o)
        _exit(3);
    memset(o, 0x5a, size);
    do_free(p, twin ? o : o + off);
    if (option && !twin && off < size)
        _exit(6); /* not caught at the free */
    if (twin)
        do_free(p, keep); /* nothing held at the exit: memcheck's leak check */
    pool_evict_local_cache();
    pool_flush(p);
    _exit(twin ? 0 : 6); /* not caught */
}

/* What run() gives the child. */
struct job {
    size_t size;
    size_t off;
    int option;
    int twin;
};

static void child_main(const void *arg)
{
    const struct job *j = arg;
    child(j->size, j->off, j->option, j->twin);
}

static void run(size_t size, size_t off, int option, int twin)
{
    struct job job = { size, off, option, twin };
    char buf[1024];
    int status = run_in_child(child_main, &job, 10, buf, sizeof buf);
    CHECK(status != -1);
    const char *mode = option ? "zero-on-free" : "default";
    if (twin) {
        if (!CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fprintf(stderr, "  %zu B + %zu, %s, twin: status %#x: %s\n", size, off, mode,
                    status, buf);
        return;
    }
    int ok = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && strstr(buf, "invalid free");
    if (!CHECK(ok))
        fprintf(stderr, "  %zu B + %zu, %s: not caught: status %#x, stderr: %s\n", size, off,
                mode, status, buf);
}

int main(void)
{
    /* Objects of pools backed by malloc are malloc's to check. */
    const char *backend = getenv("POOL_BACKEND");
    if (backend && strcmp(backend, "malloc") == 0) {
        puts("test_interior_free: POOL_BACKEND=malloc, nothing to check");
        CHECK(1);
        return check_done();
    }
    struct { size_t size, off; } cases[] = {
        { 8, 16 }, { 4096, 16 }, { 4096, 2048 }, { 4096, 4096 },
    };
    for (unsigned i = 0; i < sizeof cases / sizeof *cases; i++)
        for (int option = 0; option <= 1; option++) {
            run(cases[i].size, cases[i].off, option, 0);
            run(cases[i].size, cases[i].off, option, 1);
        }
    return check_done();
}
