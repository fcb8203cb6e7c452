/* bench/malloc-trace.c: an LD_PRELOAD interposer on glibc's malloc that
 * writes every call to MALLOC_TRACE_DIR/PID.trace (and the command line to
 * PID.cmd), for bench/class-model.py. Records are four little-endian
 * 64-bit words: op (1 alloc, 2 free, 3 realloc), then for an alloc the
 * block and its size, for a free the block, for a realloc the old block,
 * the new size and the new block. A child after fork starts a file of its
 * own. A measuring tool, not part of the library:
 *   gcc -O2 -shared -fPIC bench/malloc-trace.c -o malloc-trace.so -lpthread
 *   MALLOC_TRACE_DIR=dir LD_PRELOAD=./malloc-trace.so sqlite3 ...
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

struct rec {
    uint64_t op, a, b, c;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int fd = -1;
static pid_t owner;
static struct rec buf[4096];
static int nbuf;

static void flush(void)
{
    if (fd >= 0 && nbuf > 0 && write(fd, buf, (size_t)nbuf * sizeof buf[0]) < 0)
        fd = -1;
    nbuf = 0;
}

static void open_files(pid_t pid)
{
    const char *dir = getenv("MALLOC_TRACE_DIR");
    char name[512], cmd[4096];
    if (fd >= 0)
        close(fd);
    nbuf = 0; /* the parent's unwritten records are the parent's */
    snprintf(name, sizeof name, "%s/%d.cmd", dir ? dir : "/tmp", (int)pid);
    int in = open("/proc/self/cmdline", O_RDONLY), out = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ssize_t n = in >= 0 ? read(in, cmd, sizeof cmd) : 0;
    if (out >= 0 && n > 0 && write(out, cmd, (size_t)n) < 0)
        n = 0;
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    snprintf(name, sizeof name, "%s/%d.trace", dir ? dir : "/tmp", (int)pid);
    fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    owner = pid;
}

static void record(uint64_t op, uint64_t a, uint64_t b, uint64_t c)
{
    pthread_mutex_lock(&lock);
    pid_t pid = getpid();
    if (pid != owner)
        open_files(pid);
    buf[nbuf++] = (struct rec){op, a, b, c};
    if (nbuf == (int)(sizeof buf / sizeof buf[0]))
        flush();
    pthread_mutex_unlock(&lock);
}

__attribute__((destructor)) static void at_exit(void)
{
    pthread_mutex_lock(&lock);
    if (getpid() == owner)
        flush();
    pthread_mutex_unlock(&lock);
}

void *malloc(size_t n)
{
    void *p = __libc_malloc(n);
    record(1, (uint64_t)p, n, 0);
    return p;
}

void *calloc(size_t k, size_t n)
{
    void *p = __libc_calloc(k, n);
    record(1, (uint64_t)p, (uint64_t)k * n, 0);
    return p;
}

void *realloc(void *old, size_t n)
{
    void *p = __libc_realloc(old, n);
    record(3, (uint64_t)old, n, (uint64_t)p);
    return p;
}

void free(void *p)
{
    if (p) {
        record(2, (uint64_t)p, 0, 0);
        __libc_free(p);
    }
}

void *memalign(size_t align, size_t n)
{
    void *p = __libc_memalign(align, n);
    record(1, (uint64_t)p, n, 0);
    return p;
}

void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }

int posix_memalign(void **out, size_t align, size_t n)
{
    void *p = memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

void *valloc(size_t n) { return memalign(4096, n); }
