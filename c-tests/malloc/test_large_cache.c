/* The cache of freed large mappings (> 32 KiB) under the preload: a freed
 * block is reused by the next request of its page class (its old contents
 * prove it is not a fresh, zero mapping), calloc zeroes a reused block,
 * malloc_usable_size is right for reused blocks, the cache keeps what the
 * recent demand was, and malloc_trim (or pool_gc) gives its memory back to
 * the OS (resident set back to within 1 MiB of where it was). Then
 * threads share the cache (cross-thread frees, checksums), and a fork while
 * they do leaves a usable cache in the child (its lock is not left taken). */
#include "preload.h"
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

static void reuse(void)
{
    size_t n = 100000;
    unsigned char *p = malloc(n);
    CHECK(p != NULL && (uintptr_t)p % 16 == 0);
    CHECK(malloc_usable_size(p) >= n);
    memset(p, 0xab, malloc_usable_size(p));
    free(p);
    /* Same page class (25 pages with the header: class of 28 pages). */
    unsigned char *q = malloc(n - 1000);
    CHECK(q == p);
    CHECK(q[100] == 0xab && q[n - 2000] == 0xab); /* not a fresh mapping */
    size_t u = malloc_usable_size(q);
    CHECK(u >= n && u < n + n / 4 + 8192);
    memset(q, 0xcd, u); /* all of it is usable */
    free(q);
    /* calloc of a reused block reads as zero. */
    unsigned char *z = calloc(1, n);
    CHECK(z == p);
    for (size_t i = 0; i < n; i++)
        CHECK(z[i] == 0);
    free(z);
    /* calloc through the count and size product too. */
    memset(p = malloc(n), 0x5a, n);
    free(p);
    uint32_t *w = calloc(n / 4, 4);
    CHECK((void *)w == p);
    for (size_t i = 0; i < n / 4; i++)
        CHECK(w[i] == 0);
    free(w);
    printf("large blocks reused, calloc zeroes them: ok\n");
}

/* Frees what `bounded_and_trimmed` keeps: malloc_trim itself, or the core's
 * pool_gc (exported by the preload too), which calls the malloc_trim of the
 * malloc in use. Returns malloc_trim's result, or 1 for pool_gc. */
static int trim_by(int use_pool_gc)
{
    if (!use_pool_gc)
        return malloc_trim(0);
    void (*gc)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "pool_gc");
    CHECK(gc != NULL);
    gc();
    return 1;
}

static void bounded_and_trimmed(int use_pool_gc)
{
    enum { N = 48, SZ = 1 << 20 };
    static void *b[N];
    malloc_trim(0);
    size_t base = rss_kib();
    for (int i = 0; i < N; i++) {
        b[i] = malloc(SZ);
        CHECK(b[i] != NULL);
        memset(b[i], i + 1, SZ);
    }
    size_t full = rss_kib();
    CHECK(full >= base + N * 1024 - 2048);
    for (int i = 0; i < N; i++)
        free(b[i]);
    size_t after_free = rss_kib();
    /* All kept: they were the recent demand (the cache may bring the large
     * memory up to an eighth above the peak of live large bytes). */
    fprintf(stderr, "rss KiB: base %zu, full %zu, freed %zu\n", base, full, after_free);
    CHECK(after_free + 2048 >= full);
    CHECK(trim_by(use_pool_gc) == 1);
    size_t trimmed = rss_kib();
    fprintf(stderr, "rss KiB trimmed: %zu\n", trimmed);
    CHECK(trimmed + 40 * 1024 <= after_free);
    CHECK(trimmed <= base + 1024);
    CHECK(malloc_trim(0) == 0); /* nothing left */
    printf("large cache keeps the recent demand, %s returns it: ok\n", use_pool_gc ? "pool_gc" : "malloc_trim");
}

/* Threads allocate large blocks of many classes, fill them with a pattern
 * and hand them to the next thread (row `to` of `handoff` is its inbox),
 * which checks and frees them; a block whose slot in the next thread's
 * inbox is taken is checked and freed by its own thread. */
enum { THREADS = 3, ROUNDS = 3000, RING = 64 };
static void *handoff[THREADS][RING];
static size_t handoff_n[THREADS][RING];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int stop_forker;

/* Fails, naming the block, its size, the first wrong byte and `who`
 * checked it, unless `p` holds `fill_block`'s pattern. */
static void check_at(const unsigned char *p, size_t n, size_t i, const char *who)
{
    unsigned char want = (unsigned char)((unsigned char)(n * 31 >> 12) + i);
    if (p[i] != want) {
        fprintf(stderr, "%s: block %p of %zu bytes: byte %zu is %#x, not %#x\n", who,
                (const void *)p, n, i, p[i], want);
        exit(1);
    }
}

static void check_block(const unsigned char *p, size_t n, const char *who)
{
    for (size_t i = 0; i < n; i += 509)
        check_at(p, n, i, who);
    check_at(p, n, n - 1, who);
}

static void fill_block(unsigned char *p, size_t n)
{
    unsigned char s = (unsigned char)(n * 31 >> 12);
    for (size_t i = 0; i < n; i += 509)
        p[i] = (unsigned char)(s + i);
    p[n - 1] = (unsigned char)(s + n - 1);
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    uint64_t r = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
    for (int i = 0; i < ROUNDS; i++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        size_t n = 33000 + (size_t)(r >> 40) % (3 << 20);
        unsigned char *p = (r & 1) ? calloc(1, n) : malloc(n);
        CHECK(p != NULL && malloc_usable_size(p) >= n);
        if (r & 1)
            CHECK(p[0] == 0 && p[n / 2] == 0 && p[n - 1] == 0);
        fill_block(p, n);
        int to = (id + 1) % THREADS, s = (int)((r >> 20) % RING);
        pthread_mutex_lock(&lock);
        /* One the previous thread handed to us, if any. */
        void *in = handoff[id][s];
        size_t inn = handoff_n[id][s];
        handoff[id][s] = NULL;
        if (!handoff[to][s]) {
            handoff[to][s] = p;
            handoff_n[to][s] = n;
            p = NULL;
        }
        pthread_mutex_unlock(&lock);
        if (in) {
            check_block(in, inn, "next thread");
            free(in);
        }
        if (p) {
            check_block(p, n, "own thread");
            free(p);
        }
    }
    return NULL;
}

static void *forker(void *arg)
{
    (void)arg;
    int forks = 0;
    while (!stop_forker && forks < 40) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            alarm(10); /* a lock left taken would hang here */
            for (int i = 0; i < 50; i++) {
                unsigned char *p = malloc(40000 + (size_t)i * 70000);
                if (!p)
                    _exit(2);
                fill_block(p, 40000 + (size_t)i * 70000);
                check_block(p, 40000 + (size_t)i * 70000, "fork child");
                free(p);
            }
            malloc_trim(0);
            _exit(0);
        }
        int st;
        CHECK(waitpid(pid, &st, 0) == pid);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "fork child: status %d\n", st);
            exit(1);
        }
        forks++;
    }
    return NULL;
}

static void threads(void)
{
    pthread_t t[THREADS], f;
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0);
    CHECK(pthread_create(&f, NULL, forker, NULL) == 0);
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    stop_forker = 1;
    CHECK(pthread_join(f, NULL) == 0);
    for (int i = 0; i < THREADS; i++)
        for (int s = 0; s < RING; s++)
            if (handoff[i][s]) {
                check_block(handoff[i][s], handoff_n[i][s], "main thread");
                free(handoff[i][s]);
            }
    printf("large cache shared by threads, forks meanwhile: ok\n");
}

int main(void)
{
    require_preload();
    reuse();
    bounded_and_trimmed(0);
    bounded_and_trimmed(1);
    threads();
    return 0;
}
