/* larson-like malloc micro-benchmark: THREADS threads each own a window of
 * SLOTS blocks; each step frees a random slot and allocates a block of a
 * random size (16..MAX bytes) into it. Every ROUND steps a thread hands its
 * whole window to a spare slot and takes the previous one, so blocks are freed by a thread other
 * than the one that allocated them. Prints operations per second.
 *   larson THREADS SECONDS [MAX] */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { SLOTS = 1000, ROUND = 10000 };

static atomic_int stop;
static size_t max_size = 1000;
static int nthreads;
static void **windows[64], **spare;
static pthread_mutex_t swap_lock = PTHREAD_MUTEX_INITIALIZER;

struct arg { int id; uint64_t ops; };

static void *worker(void *p)
{
    struct arg *a = p;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(a->id + 1), ops = 0;
    void **win = windows[a->id];
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        for (int i = 0; i < ROUND; i++) {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            size_t s = (size_t)(rng >> 20) % SLOTS;
            size_t n = 16 + (size_t)(rng >> 40) % (max_size - 15);
            free(win[s]);
            win[s] = malloc(n);
            ((char *)win[s])[0] = (char)i;
        }
        ops += ROUND;
        /* Trade windows through one spare: the blocks this thread
         * allocated are freed by whichever thread takes them next. */
        pthread_mutex_lock(&swap_lock);
        void **tmp = spare;
        spare = win;
        win = tmp;
        pthread_mutex_unlock(&swap_lock);
    }
    a->ops = ops;
    return NULL;
}

int main(int argc, char **argv)
{
    nthreads = argc > 1 ? atoi(argv[1]) : 4;
    double secs = argc > 2 ? atof(argv[2]) : 2;
    if (argc > 3) max_size = (size_t)atol(argv[3]);
    if (nthreads < 1 || nthreads > 64 || max_size < 16) return 2;
    for (int t = 0; t < nthreads; t++) {
        windows[t] = calloc(SLOTS, sizeof(void *));
        for (int s = 0; s < SLOTS; s++) windows[t][s] = malloc(16 + (size_t)s % (max_size - 15));
    }
    spare = calloc(SLOTS, sizeof(void *));
    for (int s = 0; s < SLOTS; s++) spare[s] = malloc(16);
    pthread_t th[64];
    struct arg args[64];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int t = 0; t < nthreads; t++) {
        args[t].id = t;
        pthread_create(&th[t], NULL, worker, &args[t]);
    }
    usleep((useconds_t)(secs * 1e6));
    atomic_store(&stop, 1);
    uint64_t ops = 0;
    for (int t = 0; t < nthreads; t++) { pthread_join(th[t], NULL); ops += args[t].ops; }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%.0f\n", (double)ops / el);
    return 0;
}
