/* The preload under an address-space limit (issue #14, item 4): a process
 * started with RLIMIT_AS at 64 MiB (what `ulimit -v 65536` sets, and where
 * glibc's malloc runs `ls` and `python3 -c pass`) must start, allocate, and
 * when the space runs out get NULL with errno ENOMEM from every entry point,
 * never an abort; after freeing, allocation works again. The limited
 * process is this program re-executed, so that the limit holds from its
 * first allocation; an alarm catches a hang. */
#include "preload.h"
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/wait.h>

enum { MIB = 1 << 20, LIMIT = 64 * MIB };

/* Allocates blocks of `size` bytes (chained through their first word) until
 * the allocator says ENOMEM; returns the chain. */
static void *exhaust(size_t size, size_t *count)
{
    void *head = NULL;
    for (;;) {
        errno = 0;
        void **p = malloc(size);
        if (p == NULL) {
            CHECK(errno == ENOMEM);
            break;
        }
        *p = head;
        head = p;
        ++*count;
    }
    return head;
}

static void release(void *head)
{
    while (head != NULL) {
        void *next = *(void **)head;
        free(head);
        head = next;
    }
}

static int limited(void)
{
    size_t small = 0, large = 0;
    /* Large blocks first, then small ones in what is left, and in the space
     * of the last large block (what is left after the large blocks alone
     * may be too little for a span: each large mapping also takes two
     * guard pages of the address space). */
    void *l = exhaust(3 * MIB, &large);
    CHECK(l != NULL);
    void *last = l;
    l = *(void **)l;
    free(last);
    void *s = exhaust(100, &small);
    CHECK(large > 0 && small > 0);
    /* Every entry point fails cleanly while nothing is left. */
    void *p;
    errno = 0;
    CHECK(calloc(1, 5 * MIB) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(posix_memalign(&p, 1 << 21, 5 * MIB) == ENOMEM);
    errno = 0;
    CHECK(aligned_alloc(4096, 5 * MIB) == NULL && errno == ENOMEM);
    void *keep = s;
    s = *(void **)s;
    errno = 0;
    CHECK(realloc(keep, 9 * MIB) == NULL && errno == ENOMEM);
    free(keep);
    release(l);
    release(s);
    /* Everything came back: allocation works again. */
    void *again = malloc(8 * MIB);
    CHECK(again != NULL);
    memset(again, 1, 8 * MIB);
    free(again);
    printf("under a 64 MiB limit: %zu blocks of 3 MiB, %zu of 100 bytes, then ENOMEM: ok\n",
           large, small);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "limited") == 0)
        return limited();
    require_preload();
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        struct rlimit lim = {LIMIT, LIMIT};
        CHECK(setrlimit(RLIMIT_AS, &lim) == 0);
        alarm(60);
        execl("/proc/self/exe", argv[0], "limited", (char *)NULL);
        _exit(127);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "under a 64 MiB address-space limit: %s %d\n",
                WIFSIGNALED(status) ? "killed by signal" : "exit status",
                WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        return 1;
    }
    return 0;
}
