/*
 * test_dump_buffer: pool_dump_to_buffer (the dump HAProxy's "show pools"
 * prints, into the caller's memory) and the accessors the HAProxy compat
 * layer reads instead of pool fields (pool_size, pool_get_limit).
 */
#include <pools.h>
#include "check.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* pool_dump_sorted(fd, how, 0) through a pipe, NUL-terminated. */
static char *dump_via_pipe(int how)
{
    static char buf[65536];
    size_t len = 0;
    int fds[2];
    if (!CHECK(pipe(fds) == 0))
        return "";
    CHECK_EQ(pool_dump_sorted(fds[1], how, 0), 0);
    close(fds[1]);
    for (;;) {
        ssize_t n = read(fds[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = 0;
    close(fds[0]);
    return buf;
}

static void test_same_as_pool_dump(void)
{
    static char buf[65536];
    struct pool_head *p = pool_create("in_buffer", 200, POOL_F_EXACT);
    struct pool_head *other = pool_create("in_buffer_too", 64, 0);
    void *o = pool_alloc(p);
    CHECK(o != NULL);
    CHECK(pool_set_limit(p, 7) == 0);
    memset(buf, 0x7f, sizeof buf);
    long n = pool_dump_to_buffer(buf, sizeof buf, POOL_DUMP_BY_NAME, 0);
    const char *want = dump_via_pipe(POOL_DUMP_BY_NAME);
    CHECK(n > 0);
    CHECK_EQ(n, strlen(want));
    CHECK_EQ(buf[n], 0);
    CHECK(strcmp(buf, want) == 0);
    CHECK(strstr(buf, "  - Pool in_buffer (200 bytes) : 1 allocated (200 bytes), 1 used") != NULL);
    CHECK(strstr(buf, ", limit 7") != NULL);
    /* `max` is applied as pool_dump_sorted applies it. */
    CHECK(pool_dump_to_buffer(buf, sizeof buf, POOL_DUMP_BY_SIZE, 1) < n);
    pool_free(p, o);
    CHECK(pool_destroy(other) == NULL);
}

static void test_cut_like_snprintf(void)
{
    char whole[65536], cut[40];
    long n = pool_dump_to_buffer(whole, sizeof whole, POOL_DUMP_UNSORTED, 0);
    CHECK(n > (long)sizeof cut);
    memset(cut, 0x7f, sizeof cut);
    CHECK_EQ(pool_dump_to_buffer(cut, sizeof cut, POOL_DUMP_UNSORTED, 0), n);
    CHECK(memcmp(cut, whole, sizeof cut - 1) == 0);
    CHECK_EQ(cut[sizeof cut - 1], 0);
    /* One byte: only the NUL. */
    cut[0] = 'x';
    cut[1] = 'y';
    CHECK_EQ(pool_dump_to_buffer(cut, 1, POOL_DUMP_UNSORTED, 0), n);
    CHECK_EQ(cut[0], 0);
    CHECK_EQ(cut[1], 'y');
    /* Measuring: no buffer at all. */
    CHECK_EQ(pool_dump_to_buffer(NULL, 0, POOL_DUMP_UNSORTED, 0), n);
}

static void test_errors(void)
{
    char buf[16] = "untouched";
    errno = 0;
    CHECK_EQ(pool_dump_to_buffer(NULL, 10, POOL_DUMP_UNSORTED, 0), -1);
    CHECK_ERRNO(EINVAL);
    errno = 0;
    CHECK_EQ(pool_dump_to_buffer(buf, sizeof buf, 42, 0), -1);
    CHECK_ERRNO(EINVAL);
    errno = 0;
    CHECK_EQ(pool_dump_to_buffer(buf, sizeof buf, POOL_DUMP_BY_NAME, -1), -1);
    CHECK_ERRNO(EINVAL);
    CHECK(strcmp(buf, "untouched") == 0);
}

static void test_accessors(void)
{
    struct pool_head *rounded = pool_create("acc_rounded", 100, 0);
    struct pool_head *exact = pool_create("acc_exact", 100, POOL_F_EXACT);
    CHECK_EQ(pool_size(rounded), 112);
    CHECK_EQ(pool_size(exact), 100);
    CHECK_EQ(pool_get_limit(exact), 0);
    CHECK(pool_set_limit(exact, 12) == 0);
    CHECK_EQ(pool_get_limit(exact), 12);
    CHECK_EQ(pool_get_limit(rounded), 0);
    errno = 0;
    CHECK_EQ(pool_size(NULL), 0);
    CHECK_ERRNO(EINVAL);
    errno = 0;
    CHECK_EQ(pool_get_limit(NULL), 0);
    CHECK_ERRNO(EINVAL);
    CHECK(pool_destroy(exact) == NULL);
    errno = 0;
    CHECK_EQ(pool_size(exact), 0);
    CHECK_ERRNO(EINVAL);
    CHECK(pool_destroy(rounded) == NULL);
}

int main(void)
{
    test_same_as_pool_dump();
    test_cut_like_snprintf();
    test_errors();
    test_accessors();
    return check_done();
}
