/* Small blocks made on one thread and freed on another (issue #19's
 * producer/consumer case): the producer mallocs blocks of 16 to 255 bytes,
 * writes them and passes them through a single-producer single-consumer
 * ring to the consumer, which checks and frees them.
 *
 *   prodcons [BLOCKS]
 *
 * A full or empty ring yields the CPU (the machine may have fewer cores
 * than busy threads). Prints "WALL CPU": seconds of the run and CPU seconds (user + system) of
 * the process. Exits non-zero if a block arrives changed. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

enum { RING = 4096 };

static void *ring[RING];
static _Atomic size_t head, tail; /* written by the producer, the consumer */
static long blocks;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *producer(void *arg)
{
    (void)arg;
    uint32_t r = 12345;
    for (long i = 0; i < blocks; i++) {
        r = r * 1103515245u + 12345u;
        size_t n = 16 + (r >> 16) % 240;
        unsigned char *p = malloc(n);
        if (!p) {
            fprintf(stderr, "prodcons: malloc failed\n");
            exit(1);
        }
        p[0] = (unsigned char)n;
        p[n - 1] = (unsigned char)i;
        size_t h = atomic_load_explicit(&head, memory_order_relaxed);
        while (h - atomic_load_explicit(&tail, memory_order_acquire) == RING)
            sched_yield();
        ring[h % RING] = p;
        atomic_store_explicit(&head, h + 1, memory_order_release);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    (void)arg;
    for (long i = 0; i < blocks; i++) {
        size_t t = atomic_load_explicit(&tail, memory_order_relaxed);
        while (atomic_load_explicit(&head, memory_order_acquire) == t)
            sched_yield();
        unsigned char *p = ring[t % RING];
        atomic_store_explicit(&tail, t + 1, memory_order_release);
        if (p[0] < 16 || p[p[0] - 1] != (unsigned char)i) {
            fprintf(stderr, "prodcons: block %ld changed\n", i);
            exit(1);
        }
        free(p);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    blocks = argc > 1 ? atol(argv[1]) : 5000000;
    if (blocks < 1) {
        fprintf(stderr, "usage: prodcons [BLOCKS >= 1]\n");
        return 2;
    }
    double t0 = now();
    pthread_t a, b;
    if (pthread_create(&a, NULL, producer, NULL) || pthread_create(&b, NULL, consumer, NULL))
        return 1;
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    double t1 = now();
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    printf("%.4f %.4f\n", t1 - t0,
           (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec * 1e-6 +
               (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec * 1e-6);
    return 0;
}
