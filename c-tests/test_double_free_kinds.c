/*
 * test_double_free_kinds: every kind of double pool_free, at 8 B, 4 KiB and
 * 256 KiB, aborts in the default mode with a message naming the pool:
 *
 *   immediate     free(o); free(o)
 *   same size     free(o); 2 MiB of other objects of the pool freed;
 *                 free(o) (o has left the thread cache for the shared cache)
 *   other sizes   free(o); objects of four other pools freed; free(o)
 *   other thread  free(o) in one thread, free(o) again in another
 *   thread exit   free(o) by a thread that exits (its cache is drained),
 *                 free(o) again by the main thread
 *   span          free(o); evicted and flushed back to its span (a kept
 *                 object holds the span); free(o)  (spans: up to 32 KiB)
 *
 * Each case runs in a child, which must die of SIGABRT with "double free"
 * and the pool's name on stderr. Its harmless twin runs the same steps but
 * frees a fresh object of the pool instead of o the second time, and must
 * exit 0. Frees go through a volatile function pointer, so that the
 * compiler cannot drop the misuse.
 */
#include <pools.h>
#include "check.h"
#include "child.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void (*volatile do_free)(struct pool_head *, void *) = pool_free;

enum kind { IMMEDIATE, SAME_SIZE, OTHER_SIZES, OTHER_THREAD, THREAD_EXIT, SPAN, KINDS };
static const char *names[] = { "immediate", "same size", "other sizes",
                               "other thread", "thread exit", "span" };

static struct pool_head *pool;
static void *obj;

static void *free_obj(void *arg)
{
    (void)arg;
    do_free(pool, obj);
    return NULL;
}

static void in_thread(void *(*fn)(void *))
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, NULL) != 0 || pthread_join(t, NULL) != 0)
        _exit(6);
}

static void *alloc_obj(void *arg)
{
    (void)arg;
    obj = pool_alloc(pool);
    return NULL;
}

/* The child: frees o, does what the kind says, then frees o again (or, the
 * twin, a fresh object). */
static void child(size_t size, enum kind k, int twin)
{
    pool = pool_create("dfkinds", size, 0);
    void *keep = pool_alloc(pool); /* keeps the span mapped */
    if (!pool || !keep)
        _exit(3);
    if (k == THREAD_EXIT) {
        in_thread(alloc_obj);
        if (!obj)
            _exit(3);
        memset(obj, 0x5a, size);
        in_thread(free_obj); /* frees o, then exits: its cache drains */
    } else {
        obj = pool_alloc(pool);
        if (!obj)
            _exit(3);
        memset(obj, 0x5a, size);
        do_free(pool, obj);
    }
    if (k == SAME_SIZE) {
        size_t N = (2u << 20) / (size < 32 ? 32 : size) + 64;
        void **many = malloc(N * sizeof *many);
        if (!many)
            _exit(4);
        for (size_t i = 0; i < N; i++)
            if (!(many[i] = pool_alloc(pool)))
                _exit(4);
        for (size_t i = 0; i < N; i++)
            do_free(pool, many[i]);
        free(many);
    }
    if (k == OTHER_SIZES) {
        size_t other[] = { 24, 200, 1000, 3000 };
        for (unsigned i = 0; i < 4; i++) {
            struct pool_head *q = pool_create("dfother", other[i], 0);
            void *a[64];
            for (int j = 0; j < 64; j++)
                if (!(a[j] = pool_alloc(q)))
                    _exit(4);
            for (int j = 0; j < 64; j++)
                do_free(q, a[j]);
        }
    }
    if (k == SPAN) {
        pool_evict_local_cache();
        pool_flush(pool);
    }
    if (twin) {
        void *fresh = k == OTHER_THREAD ? NULL : pool_alloc(pool);
        if (k == OTHER_THREAD) {
            /* The same steps in the other thread, on a live object. */
            obj = pool_alloc(pool);
            fresh = obj;
        }
        if (!fresh)
            _exit(4);
        if (k == OTHER_THREAD)
            in_thread(free_obj);
        else
            do_free(pool, fresh);
        do_free(pool, keep);
        /* Everything back to the allocator underneath: under valgrind, the
         * objects of a pool on malloc that the caches still hold would be
         * leaks at exit (their links are stored protected, which memcheck
         * cannot follow). */
        if (pool_destroy(pool) != NULL)
            _exit(7);
        _exit(0);
    }
    if (k == OTHER_THREAD)
        in_thread(free_obj);
    else
        do_free(pool, obj);
    _exit(0); /* not caught */
}

/* What run() gives the child. */
struct job {
    size_t size;
    enum kind k;
    int twin;
};

static void child_main(const void *arg)
{
    const struct job *j = arg;
    child(j->size, j->k, j->twin);
}

static void run(size_t size, enum kind k, int twin)
{
    struct job job = { size, k, twin };
    char buf[2048];
    int status = run_in_child(child_main, &job, 20, buf, sizeof buf);
    CHECK(status != -1);
    if (twin) {
        if (!CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0))
            fprintf(stderr, "  %zu B, %s, harmless twin: status %#x: %s\n", size, names[k],
                    status, buf);
        return;
    }
    int ok = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && strstr(buf, "double free") &&
             strstr(buf, "\"dfkinds\"");
    if (!CHECK(ok))
        fprintf(stderr, "  %zu B, %s: not caught: status %#x, stderr: %s\n", size, names[k],
                status, buf);
}

int main(void)
{
    /* Objects of pools backed by malloc go back to malloc at a flush: what
     * the key word then holds is malloc's business. */
    const char *backend = getenv("POOL_BACKEND");
    int spans = !(backend && strcmp(backend, "malloc") == 0);
    size_t sizes[] = { 8, 4096, 256 * 1024 };
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++)
        for (int k = 0; k < KINDS; k++) {
            if (k == SPAN && (!spans || sizes[i] > 32 * 1024))
                continue;
            run(sizes[i], (enum kind)k, 0);
            run(sizes[i], (enum kind)k, 1);
        }
    return check_done();
}
