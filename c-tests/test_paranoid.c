/*
 * test_paranoid: the options for the paranoid, off by default.
 *  - "zero-on-free": what a use after free reads of a freed object is
 *    zero (all but the 8-byte key word at offset 16 that marks it free);
 *    a pool created before the option keeps the old bytes. A double free
 *    still aborts (in a child: SIGABRT and "double free").
 *  - "random-order": a span carved while it is set hands out its objects
 *    in a random order; one carved after "no-random-order" in address
 *    order. (Spans only: skipped under POOL_BACKEND=malloc.)
 * The reads after free go through a volatile function pointer.
 */
#include <pools.h>
#include "check.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned char read_byte(const void *p, size_t i) { return ((const unsigned char *)p)[i]; }
static unsigned char (*volatile read_after_free)(const void *, size_t) = read_byte;
static void (*volatile do_free)(struct pool_head *, void *) = pool_free;

/* Bytes of `o` (of `size`) that are not zero, the key word left out. */
static size_t nonzero_after_free(const void *o, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < size; i++)
        if ((i < 16 || i >= 24) && read_after_free(o, i) != 0)
            n++;
    return n;
}

/* Descents in a run of `n` allocations from a fresh span of `size`. */
static int descents(struct pool_head *p, int n)
{
    void *o[256];
    int d = 0;
    for (int i = 0; i < n; i++) {
        o[i] = pool_alloc(p);
        if (!CHECK(o[i] != NULL))
            return -1;
        memset(o[i], i, pool_size(p) < 32 ? pool_size(p) : 32);
        for (int j = 0; j < i; j++)
            if (o[j] == o[i]) {
                CHECK(o[j] != o[i]);
                return -1;
            }
        if (i > 0 && o[i] < o[i - 1])
            d++;
    }
    for (int i = 0; i < n; i++)
        pool_free(p, o[i]);
    return d;
}

int main(void)
{
    enum { SIZE = 200 };
    struct pool_head *plain = pool_create("plain", SIZE, 0);
    CHECK(pool_set_debugging("zero-on-free") == 0);
    struct pool_head *zero = pool_create("zero", SIZE, 0);
    for (int round = 0; round < 2; round++) {
        unsigned char *a = pool_alloc(plain), *b = pool_alloc(zero);
        if (!CHECK(a && b))
            return check_done();
        memset(a, 0x5a, SIZE);
        memset(b, 0x5a, SIZE);
        pool_free(plain, a);
        pool_free(zero, b);
        /* Under ASan and valgrind these reads after free are reported as
         * what they are (the library marks cached objects unaddressable). */
        if (!under_memory_checker()) {
            CHECK(nonzero_after_free(a, SIZE) == SIZE - 8); /* the default keeps them */
            CHECK_EQ(nonzero_after_free(b, SIZE), 0);
        }
    }
    /* A double free under zero-on-free still aborts. */
    fflush(stdout);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        void *o = pool_alloc(zero);
        do_free(zero, o);
        do_free(zero, o);
        _exit(0);
    }
    close(fds[1]);
    char msg[1024] = { 0 };
    size_t n = 0;
    ssize_t r;
    while (n < sizeof msg - 1 && (r = read(fds[0], msg + n, sizeof msg - 1 - n)) > 0)
        n += (size_t)r;
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT && strstr(msg, "double free"));
    CHECK(pool_set_debugging("no-zero-on-free") == 0);

    const char *backend = getenv("POOL_BACKEND");
    if (!(backend && strcmp(backend, "malloc") == 0)) {
        /* Sizes no other pool of this test uses: each gets fresh spans. */
        CHECK(pool_set_debugging("random-order") == 0);
        struct pool_head *shuffled = pool_create("shuffled", 720, 0);
        int d = descents(shuffled, 200);
        CHECK(pool_set_debugging("no-random-order") == 0);
        struct pool_head *ordered = pool_create("ordered", 752, 0);
        int e = descents(ordered, 200);
        if (!CHECK(d > 40 && e == 0))
            fprintf(stderr, "  descents: random-order %d of 199, default %d\n", d, e);
        CHECK(pool_destroy(shuffled) == NULL && pool_destroy(ordered) == NULL);
    }
    return check_done();
}
