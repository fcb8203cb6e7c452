/* The preload's read-only segment between its two code segments (the
 * unwinding tables, and the constants of std and of the backtrace's crates)
 * is only read by error reports and backtraces: a program that makes
 * ordinary calls of every kind (blocks of every class and large ones,
 * realloc growing and shrinking, calloc, aligned blocks, a second thread,
 * a fork) has none of its pages resident, so that the pages it maps of the
 * library are those of the hot segment and of the first read-only one
 * (scripts/check-code-layout.sh bounds those). A page read there would map
 * the kernel's whole fault-around window of it.
 * malloc and free go through volatile pointers: nothing is elided. */
#include "preload.h"
#include <pthread.h>
#include <sys/wait.h>

static void *(*volatile get)(size_t) = malloc;
static void (*volatile put)(void *) = free;

static void *work(void *arg)
{
    (void)arg;
    for (size_t n = 1; n <= (1 << 22); n *= 3) {
        unsigned char *p = get(n);
        CHECK(p != NULL);
        p[0] = p[n - 1] = 1;
        unsigned char *q = realloc(p, 2 * n + 1);
        CHECK(q != NULL && q[0] == 1);
        q = realloc(q, n / 2 + 1);
        CHECK(q != NULL && q[0] == 1);
        put(q);
        unsigned char *z = calloc(n, 1);
        CHECK(z != NULL && z[n - 1] == 0);
        put(z);
        void *a = NULL;
        CHECK(posix_memalign(&a, 4096, n) == 0 && a != NULL);
        put(a);
    }
    return NULL;
}

/* Resident KiB of the read-only mapping of libpools_malloc.so that lies
 * between its two executable ones; -1 if there is no such mapping. */
static long cold_resident(void)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    CHECK(f != NULL);
    char line[512];
    int mine = 0, exec_seen = 0, cold = 0;
    long rss = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char perm[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perm) == 3 && strchr(line, '/')) {
            mine = strstr(line, "libpools_malloc") != NULL;
            cold = mine && exec_seen == 1 && strcmp(perm, "r--p") == 0;
            exec_seen += mine && perm[2] == 'x';
        } else if (sscanf(line, "%lx-%lx %7s", &a, &b, perm) == 3) {
            mine = cold = 0;
        }
        long v;
        if (cold && sscanf(line, "Rss: %ld", &v) == 1)
            rss = rss < 0 ? v : rss + v;
    }
    fclose(f);
    return exec_seen == 2 ? rss : -1;
}

int main(void)
{
    require_preload();
    work(NULL);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, work, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        work(NULL);
        _exit(cold_resident() == 0 ? 0 : 1);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    long rss = cold_resident();
    if (rss != 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "the cold read-only segment has %ld KiB resident (child: %s)\n", rss,
                WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "none" : "some, or failed");
        return 1;
    }
    printf("test_cold_pages: no page of the cold read-only segment resident "
           "after every kind of call, in a thread and in a forked child\n");
    return 0;
}
