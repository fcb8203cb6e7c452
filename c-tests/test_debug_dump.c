/*
 * test_debug_dump: per-pool limits (pool_set_limit), the sorted dump
 * (pool_dump_sorted) and POOL_STATS=1 (a dump on stderr at exit, checked in
 * a re-executed child whose stderr is a pipe).
 */
#include <pools.h>
#include "check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Reads `fd` to its end into `buf` (NUL-terminated, truncated to fit),
 * then closes it. */
static void read_all(int fd, char *buf, size_t size)
{
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = 0;
    close(fd);
}

/* Runs pool_dump_sorted(fd, how, max) into a pipe; returns its output. */
static char *dump_to_string(int how, int max, int *rc)
{
    static char buf[65536];
    int fds[2];
    if (!CHECK(pipe(fds) == 0))
        return "";
    *rc = pool_dump_sorted(fds[1], how, max);
    close(fds[1]);
    read_all(fds[0], buf, sizeof buf);
    return buf;
}

static void test_limit(void)
{
    struct pool_head *p = pool_create("capped", 256, 0);
    void *o[4];
    CHECK_EQ(pool_set_limit(p, 3), 0);
    for (int i = 0; i < 3; i++)
        CHECK((o[i] = pool_alloc(p)) != NULL);
    errno = 0;
    CHECK(pool_alloc(p) == NULL);
    CHECK_ERRNO(ENOMEM);
    CHECK_EQ(STATS(p).failed, 1);
    CHECK_EQ(STATS(p).allocated, 3);
    /* A freed object is cached: it comes back without a new allocation. */
    pool_free(p, o[2]);
    CHECK((o[2] = pool_alloc(p)) != NULL);
    CHECK_EQ(STATS(p).allocated, 3);
    /* The cap is shown by pool_dump. */
    int rc = -1;
    const char *out = dump_to_string(POOL_DUMP_BY_NAME, 0, &rc);
    CHECK(strstr(out, "Pool capped (256 bytes) : 3 allocated (768 bytes), 3 used, 0 cached, "
                      "0 shared, 1 failures, 1 users, minavail 0, limit 3") != NULL);
    /* 0 lifts it. */
    CHECK_EQ(pool_set_limit(p, 0), 0);
    CHECK((o[3] = pool_alloc(p)) != NULL);
    CHECK_EQ(STATS(p).allocated, 4);
    /* A lower cap keeps what exists, refuses more. */
    CHECK_EQ(pool_set_limit(p, 2), 0);
    pool_free(p, o[3]);
    pool_evict_local_cache();
    pool_flush(p);
    CHECK_EQ(STATS(p).allocated, 3);
    errno = 0;
    CHECK(pool_alloc(p) == NULL);
    CHECK_ERRNO(ENOMEM);
    CHECK_EQ(STATS(p).failed, 2);
    for (int i = 0; i < 3; i++)
        pool_free(p, o[i]);
    errno = 0;
    CHECK_EQ(pool_set_limit(NULL, 1), -1);
    CHECK_ERRNO(EINVAL);
    CHECK(pool_destroy(p) == NULL);
}

/* Position of the line of pool `name` in `out`, or -1. */
static long line_of(const char *out, const char *name)
{
    char needle[64];
    snprintf(needle, sizeof needle, "  - Pool %s (", name);
    const char *s = strstr(out, needle);
    return s == NULL ? -1 : (long)(s - out);
}

static void test_dump_sorted(void)
{
    struct pool_head *z = pool_create("dz_small", 16, 0);
    struct pool_head *a = pool_create("da_large", 8192, 0);
    struct pool_head *m = pool_create("dm_middle", 512, 0);
    void *oz[100], *oa, *om;
    for (int i = 0; i < 100; i++)
        oz[i] = pool_alloc(z); /* 1600 bytes */
    oa = pool_alloc(a);        /* 8192 bytes */
    om = pool_alloc(m);        /* 512 bytes */
    int rc = -1;
    const char *out = dump_to_string(POOL_DUMP_BY_NAME, 0, &rc);
    CHECK_EQ(rc, 0);
    CHECK(line_of(out, "da_large") >= 0);
    CHECK(line_of(out, "da_large") < line_of(out, "dm_middle"));
    CHECK(line_of(out, "dm_middle") < line_of(out, "dz_small"));
    CHECK(strstr(out, "Total: ") != NULL);

    out = dump_to_string(POOL_DUMP_BY_SIZE, 0, &rc);
    CHECK(line_of(out, "da_large") < line_of(out, "dm_middle"));
    CHECK(line_of(out, "dm_middle") < line_of(out, "dz_small"));

    out = dump_to_string(POOL_DUMP_BY_USAGE, 0, &rc);
    CHECK(line_of(out, "da_large") < line_of(out, "dz_small"));
    CHECK(line_of(out, "dz_small") < line_of(out, "dm_middle"));

    /* max: only the first lines, but the total counts every pool. */
    out = dump_to_string(POOL_DUMP_BY_SIZE, 1, &rc);
    CHECK(line_of(out, "da_large") == 0);
    CHECK(line_of(out, "dm_middle") < 0 && line_of(out, "dz_small") < 0);
    CHECK(strstr(out, "Total: ") != NULL && strstr(out, "Total: 1 pools") == NULL);

    out = dump_to_string(POOL_DUMP_UNSORTED, 0, &rc);
    CHECK(line_of(out, "da_large") >= 0 && line_of(out, "dm_middle") >= 0 &&
          line_of(out, "dz_small") >= 0);

    errno = 0;
    out = dump_to_string(4, 0, &rc);
    CHECK_EQ(rc, -1);
    CHECK_ERRNO(EINVAL);
    CHECK_EQ(strlen(out), 0);
    errno = 0;
    out = dump_to_string(POOL_DUMP_BY_NAME, -1, &rc);
    CHECK_EQ(rc, -1);
    CHECK_ERRNO(EINVAL);

    for (int i = 0; i < 100; i++)
        pool_free(z, oz[i]);
    pool_free(a, oa);
    pool_free(m, om);
    CHECK(pool_destroy(z) == NULL && pool_destroy(a) == NULL && pool_destroy(m) == NULL);
}

/* A merged pool is listed under all its names. */
static void test_merged_names(void)
{
    struct pool_head *a = pool_create("mg_one", 3000, POOL_F_SHARED);
    struct pool_head *b = pool_create("mg_two", 2999, POOL_F_SHARED);
    struct pool_head *c = pool_create("mg_one", 3000, POOL_F_SHARED);
    CHECK(a != NULL && a == b && b == c);
    int rc = -1;
    const char *out = dump_to_string(POOL_DUMP_BY_NAME, 0, &rc);
    if (!CHECK(strstr(out, "  - Pool mg_one,mg_two (3008 bytes) : 0 allocated") != NULL))
        fprintf(stderr, "  dump:\n%s\n", out);
    CHECK_EQ(STATS(a).users, 3);
    CHECK(strcmp(STATS(a).name, "mg_one") == 0);
    CHECK(pool_destroy(a) == NULL && pool_destroy(b) == NULL && pool_destroy(c) == NULL);
}

/* The re-executed child: a few pools in use when the program exits. */
void *at_exit_objects[3]; /* still referenced at exit (not static: kept) */

static int stats_child(void)
{
    struct pool_head *p = pool_create("at_exit", 1000, 0);
    for (int i = 0; i < 3; i++)
        CHECK((at_exit_objects[i] = pool_alloc(p)) != NULL);
    return 0; /* exit() runs the POOL_STATS dump */
}

/* Runs this program again as `stats-child` with POOL_STATS=value; returns
 * its stderr. */
static const char *self_path = "/proc/self/exe";

static const char *run_stats_child(const char *value, int *status)
{
    static char buf[16384];
    int fds[2];
    buf[0] = 0;
    if (!CHECK(pipe(fds) == 0))
        return buf;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        setenv("POOL_STATS", value, 1);
        execl(self_path, "test_debug_dump", "stats-child", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    read_all(fds[0], buf, sizeof buf);
    CHECK(waitpid(pid, status, 0) == pid);
    return buf;
}

static void test_stats_at_exit(void)
{
    int status = -1;
    const char *err = run_stats_child("1", &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (!CHECK(strstr(err, "  - Pool at_exit (1008 bytes) : 3 allocated (3024 bytes), 3 used") != NULL) ||
        !CHECK(strstr(err, "Total: ") != NULL))
        fprintf(stderr, "  POOL_STATS=1 child wrote:\n%s\n", err);
    err = run_stats_child("0", &status);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(strstr(err, "Pool at_exit") == NULL);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "stats-child") == 0)
        return stats_child();
    /* argv[0] when it is a path (under valgrind /proc/self/exe is valgrind) */
    if (strchr(argv[0], '/') != NULL)
        self_path = argv[0];
    test_limit();
    test_dump_sorted();
    test_merged_names();
    test_stats_at_exit();
    return check_done();
}
