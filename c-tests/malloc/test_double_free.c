/* A second free of a block that is still free aborts with a message, in the
 * default mode: small blocks (8 B, 4 KiB) through their class pool's free
 * key (the message names the pointer and the class), large ones (256 KiB)
 * through the cache of freed mappings. In child processes, which must die
 * of SIGABRT with "double free" on stderr; each twin (free, malloc again,
 * free) must exit 0. The frees go through a volatile pointer. */
#include "preload.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void (*volatile do_free)(void *) = free;

static void run(size_t size, int twin)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        char *p = malloc(size);
        if (!p)
            _exit(3);
        memset(p, 0x5a, size);
        do_free(p);
        if (twin) {
            char *q = malloc(size);
            do_free(q);
            _exit(q ? 0 : 4);
        }
        do_free(p);
        _exit(0); /* not caught */
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
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        return;
    }
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT || !strstr(msg, "double free")) {
        fprintf(stderr, "%zu B: expected SIGABRT and a double-free message, got status %d, \"%s\"\n",
                size, status, msg);
        exit(1);
    }
    printf("%zu B: aborted with: %s", size, msg);
}

int main(void)
{
    require_preload();
    size_t sizes[] = { 8, 4096, 256 * 1024 };
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        run(sizes[i], 0);
        run(sizes[i], 1);
    }
    puts("test_double_free: ok");
    return 0;
}
