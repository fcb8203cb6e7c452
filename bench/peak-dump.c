/* bench/peak-dump.c: a helper preloaded after libpools_malloc.so that shows
 * what the pools hold at a program's peak of anonymous memory. A thread of
 * its own reads /proc/self/status every half millisecond and, at each new
 * peak of RssAnon, keeps pool_dump_to_buffer's report; at exit it prints
 * the last one kept to stderr. A measuring tool, not part of the library
 * (its thread and buffers add some 200 KiB to the figure it prints):
 *   gcc -O2 -shared -fPIC bench/peak-dump.c -o peak-dump.so -lpthread
 *   LD_PRELOAD="target/release/libpools_malloc.so ./peak-dump.so" sqlite3 ...
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

long pool_dump_to_buffer(char *buf, size_t len, int how, int max);

static char kept[1 << 16], scratch[1 << 16];
static long peak;

static long rss_anon(void)
{
    char b[4096];
    int fd = open("/proc/self/status", O_RDONLY);
    long n = fd < 0 ? -1 : read(fd, b, sizeof b - 1);
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return 0;
    b[n] = 0;
    char *p = strstr(b, "RssAnon:");
    return p ? atol(p + 8) : 0;
}

static void *watch(void *arg)
{
    for (;;) {
        long v = rss_anon();
        if (v > peak && pool_dump_to_buffer(scratch, sizeof scratch, 0, 0) > 0) {
            memcpy(kept, scratch, sizeof kept);
            peak = v;
        }
        usleep(500);
    }
    return arg;
}

__attribute__((constructor)) static void start(void)
{
    pthread_t t;
    pthread_create(&t, NULL, watch, NULL);
}

__attribute__((destructor)) static void report(void)
{
    dprintf(2, "peak RssAnon %ld KiB\n%s", peak, kept);
}
