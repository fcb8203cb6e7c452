/* Under the preload, free of a pointer inside a block or just past one, at
 * 8 B, 4 KiB and 256 KiB, aborts with a message ("invalid pointer" from the
 * preload, which checks every pointer against the region map, or "invalid
 * free" from the span): at the free itself, except for a pointer just past
 * the newest 4 KiB block, which starts a slot no block was handed from and
 * is caught when it reaches its span (here: freed by a thread that exits,
 * then malloc_trim). In children, which must die of SIGABRT with the
 * message; each twin frees the block itself and must exit 0. The frees go
 * through a volatile function pointer. */
#include "preload.h"
#include "../child.h"
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void (*volatile do_free)(void *) = free;
static void *(*volatile do_malloc)(size_t) = malloc;

static size_t g_size, g_off;
static int g_twin;

static void *bad_free(void *arg)
{
    (void)arg;
    char *warm = do_malloc(g_size);
    do_free(warm); /* opens the thread cache: the next free hits */
    char *p = do_malloc(g_size);
    if (!p)
        _exit(3);
    memset(p, 0x5a, g_size);
    do_free(g_twin ? p : p + g_off);
    return NULL;
}

static void child(size_t size, size_t off, int twin)
{
    g_size = size, g_off = off, g_twin = twin;
    void *keep = do_malloc(size); /* keeps the span mapped */
    pthread_t t;
    if (!keep || pthread_create(&t, NULL, bad_free, NULL) || pthread_join(t, NULL))
        _exit(3);
    malloc_trim(0);
    do_free(keep);
    _exit(twin ? 0 : 6);
}

static int failures;

/* What run() gives the child. */
struct job {
    size_t size;
    size_t off;
    int twin;
};

static void child_main(const void *arg)
{
    const struct job *j = arg;
    child(j->size, j->off, j->twin);
}

static void run(size_t size, size_t off, int twin)
{
    struct job job = { size, off, twin };
    char msg[1024];
    int status = run_in_child(child_main, &job, 10, msg, sizeof msg);
    CHECK(status != -1);
    if (twin) {
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "%zu B + %zu, twin: status %#x, \"%s\"\n", size, off, status, msg);
            failures++;
        }
        return;
    }
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT ||
        !(strstr(msg, "invalid pointer") || strstr(msg, "invalid free"))) {
        fprintf(stderr, "%zu B + %zu: not caught: status %#x, \"%s\"\n", size, off, status, msg);
        failures++;
        return;
    }
    printf("%zu B + %zu: %s", size, off, msg);
}

int main(void)
{
    require_preload();
    struct { size_t size, off; } cases[] = {
        { 8, 1 }, { 8, 8 }, { 4096, 16 }, { 4096, 2048 }, { 4096, 4096 },
        { 256 * 1024, 16 }, { 256 * 1024, 4096 }, { 256 * 1024, 256 * 1024 },
    };
    for (unsigned i = 0; i < sizeof cases / sizeof *cases; i++) {
        run(cases[i].size, cases[i].off, 0);
        run(cases[i].size, cases[i].off, 1);
    }
    if (failures) {
        fprintf(stderr, "test_interior_free: %d cases failed\n", failures);
        return 1;
    }
    puts("test_interior_free: ok");
    return 0;
}
