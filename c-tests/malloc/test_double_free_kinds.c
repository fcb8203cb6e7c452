/* Every kind of double free under the preload, at 8 B, 4 KiB and 256 KiB,
 * aborts in the default mode with a message:
 *
 *   immediate       free(p); free(p)
 *   same size       free(p); 2 MiB of other blocks of its size freed; free(p)
 *                   (p has left the thread cache)
 *   other sizes     free(p); blocks of four other sizes freed; free(p)
 *   other thread    free(p) in one thread, free(p) again in another
 *   thread exit     free(p) by a thread that exits, free(p) by main
 *   span            free(p); malloc_trim (the pools' gc puts it back on its
 *                   span, which a kept block holds); free(p)
 *   realloc 0       realloc(p, 0) (which frees), then free(p)
 *   realloc after   free(p), then realloc(p, 1)
 *   realloc grow    free(p), then realloc(p, 2 * size)
 *   realloc keep    free(p), then realloc(p, size - size / 4) (a size the
 *                   block would be kept for)
 *
 * Each case runs in a child, which must die of SIGABRT with
 * "libpools" and "double free" on stderr (for a large block whose mapping
 * was already unmapped, "invalid pointer": it is no block of ours any
 * more). Each harmless twin runs the same steps but gives the second call a
 * fresh block, and must exit 0. The calls go through volatile pointers. */
#include "preload.h"
#include "../child.h"
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void (*volatile do_free)(void *) = free;
static void *(*volatile do_realloc)(void *, size_t) = realloc;
static void *(*volatile do_malloc)(size_t) = malloc;

enum kind { IMMEDIATE, SAME_SIZE, OTHER_SIZES, OTHER_THREAD, THREAD_EXIT, SPAN, REALLOC_0,
            REALLOC_AFTER, REALLOC_GROW, REALLOC_KEEP, KINDS };
static const char *names[] = { "immediate",   "same size",     "other sizes", "other thread",
                               "thread exit", "span",          "realloc 0",   "realloc after",
                               "realloc grow", "realloc keep" };

static void *obj;
static size_t obj_size;

static void *free_obj(void *arg)
{
    (void)arg;
    do_free(obj);
    return NULL;
}

static void *alloc_obj(void *arg)
{
    (void)arg;
    obj = do_malloc(obj_size);
    return NULL;
}

static void in_thread(void *(*fn)(void *))
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, NULL) != 0 || pthread_join(t, NULL) != 0)
        _exit(6);
}

static void child(size_t size, enum kind k, int twin)
{
    obj_size = size;
    void *keep = do_malloc(size); /* keeps the span mapped */
    if (!keep)
        _exit(3);
    if (k == THREAD_EXIT) {
        in_thread(alloc_obj);
        if (!obj)
            _exit(3);
        memset(obj, 0x5a, size);
        in_thread(free_obj);
    } else {
        obj = do_malloc(size);
        if (!obj)
            _exit(3);
        memset(obj, 0x5a, size);
        if (k == REALLOC_0)
            do_realloc(obj, 0);
        else
            do_free(obj);
    }
    if (k == SAME_SIZE) {
        size_t n = (2u << 20) / (size < 16 ? 16 : size) + 64;
        void **many = do_malloc(n * sizeof *many);
        if (!many)
            _exit(4);
        for (size_t i = 0; i < n; i++)
            if (!(many[i] = do_malloc(size)))
                _exit(4);
        for (size_t i = 0; i < n; i++)
            do_free(many[i]);
        do_free(many);
    }
    if (k == OTHER_SIZES) {
        size_t other[] = { 24, 200, 1000, 3000 };
        for (unsigned i = 0; i < 4; i++) {
            void *a[64];
            for (int j = 0; j < 64; j++)
                if (!(a[j] = do_malloc(other[i])))
                    _exit(4);
            for (int j = 0; j < 64; j++)
                do_free(a[j]);
        }
    }
    if (k == SPAN)
        malloc_trim(0);
    if (twin) {
        obj = do_malloc(size);
        if (!obj)
            _exit(4);
    }
    if (k == OTHER_THREAD)
        in_thread(free_obj);
    else if (k == REALLOC_AFTER)
        obj = do_realloc(obj, 1);
    else if (k == REALLOC_GROW)
        obj = do_realloc(obj, 2 * size);
    else if (k == REALLOC_KEEP)
        obj = do_realloc(obj, size - size / 4);
    else
        do_free(obj);
    if (twin) {
        if (k == REALLOC_AFTER || k == REALLOC_GROW || k == REALLOC_KEEP)
            do_free(obj);
        do_free(keep);
        _exit(0);
    }
    _exit(0); /* not caught */
}

static int failures;

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
    char msg[2048];
    int status = run_in_child(child_main, &job, 20, msg, sizeof msg);
    CHECK(status != -1);
    if (twin) {
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "%zu B, %s, harmless twin: status %#x, \"%s\"\n", size, names[k],
                    status, msg);
            failures++;
        }
        return;
    }
    int said = strstr(msg, "libpools") &&
               (strstr(msg, "double free") || (size > 32768 && strstr(msg, "invalid pointer")));
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT || !said) {
        fprintf(stderr, "%zu B, %s: not caught: status %#x, \"%s\"\n", size, names[k], status,
                msg);
        failures++;
        return;
    }
    printf("%zu B, %s: %s", size, names[k], msg);
}

int main(void)
{
    require_preload();
    size_t sizes[] = { 8, 4096, 256 * 1024 };
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++)
        for (int k = 0; k < KINDS; k++) {
            run(sizes[i], (enum kind)k, 0);
            run(sizes[i], (enum kind)k, 1);
        }
    if (failures) {
        fprintf(stderr, "test_double_free_kinds: %d cases failed\n", failures);
        return 1;
    }
    puts("test_double_free_kinds: ok");
    return 0;
}
