/*
 * test_debug_interior: under each POOL_DEBUG option that a pool takes at
 * its creation (README, "Hardening": the cost of catching an interior
 * pool_free at the call), a pool_free of a pointer 16 bytes into an
 * object, made where the default mode would take the thread cache's hit
 * path (a free and an alloc first open the pool's entry), aborts at that
 * call with "invalid free". In the default mode the same call returns
 * (the object is caught later, when it reaches its span: test_interior_free);
 * the "default" row checks that, so that this test notices when the hit
 * path starts to check (then README and the cost table change).
 * Each case runs in a child; its harmless twin frees the object itself and
 * must exit 0. The frees go through a volatile function pointer. Pools on
 * spans only: under POOL_BACKEND=malloc there is nothing to check.
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

/* The options that send every call of a pool created under them to the
 * debugging path; "" is the default mode. */
static const char *const options[] = {
    "tag",          "caller", "cold-first", "poison",   "integrity",
    "zero-on-free", "backup", "no-cache",   "no-global", "",
};

struct job {
    const char *opt;
    size_t size;
    int twin;
};

static void child(const void *arg)
{
    const struct job *j = arg;
    if (*j->opt && pool_set_debugging(j->opt) != 0)
        _exit(7);
    struct pool_head *p = pool_create("interior", j->size, 0);
    if (!p)
        _exit(3);
    void *keep = pool_alloc(p); /* keeps the span mapped */
    void *warm = pool_alloc(p);
    if (!keep || !warm)
        _exit(3);
    do_free(p, warm); /* opens the entry: in the default mode the next free hits */
    char *o = pool_alloc(p);
    if (!o)
        _exit(3);
    memset(o, 0x5a, j->size);
    do_free(p, j->twin ? o : o + 16);
    if (j->twin)
        do_free(p, keep); /* nothing held at the exit: memcheck's leak check */
    _exit(j->twin ? 0 : 6); /* 6: the call returned */
}

int main(void)
{
    const char *backend = getenv("POOL_BACKEND");
    if (backend && strcmp(backend, "malloc") == 0) {
        puts("test_debug_interior: POOL_BACKEND=malloc, nothing to check");
        CHECK(1);
        return check_done();
    }
    const size_t sizes[] = { 64, 4096 };
    for (unsigned i = 0; i < sizeof options / sizeof *options; i++)
        for (unsigned s = 0; s < sizeof sizes / sizeof *sizes; s++) {
            const char *name = *options[i] ? options[i] : "default";
            char buf[1024];
            struct job twin = { options[i], sizes[s], 1 }, bug = { options[i], sizes[s], 0 };
            int st = run_in_child(child, &twin, 10, buf, sizeof buf);
            if (!CHECK(exited_zero(st)))
                fprintf(stderr, "  %s, %zu B, twin: status %#x: %s\n", name, sizes[s], st, buf);
            st = run_in_child(child, &bug, 10, buf, sizeof buf);
            int at_call = *options[i] || under_memory_checker(); /* debugging path */
            int ok = at_call ? died_of(st, SIGABRT) && strstr(buf, "invalid free")
                             : st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 6;
            if (!CHECK(ok))
                fprintf(stderr, "  %s, %zu B: %s: status %#x, stderr: %s\n", name, sizes[s],
                        at_call ? "not caught at the call" : "caught at the call", st, buf);
        }
    return check_done();
}
