/* POOL_DEBUG=uaf under the preload: every block is a mapping of its own,
 * unmapped on free, so a use after free faults. Each case runs in a child
 * started afresh (the option is read when the preload starts) with and
 * without POOL_DEBUG=uaf: with it the child must die of SIGSEGV at the use
 * after free; without it, it must get past it and exit 0. Before the use
 * after free each child also checks that the allocator works normally. */
#include "preload.h"
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const size_t sizes[] = {16, 100, 4000, 40000, 1 << 20};
enum { NSIZES = sizeof sizes / sizeof sizes[0] };

/* The child: normal use first, then the use after free of case `k`
 * (0..NSIZES-1: read after free; NSIZES: write through the old pointer
 * after a realloc; NSIZES + 1: read after free once a block of the same
 * size was made). */
static int child(int k)
{
    require_preload();
    /* The allocator still works as a malloc. */
    char *keep[64];
    for (int i = 0; i < 64; i++) {
        size_t n = 1 + (size_t)i * 997;
        keep[i] = (i & 1) ? calloc(1, n) : malloc(n);
        CHECK(keep[i] != NULL && malloc_usable_size(keep[i]) >= n);
        if (i & 1)
            CHECK(keep[i][n - 1] == 0);
        memset(keep[i], i, n);
        keep[i] = realloc(keep[i], n + 5000);
        CHECK(keep[i] != NULL && keep[i][n - 1] == (char)i && keep[i][0] == (char)i);
    }
    void *al = NULL;
    CHECK(posix_memalign(&al, 4096, 100) == 0 && (uintptr_t)al % 4096 == 0);
    free(al);
    for (int i = 0; i < 64; i++)
        free(keep[i]);
    volatile char *p;
    if (k < NSIZES) {
        p = malloc(sizes[k]);
        CHECK(p != NULL);
        p[0] = 1;
        free((void *)p);
        fprintf(stderr, "[uaf child %d: reading freed block]\n", k);
        char c = p[0]; /* faults under uaf */
        (void)c;
    } else if (k == NSIZES) {
        p = malloc(200);
        CHECK(p != NULL);
        char *q = realloc((void *)p, 300);
        CHECK(q != NULL);
        p[100] = 2; /* the old block (past the words a cached block uses): faults under uaf */
        free(q);
    } else {
        /* A block of the same size made after the free must not be given
         * the freed one's addresses, or the use after free reads it. */
        p = malloc(100);
        CHECK(p != NULL);
        free((void *)p);
        char *q = malloc(100);
        CHECK(q != NULL);
        q[0] = 3;
        char c = p[0]; /* faults under uaf */
        (void)c;
        free(q);
    }
    return 0;
}

static int run(const char *self, int k, int uaf)
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        char arg[16];
        snprintf(arg, sizeof arg, "%d", k);
        if (uaf)
            setenv("POOL_DEBUG", "uaf", 1);
        else
            unsetenv("POOL_DEBUG");
        char *argv[] = {(char *)self, "child", arg, NULL};
        execve(self, argv, environ);
        _exit(127);
    }
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    return st;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "child") == 0)
        return child(atoi(argv[2]));
    require_preload();
    for (int k = 0; k <= NSIZES + 1; k++) {
        int with = run(argv[0], k, 1), without = run(argv[0], k, 0);
        if (!WIFSIGNALED(with) || WTERMSIG(with) != SIGSEGV) {
            fprintf(stderr, "case %d with POOL_DEBUG=uaf: expected SIGSEGV, got status %d\n", k,
                    with);
            return 1;
        }
        if (!WIFEXITED(without) || WEXITSTATUS(without) != 0) {
            fprintf(stderr, "case %d without uaf: expected exit 0, got status %d\n", k, without);
            return 1;
        }
    }
    printf("POOL_DEBUG=uaf: use after free faults (and not without it): ok\n");
    return 0;
}
