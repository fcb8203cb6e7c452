/*
 * test_double_free: in the default mode, a second pool_free of an object
 * that is still free aborts with a message naming the object and the pool,
 * wherever the object waits: in the thread cache, in the shared cache, or
 * back in its span (another object keeps the span mapped). Objects of 16 B,
 * 4 KiB and 256 KiB (too large for the thread cache: straight to the shared
 * cache; and too large for spans: after a flush it belongs to malloc, which
 * is not checked here). Each case runs in a child, which must die of SIGABRT with the
 * message; its harmless twin (free, allocate again, free) must exit 0.
 * The frees go through a volatile function pointer, so that the compiler
 * cannot drop the misuse.
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

enum where { IN_THREAD_CACHE, IN_SHARED_CACHE, IN_SPAN };
static const char *names[] = { "thread cache", "shared cache", "span" };

/* The child's work: free `o` twice (or, harmless, free, alloc, free). */
static void child(size_t size, enum where w, int harmless)
{
    struct pool_head *p = pool_create("dfree", size, 0);
    void *keep = pool_alloc(p); /* keeps the span mapped */
    void *o = pool_alloc(p);
    if (!p || !keep || !o)
        _exit(3);
    memset(o, 0x5a, size);
    do_free(p, o);
    if (w >= IN_SHARED_CACHE)
        pool_evict_local_cache();
    if (w == IN_SPAN)
        pool_flush(p);
    if (harmless) {
        void *again = pool_alloc(p);
        if (!again)
            _exit(4);
        do_free(p, again);
        do_free(p, keep);
        _exit(pool_destroy(p) == NULL ? 0 : 5);
    }
    do_free(p, o);
    _exit(0); /* not caught */
}

/* What run() gives the child. */
struct job {
    size_t size;
    enum where w;
    int harmless;
};

static void child_main(const void *arg)
{
    const struct job *j = arg;
    child(j->size, j->w, j->harmless);
}

static void run(size_t size, enum where w, int harmless)
{
    struct job job = { size, w, harmless };
    char buf[1024];
    int status = run_in_child(child_main, &job, 10, buf, sizeof buf);
    CHECK(status != -1);
    if (harmless) {
        if (!CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fprintf(stderr, "  %zu B in the %s, harmless twin: status %#x: %s\n", size,
                    names[w], status, buf);
        return;
    }
    int ok = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT &&
             strstr(buf, "double free") && strstr(buf, "\"dfree\"");
    if (!CHECK(ok))
        fprintf(stderr, "  %zu B in the %s: status %#x, stderr: %s\n", size, names[w],
                status, buf);
}

int main(void)
{
    size_t sizes[] = { 16, 4096, 256 * 1024 };
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++)
        for (int w = IN_THREAD_CACHE; w <= (sizes[i] <= 32 * 1024 ? IN_SPAN : IN_SHARED_CACHE); w++) {
            run(sizes[i], (enum where)w, 0);
            run(sizes[i], (enum where)w, 1);
        }
    return check_done();
}
