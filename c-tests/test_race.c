/*
 * test_race.c: the seeds' race, reproduced and beaten.
 *
 * HAProxy-like traffic (more threads than cores; 2 MiB, 48 KiB and 64 B
 * objects; objects freed by other threads; a thread calling pool_flush and
 * pool_gc at random moments) over the `uaf` backend (with the caches on,
 * UAF_CACHED), which unmaps every
 * object the moment it goes back, so a read of a returned object faults.
 * Each run happens in a forked child, configured through the environment
 * before its first pool call (every variant over the default 4 buckets):
 *
 *   - the legacy `dwcas` shared cache (lockless pop) must die of SIGSEGV or
 *     SIGBUS: with POOL_RACE_WINDOW widening the window between reading the
 *     head and reading head->next, within seconds;
 *   - the default `xchg`, with the same window, must survive the same
 *     traffic with no fault and balanced counters; so must `rwlock`,
 *     `locked` and `none`;
 *   - with `fail=5` injected, callers get NULL with ENOMEM, `failed` counts
 *     every one of them, and the counters still balance.
 *
 *   test_race                          the CI run (about 25 s)
 *   test_race soak VARIANT SECONDS [WINDOW]
 *                                      one long run, for `make verify`
 */
#include <pools.h>
#include "check.h"

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The guarded backend with both caches on: `uaf` alone would switch them
 * off (as in HAProxy), and the caches are what this test races. */
#define UAF_CACHED "uaf,cache,global"

#define WORKERS 6
#define HELD 4
#define KINDS 3
#define PATTERN_BYTES 64

static const size_t kind_size[KINDS] = { 2u << 20, 48u << 10, 64 };
static const char *const kind_name[KINDS] = { "race_2m", "race_48k", "race_64" };
static struct pool_head *pools[KINDS];

static volatile int stop;
/* Cross-thread hand-off: a worker leaves an object here for another to free. */
static void *handoff[WORKERS];
static unsigned long nulls[WORKERS];
static unsigned long bad_errno[WORKERS];
static unsigned long corrupt[WORKERS];

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* The first bytes of a held object say which object it is. */
static void stamp(void *p, int kind)
{
    uint64_t *w = p;
    for (size_t i = 0; i < PATTERN_BYTES / 8; i++)
        w[i] = (uintptr_t)p ^ (uint64_t)kind ^ (i * 0x9e3779b97f4a7c15ull);
}

static int intact(void *p, int kind)
{
    const uint64_t *w = p;
    for (size_t i = 0; i < PATTERN_BYTES / 8; i++)
        if (w[i] != ((uintptr_t)p ^ (uint64_t)kind ^ (i * 0x9e3779b97f4a7c15ull)))
            return 0;
    return 1;
}

/* Objects travel with their kind in the low bits (objects are 16-aligned). */
static void give_back(int self, void *p, int kind)
{
    if (!intact(p, kind))
        corrupt[self]++;
    pool_free(pools[kind], p);
}

static void *worker(void *arg)
{
    int self = (int)(intptr_t)arg;
    uint64_t rng = 0x243f6a8885a308d3ull * (uint64_t)(self + 1);
    void *held[HELD] = { 0 };
    int held_kind[HELD] = { 0 };

    while (!stop) {
        uint64_t r = next_rand(&rng);
        int kind = (r & 7) == 0 ? 0 : (r & 7) < 4 ? 1 : 2;
        int slot = (int)((r >> 8) % HELD);

        if (held[slot]) {
            if ((r >> 16) & 1) {
                /* hand it to another thread, freeing what was waiting */
                uintptr_t v = (uintptr_t)held[slot] | (uintptr_t)held_kind[slot];
                int to = (int)((r >> 20) % WORKERS);
                uintptr_t old = (uintptr_t)__atomic_exchange_n(&handoff[to], (void *)v,
                                                               __ATOMIC_ACQ_REL);
                if (old)
                    give_back(self, (void *)(old & ~(uintptr_t)15), (int)(old & 15));
            } else {
                give_back(self, held[slot], held_kind[slot]);
            }
            held[slot] = NULL;
        }

        errno = 0;
        void *p = pool_alloc(pools[kind]);
        if (!p) {
            nulls[self]++;
            if (errno != ENOMEM)
                bad_errno[self]++;
            continue;
        }
        stamp(p, kind);
        held[slot] = p;
        held_kind[slot] = kind;
    }
    for (int i = 0; i < HELD; i++)
        if (held[i])
            give_back(self, held[i], held_kind[i]);
    return NULL; /* the thread exits with a warm cache: it must drain */
}

static void *flusher(void *arg)
{
    uint64_t rng = 0x13198a2e03707344ull;
    (void)arg;
    while (!stop) {
        uint64_t r = next_rand(&rng);
        struct timespec ts = { 0, (long)(r % 2000000) };
        nanosleep(&ts, NULL);
        if (r & (1 << 24))
            pool_gc(NULL);
        else
            pool_flush(pools[(r >> 32) % KINDS]);
    }
    return NULL;
}

/* One run in this process: returns 0 when the counters balance, nothing was
 * corrupted and every NULL came with ENOMEM and was counted. */
static int traffic(double seconds)
{
    for (int k = 0; k < KINDS; k++) {
        pools[k] = pool_create(kind_name[k], kind_size[k], 0);
        if (!pools[k]) {
            perror("pool_create");
            return 1;
        }
    }
    pthread_t t[WORKERS], f;
    for (int i = 0; i < WORKERS; i++)
        pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i);
    pthread_create(&f, NULL, flusher, NULL);
    struct timespec ts = { (time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9) };
    nanosleep(&ts, NULL);
    stop = 1;
    for (int i = 0; i < WORKERS; i++)
        pthread_join(t[i], NULL);
    pthread_join(f, NULL);
    for (int i = 0; i < WORKERS; i++) {
        uintptr_t v = (uintptr_t)__atomic_load_n(&handoff[i], __ATOMIC_ACQUIRE);
        if (v)
            give_back(0, (void *)(v & ~(uintptr_t)15), (int)(v & 15));
    }

    unsigned long total_nulls = 0, total_failed = 0, errs = 0;
    for (int i = 0; i < WORKERS; i++) {
        total_nulls += nulls[i];
        errs += bad_errno[i] + corrupt[i];
    }
    int rc = errs ? 1 : 0;
    if (errs)
        fprintf(stderr, "race: %lu objects corrupted or NULL without ENOMEM\n", errs);
    for (int k = 0; k < KINDS; k++) {
        struct pool_stats s;
        pool_get_stats(pools[k], &s);
        total_failed += s.failed;
        if (s.used != 0 || s.allocated != s.cached + s.shared) {
            fprintf(stderr, "race: %s unbalanced: allocated %lu, used %lu, cached %lu, shared %lu\n",
                    s.name, s.allocated, s.used, s.cached, s.shared);
            rc = 1;
        }
    }
    const char *debug = getenv("POOL_DEBUG");
    if (debug && strstr(debug, "fail=") && total_nulls == 0) {
        fprintf(stderr, "race: failures were injected but no allocation failed\n");
        rc = 1;
    }
    if (total_failed != total_nulls) {
        fprintf(stderr, "race: %lu NULL returns but failed counts %lu\n", total_nulls, total_failed);
        rc = 1;
    }
    pool_dump(2);
    fprintf(stderr, "race: %lu injected or real failures\n", total_nulls);
    for (int k = 0; k < KINDS; k++) {
        pool_flush(pools[k]);
        if (pool_destroy(pools[k]) != NULL)
            rc = 1;
    }
    return rc;
}

/* Runs the traffic in a child with this configuration; returns its wait
 * status and the seconds it lasted. */
static int run_child(const char *variant, const char *debug, const char *window,
                     double seconds, double *lasted)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("POOL_SHARED_CACHE", variant, 1);
        /* The default buckets, every variant over them: the bucketed dwcas
         * must still fault, the bucketed xchg must not. */
        setenv("POOL_SHARED_BUCKETS", "4", 1);
        setenv("POOL_DEBUG", debug, 1);
        setenv("POOL_RACE_WINDOW", window, 1);
        _exit(traffic(seconds));
    }
    int status = 0;
    waitpid(pid, &status, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *lasted = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return status;
}

static int faulted(int status)
{
    return WIFSIGNALED(status) && (WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS);
}

static void expect_clean(const char *variant, const char *debug, const char *window, double secs)
{
    double lasted;
    int status = run_child(variant, debug, window, secs, &lasted);
    printf("%-7s debug=%-14s window=%-5s %5.1f s: %s\n", variant, debug, window, lasted,
           WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "clean" : "FAILED");
    CHECK(WIFEXITED(status));
    CHECK_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "soak") == 0) {
        double lasted;
        int status = run_child(argv[2], UAF_CACHED, argc > 4 ? argv[4] : "0", atof(argv[3]), &lasted);
        if (faulted(status))
            printf("%s: fault (signal %d) after %.1f s\n", argv[2], WTERMSIG(status), lasted);
        else
            printf("%s: %s after %.1f s\n", argv[2],
                   WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "clean" : "FAILED", lasted);
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
    }

    /* The legacy pop must fault: a few tries of up to 10 s each. */
    int crashed = 0;
    for (int i = 0; i < 3 && !crashed; i++) {
        double lasted;
        int status = run_child("dwcas", UAF_CACHED, "2000", 10, &lasted);
        crashed = faulted(status);
        printf("dwcas   debug=" UAF_CACHED " window=2000  %5.1f s: %s\n", lasted,
               crashed ? "faulted, as the seed describes" : "did not fault");
    }
    CHECK(crashed);

    /* The same traffic and window must leave every other variant intact. */
    expect_clean("xchg", UAF_CACHED, "2000", 6);
    expect_clean("rwlock", UAF_CACHED, "2000", 3);
    expect_clean("locked", UAF_CACHED, "2000", 3);
    expect_clean("none", UAF_CACHED, "0", 2);
    /* Fault injection: NULL with ENOMEM, counted, counters balanced. */
    expect_clean("xchg", "fail=5", "0", 3);
    return check_done();
}
