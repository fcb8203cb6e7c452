/*
 * test_memory: memory goes back to the OS. Two threads allocate and fill
 * 64 MiB of 64-byte objects in all, free them and exit; after pool_flush and
 * pool_gc the pool holds nothing and resident memory (/proc/self/statm) is
 * back within 1 MiB, plus TOLERANCE_KIB, of the baseline taken before.
 *
 * The RSS check holds because small objects come from spans that are
 * unmapped once empty (POOL_BACKEND=spans, the default). It does not hold
 * with POOL_BACKEND=malloc under glibc: objects allocated by worker threads
 * live in glibc's per-thread arenas, whose memory malloc_trim does not give
 * back; measured by hand on the 2-core machine:
 *   POOL_BACKEND=malloc target/c-tests/glibc/test_memory force
 *   -> "rss above baseline: 46600 KiB" and a failed check (75308 KiB in
 *   another run; 67040 KiB with jemalloc preloaded).
 * So the check runs only where spans are in use: not with
 * POOL_BACKEND=malloc (as `make c-tests-jemalloc` runs the tests), unless
 * the first argument is "force".
 */
#include <pools.h>
#include "check.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define THREADS 2
#define OBJ_SIZE 64
#define TOTAL ((size_t)64 << 20)

/*
 * Beyond the 1 MiB of the target: memory that exists only after the run and
 * is not the pool's objects. Under glibc the worker threads' own small
 * mallocs (thread start-up, TLS destructor registration) may grow a libc
 * arena by its 128 KiB top pad; the span region map gains a 4 KiB page per
 * 8 GiB of address space the spans used. Measured on the 2-core machine:
 * +48 to +216 KiB with glibc, +0 KiB with musl (static).
 */
#define TOLERANCE_KIB 256

static struct pool_head *pool;

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = -1;
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* The baseline's threads: one object each, so that every per-thread
 * structure a worker creates (thread cache, TLS, libc arena) has existed
 * once before the baseline is read. */
static void *warm(void *arg)
{
    (void)arg;
    void *o = pool_alloc(pool);
    CHECK(o != NULL);
    pool_free(pool, o);
    return NULL;
}

static void *fill(void *arg)
{
    (void)arg;
    size_t n = TOTAL / THREADS / OBJ_SIZE;
    /* From mmap: a large malloc would move glibc's trim threshold. */
    void **objs = mmap(NULL, n * sizeof(void *), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(objs != MAP_FAILED);
    if (objs == MAP_FAILED)
        return NULL;
    for (int round = 0; round < 2; round++) {
        size_t got = 0;
        for (size_t i = 0; i < n; i++) {
            objs[i] = pool_alloc(pool);
            if (!objs[i])
                break;
            memset(objs[i], (int)i, OBJ_SIZE);
            got++;
        }
        CHECK_EQ(got, n);
        for (size_t i = 0; i < got; i++)
            pool_free(pool, objs[i]);
    }
    munmap(objs, n * sizeof(void *));
    return NULL;
}

/* Runs `fn` on THREADS threads and waits for them to exit. */
static void run(void *(*fn)(void *))
{
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK_EQ(pthread_create(&th[i], NULL, fn, NULL), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
}

int main(int argc, char **argv)
{
    const char *backend = getenv("POOL_BACKEND");
    int force = argc > 1 && strcmp(argv[1], "force") == 0;
    int spans = !backend || strcmp(backend, "malloc") != 0;

    /* stdio's buffer exists before the baseline. */
    printf("test_memory: %d threads, %zu MiB of %d-byte objects\n", THREADS,
           TOTAL >> 20, OBJ_SIZE);
    fflush(stdout);

    pool = pool_create("memory", OBJ_SIZE, 0);
    CHECK(pool != NULL);
    if (!pool)
        return check_done();
    run(warm);
    pool_flush(pool);
    pool_gc(NULL);
    long base = rss_kib();
    CHECK(base > 0);

    run(fill);
    long peak = rss_kib();
    pool_flush(pool);
    pool_gc(NULL);
    long after = rss_kib();

    struct pool_stats st;
    CHECK_EQ(pool_get_stats(pool, &st), 0);
    CHECK_EQ(st.allocated, 0);
    CHECK_EQ(st.used, 0);
    /* The run did use the memory: otherwise the check below proves nothing. */
    CHECK(peak - base > (long)(TOTAL >> 10) / 2);

    printf("rss baseline %ld KiB, after the run %ld KiB, after flush + gc %ld KiB; "
           "rss above baseline: %ld KiB\n", base, peak, after, after - base);
    if (under_memory_checker())
        printf("under ASan or valgrind: RSS check skipped (their own memory is resident too)\n");
    else if (spans || force)
        CHECK(after - base <= 1024 + TOLERANCE_KIB);
    else
        printf("POOL_BACKEND=malloc: RSS check skipped (see the comment at the top)\n");

    CHECK(pool_destroy(pool) == NULL);
    return check_done();
}
