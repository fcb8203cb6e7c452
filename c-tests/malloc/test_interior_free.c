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

static void run(size_t size, size_t off, int twin)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        alarm(10);
        child(size, off, twin);
    }
    close(fds[1]);
    char msg[1024];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof msg - 1 && (r = read(fds[0], msg + n, sizeof msg - 1 - n)) > 0)
        n += (size_t)r;
    msg[n] = 0;
    close(fds[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
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
