/* The large cache advises blocks idle for a whole window with MADV_FREE,
 * after which the kernel may take their pages at any time (they then read
 * as zero). That is only harmless if no advised page belongs to a block the
 * program holds: the cache must take a block off its lists before advising
 * it and put it back only after. Here the kernel's worst case is played by
 * this program's own madvise, which the preload calls (the executable's
 * definition comes first, -rdynamic): MADV_FREE becomes MADV_DONTNEED (the
 * pages go at once), after a 2 ms pause that leaves time for any thread
 * that could take the block meanwhile to do so and write it.
 *
 * Threads share the cache with blocks handed to the next thread, which
 * checks and frees them. The sizes change with each second (the cache's
 * windows are seconds of the monotonic clock): small blocks in even
 * seconds, big ones in odd seconds, so that each size's blocks idle in the
 * cache for a window and are advised when the next window of their size
 * starts, while its threads ask for them again. One thread calls
 * malloc_trim now and then. The test fails unless some blocks were
 * advised. */
#include "preload.h"
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

static long advised; /* atomic */

int madvise(void *addr, size_t len, int advice)
{
    if (advice == MADV_FREE) {
        __atomic_fetch_add(&advised, 1, __ATOMIC_RELAXED);
        usleep(2000);
        advice = MADV_DONTNEED;
    }
    return (int)syscall(SYS_madvise, addr, len, (long)advice);
}

enum { THREADS = 4, RING = 16, SECONDS = 5 };
static struct {
    unsigned char *p;
    size_t n;
    unsigned char seed;
} inbox[THREADS][RING];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int stop;

static uint64_t next(uint64_t *r)
{
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    return *r;
}

static void fill(unsigned char *p, size_t n, unsigned char s)
{
    for (size_t i = 0; i < n; i += 509)
        p[i] = (unsigned char)(s + i);
    p[n - 1] = (unsigned char)(s + n - 1);
}

static void check_at(const unsigned char *p, size_t n, unsigned char s, size_t i,
                     const char *who)
{
    if (p[i] != (unsigned char)(s + i)) {
        fprintf(stderr, "%s: block %p of %zu bytes: byte %zu is %#x, not %#x (advised: %ld)\n",
                who, (const void *)p, n, i, p[i], (unsigned char)(s + i),
                __atomic_load_n(&advised, __ATOMIC_RELAXED));
        exit(1);
    }
}

/* Every page of the block holds `fill`'s pattern (or the check names the
 * first wrong byte, and `who` found it). */
static void check(const unsigned char *p, size_t n, unsigned char s, const char *who)
{
    for (size_t i = 0; i < n; i += 509)
        check_at(p, n, s, i, who);
    check_at(p, n, s, n - 1, who);
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg, to = (id + 1) % THREADS;
    uint64_t r = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
    while (!stop) {
        struct timespec ts;
        CHECK(clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0);
        size_t n = ts.tv_sec % 2 == 0 ? 33000 + next(&r) % 300000
                                      : (1 << 20) + next(&r) % (2 << 20);
        int zeroed = next(&r) & 1;
        unsigned char *p = zeroed ? calloc(1, n) : malloc(n);
        CHECK(p != NULL);
        if (zeroed)
            CHECK(p[0] == 0 && p[n / 2] == 0 && p[n - 1] == 0);
        unsigned char s = (unsigned char)next(&r);
        fill(p, n, s);
        int k = (int)(next(&r) % RING);
        pthread_mutex_lock(&lock);
        unsigned char *in = inbox[id][k].p;
        size_t inn = inbox[id][k].n;
        unsigned char ins = inbox[id][k].seed;
        inbox[id][k].p = NULL;
        if (!inbox[to][k].p) {
            inbox[to][k].p = p;
            inbox[to][k].n = n;
            inbox[to][k].seed = s;
            p = NULL;
        }
        pthread_mutex_unlock(&lock);
        if (in) {
            check(in, inn, ins, "next thread");
            free(in);
        }
        if (p) {
            check(p, n, s, "own thread");
            free(p);
        }
    }
    return NULL;
}

static void *trimmer(void *arg)
{
    (void)arg;
    while (!stop) {
        usleep(1500000);
        malloc_trim(0);
    }
    return NULL;
}

int main(void)
{
    require_preload();
    pthread_t t[THREADS + 1];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0);
    CHECK(pthread_create(&t[THREADS], NULL, trimmer, NULL) == 0);
    sleep(SECONDS);
    stop = 1;
    for (int i = 0; i <= THREADS; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    for (int i = 0; i < THREADS; i++)
        for (int k = 0; k < RING; k++)
            if (inbox[i][k].p) {
                check(inbox[i][k].p, inbox[i][k].n, inbox[i][k].seed, "main thread");
                free(inbox[i][k].p);
            }
    long a = __atomic_load_n(&advised, __ATOMIC_RELAXED);
    CHECK(a > 0); /* the test saw the cache advise blocks */
    printf("large cache: %ld blocks advised (their pages taken at once), none in use: ok\n", a);
    return 0;
}
