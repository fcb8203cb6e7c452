/*
 * bench.c: one benchmark harness for libpools and the allocators it is
 * compared with (issue #5).
 *
 *   bench IMPL WORKLOAD SIZE THREADS MS
 *
 * IMPL      pool      libpools through its C API; the shared-cache variant
 *                     is POOL_SHARED_CACHE (default xchg), the per-thread
 *                     budget POOL_CACHE_SIZE, both read by the library;
 *                     the harness checks the variant with
 *                     pool_set_shared_cache() and exits with status 2
 *                     ("n/a") when the library refuses it
 *           malloc    malloc/free of whatever libc or LD_PRELOADed
 *                     allocator the process runs with
 *           freelist  the lower bound: an inlined thread-local free list
 *                     over malloc, with no accounting but a length cap
 * WORKLOAD  hot       per thread a window of live objects; each step frees
 *                     a random one and allocates its replacement
 *           seeds     per thread, allocate 4 buffers, touch them, free
 *                     them; thread 0 calls pool_flush every 10 ms and
 *                     pool_gc every 100 ms (malloc_trim under glibc malloc)
 *           prodcons  max(1, THREADS/2) pairs: one thread allocates and
 *                     hands objects to its partner through a ring, the
 *                     partner frees them
 *           memory    every thread allocates and fills objects (64 MiB in
 *                     all) and frees them, twice; the threads exit; then
 *                     pool_flush + pool_gc (malloc_trim under glibc malloc)
 *                     and resident memory against the baseline
 * SIZE      object size in bytes
 * THREADS   worker threads
 * MS        measured time in milliseconds (after a warm-up of MS/5)
 *
 * Prints one line of key=value pairs starting with "result": ops/s over the
 * measured time, every op of the run (ops_all, warm-up included), and for
 * the whole process its CPU seconds and its
 * voluntary (a wait in the kernel: futex, sleep) and involuntary (preempted)
 * context switches. One op is one allocation plus one free.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <pools.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define CACHELINE 64
#define BATCH 256

enum impl { I_POOL, I_MALLOC, I_FREELIST };
enum workload { W_HOT, W_SEEDS, W_PRODCONS, W_MEMORY, W_COUNT };

static size_t g_size;
static struct pool_head *g_pool;
static atomic_int g_stop;
static atomic_int g_go;
static unsigned g_threads;

/* ---- the lower bound: a thread-local free list ------------------------ */

struct fl_node { struct fl_node *next; };
static __thread struct fl_node *fl_head;
static __thread size_t fl_len;
static size_t fl_cap; /* objects kept per thread, like a 512 KiB budget */

ALWAYS_INLINE void *fl_alloc(void)
{
	struct fl_node *n = fl_head;
	if (n) {
		fl_head = n->next;
		fl_len--;
		return n;
	}
	return malloc(g_size);
}

ALWAYS_INLINE void fl_free(void *p)
{
	if (fl_len >= fl_cap) {
		free(p);
		return;
	}
	struct fl_node *n = p;
	n->next = fl_head;
	fl_head = n;
	fl_len++;
}

static void fl_drain(void)
{
	while (fl_head) {
		struct fl_node *n = fl_head;
		fl_head = n->next;
		free(n);
	}
	fl_len = 0;
}

/* ---- the allocator under test, chosen at compile time per thread fn --- */

ALWAYS_INLINE void *xalloc(enum impl im)
{
	switch (im) {
	case I_POOL:
		return pool_alloc(g_pool);
	case I_MALLOC:
		return malloc(g_size);
	default:
		return fl_alloc();
	}
}

ALWAYS_INLINE void xfree(enum impl im, void *p)
{
	switch (im) {
	case I_POOL:
		pool_free(g_pool, p);
		break;
	case I_MALLOC:
		free(p);
		break;
	default:
		fl_free(p);
		break;
	}
}

static void die(const char *what)
{
	fprintf(stderr, "bench: %s: %s\n", what, strerror(errno));
	exit(1);
}

ALWAYS_INLINE void *xalloc_checked(enum impl im)
{
	void *p = xalloc(im);
	if (!p)
		die("allocation failed");
	return p;
}

/* One byte written at the start of the object (as a header would be). */
ALWAYS_INLINE void touch(void *p, unsigned v)
{
	*(volatile unsigned char *)p = (unsigned char)v;
}

/* The first and the last cache line, as a request buffer's header and
 * its end would be. */
ALWAYS_INLINE void touch_ends(void *p, unsigned v)
{
	volatile unsigned char *c = p;
	c[0] = (unsigned char)v;
	if (g_size > CACHELINE)
		c[g_size - 1] = (unsigned char)v;
}

static void gc_all(enum impl im)
{
	if (im == I_POOL) {
		pool_gc(NULL);
		return;
	}
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long pages = 0, resident = 0;
	if (!f)
		return -1;
	if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Peak resident memory (VmHWM) in KiB. */
static long hwm_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %ld kB", &v) == 1)
			break;
	fclose(f);
	return v;
}

/* ---- per-thread state ------------------------------------------------- */

#define RING 1024

struct ring {
	_Alignas(CACHELINE) atomic_size_t head; /* consumer */
	_Alignas(CACHELINE) atomic_size_t tail; /* producer */
	_Alignas(CACHELINE) atomic_int done;
	void *slot[RING];
};

struct thr {
	_Alignas(CACHELINE) atomic_ulong ops;
	unsigned id;
	struct ring *ring;
	pthread_t tid;
	char pad[CACHELINE];
};

static unsigned window_for(size_t size)
{
	/* 64 live objects, or 8 MiB per thread for large ones (at least 4);
	 * always a power of two. */
	unsigned w = 64;
	while (w > 4 && (size_t)w * size > (8u << 20))
		w /= 2;
	return w;
}

static void wait_go(void)
{
	while (!atomic_load_explicit(&g_go, memory_order_acquire))
		sched_yield();
}

ALWAYS_INLINE int stopped(void)
{
	return atomic_load_explicit(&g_stop, memory_order_relaxed);
}

ALWAYS_INLINE void relax(unsigned *spins)
{
	if (++*spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
		__builtin_ia32_pause();
#endif
	} else {
		*spins = 0;
		sched_yield();
	}
}

/* hot: a window of live objects, replace a random one per step. */
ALWAYS_INLINE void run_hot(struct thr *t, enum impl im)
{
	unsigned w = window_for(g_size);
	void **win = calloc(w, sizeof(*win));
	if (!win)
		die("calloc");
	uint64_t x = 0x9e3779b97f4a7c15ull * (t->id + 1);
	unsigned long ops = 0;

	wait_go();
	for (unsigned i = 0; i < w; i++) {
		win[i] = xalloc_checked(im);
		touch(win[i], i);
	}
	while (!stopped()) {
		for (unsigned k = 0; k < BATCH; k++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			unsigned i = (unsigned)x & (w - 1);
			xfree(im, win[i]);
			win[i] = xalloc_checked(im);
			touch(win[i], k);
		}
		ops += BATCH;
		atomic_store_explicit(&t->ops, ops, memory_order_relaxed);
	}
	for (unsigned i = 0; i < w; i++)
		xfree(im, win[i]);
	free(win);
}

/* seeds: hold a few large buffers, release them; thread 0 flushes. */
#define HELD 4
ALWAYS_INLINE void run_seeds(struct thr *t, enum impl im)
{
	void *held[HELD];
	unsigned long ops = 0;
	double next_flush = 0, next_gc = 0;

	wait_go();
	if (t->id == 0) {
		next_flush = now_s() + 0.010;
		next_gc = now_s() + 0.100;
	}
	while (!stopped()) {
		for (unsigned k = 0; k < 64; k++) {
			for (unsigned i = 0; i < HELD; i++) {
				held[i] = xalloc_checked(im);
				touch_ends(held[i], k + i);
			}
			for (unsigned i = 0; i < HELD; i++)
				xfree(im, held[i]);
		}
		ops += 64 * HELD;
		atomic_store_explicit(&t->ops, ops, memory_order_relaxed);
		if (t->id == 0) {
			double n = now_s();
			if (n >= next_flush) {
				if (im == I_POOL)
					pool_flush(g_pool);
				next_flush = n + 0.010;
			}
			if (n >= next_gc) {
				gc_all(im);
				next_gc = n + 0.100;
			}
		}
	}
}

/* prodcons: even ids produce into their ring, odd ids consume it. */
ALWAYS_INLINE void run_prodcons(struct thr *t, enum impl im)
{
	struct ring *r = t->ring;
	unsigned long ops = 0;
	unsigned spins = 0;

	wait_go();
	if (t->id % 2 == 0) {
		size_t tail = 0, head_seen = 0;
		unsigned k = 0;
		while (!stopped()) {
			if (tail - head_seen == RING) {
				head_seen = atomic_load_explicit(&r->head, memory_order_acquire);
				if (tail - head_seen == RING) {
					relax(&spins);
					continue;
				}
			}
			void *p = xalloc_checked(im);
			touch(p, k++);
			r->slot[tail % RING] = p;
			atomic_store_explicit(&r->tail, ++tail, memory_order_release);
		}
		atomic_store_explicit(&r->done, 1, memory_order_release);
	} else {
		size_t head = 0, tail_seen = 0;
		for (;;) {
			if (head == tail_seen) {
				tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
				if (head == tail_seen) {
					if (atomic_load_explicit(&r->done, memory_order_acquire) &&
					    head == atomic_load_explicit(&r->tail, memory_order_acquire))
						break;
					relax(&spins);
					continue;
				}
			}
			xfree(im, r->slot[head % RING]);
			atomic_store_explicit(&r->head, ++head, memory_order_release);
			if (++ops % BATCH == 0)
				atomic_store_explicit(&t->ops, ops, memory_order_relaxed);
		}
	}
}

/* memory: fill 64 MiB in all, free it, twice. */
ALWAYS_INLINE void run_memory(struct thr *t, enum impl im)
{
	size_t total = (size_t)64 << 20;
	size_t n = total / g_threads / g_size;
	if (n == 0)
		n = 1;
	/* The array comes from mmap: a large malloc/free here would raise
	 * glibc's dynamic mmap and trim thresholds and keep memory resident
	 * that the allocators under test would otherwise give back. */
	size_t bytes = n * sizeof(void *);
	void **objs = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (objs == MAP_FAILED)
		die("mmap");
	wait_go();
	for (int round = 0; round < 2; round++) {
		for (size_t i = 0; i < n; i++) {
			objs[i] = xalloc_checked(im);
			memset(objs[i], (int)(i + t->id), g_size);
		}
		for (size_t i = 0; i < n; i++)
			xfree(im, objs[i]);
	}
	munmap(objs, bytes);
	atomic_store_explicit(&t->ops, 2 * n, memory_order_relaxed);
}

static void thread_end(enum impl im)
{
	if (im == I_FREELIST)
		fl_drain();
}

#define THREAD_FN(W, w, I, i)                                        \
	static void *w##_##i(void *a)                                   \
	{                                                               \
		run_##w(a, I);                                          \
		thread_end(I);                                          \
		return NULL;                                            \
	}
#define THREAD_FNS(W, w)                                              \
	THREAD_FN(W, w, I_POOL, pool)                                   \
	THREAD_FN(W, w, I_MALLOC, malloc)                               \
	THREAD_FN(W, w, I_FREELIST, freelist)
THREAD_FNS(W_HOT, hot)
THREAD_FNS(W_SEEDS, seeds)
THREAD_FNS(W_PRODCONS, prodcons)
THREAD_FNS(W_MEMORY, memory)

static void *(*const thread_fn[W_COUNT][3])(void *) = {
	[W_HOT] = { hot_pool, hot_malloc, hot_freelist },
	[W_SEEDS] = { seeds_pool, seeds_malloc, seeds_freelist },
	[W_PRODCONS] = { prodcons_pool, prodcons_malloc, prodcons_freelist },
	[W_MEMORY] = { memory_pool, memory_malloc, memory_freelist },
};

static const char *const workload_name[W_COUNT] = { "hot", "seeds", "prodcons", "memory" };

static void *idle_thread(void *a)
{
	(void)a;
	return NULL;
}

static void usage(void)
{
	fprintf(stderr, "usage: bench pool|malloc|freelist hot|seeds|prodcons|memory SIZE THREADS MS\n");
	exit(64);
}

static unsigned long sum_ops(struct thr *th, unsigned n)
{
	unsigned long s = 0;
	for (unsigned i = 0; i < n; i++)
		s += atomic_load_explicit(&th[i].ops, memory_order_relaxed);
	return s;
}

static void sleep_s(double s)
{
	struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	if (argc != 6)
		usage();
	enum impl im;
	if (!strcmp(argv[1], "pool"))
		im = I_POOL;
	else if (!strcmp(argv[1], "malloc"))
		im = I_MALLOC;
	else if (!strcmp(argv[1], "freelist"))
		im = I_FREELIST;
	else
		usage();
	int wl = -1;
	for (int i = 0; i < W_COUNT; i++)
		if (!strcmp(argv[2], workload_name[i]))
			wl = i;
	if (wl < 0)
		usage();
	g_size = strtoul(argv[3], NULL, 0);
	unsigned threads = (unsigned)strtoul(argv[4], NULL, 0);
	double secs = strtod(argv[5], NULL) / 1000.0;
	if (g_size < 16 || threads == 0 || threads > 1024 || !(secs > 0))
		usage();

	const char *variant = "-";
	if (im == I_POOL) {
		const char *v = getenv("POOL_SHARED_CACHE");
		if (v && *v) {
			if (pool_set_shared_cache(v) != 0) {
				printf("n/a variant=%s: pool_set_shared_cache refused it (%s)\n",
				       v, strerror(errno));
				return 2;
			}
			variant = v;
		} else {
			variant = "default";
		}
		g_pool = pool_create("bench", g_size, POOL_F_SHARED);
		if (!g_pool)
			die("pool_create");
	}
	fl_cap = (512u << 10) / g_size;
	if (fl_cap < 4)
		fl_cap = 4;

	/* producer/consumer needs pairs */
	unsigned nthr = threads;
	if (wl == W_PRODCONS)
		nthr = threads < 2 ? 2 : threads & ~1u;
	g_threads = nthr;

	struct thr *th = aligned_alloc(CACHELINE, sizeof(*th) * nthr);
	if (!th)
		die("aligned_alloc");
	memset(th, 0, sizeof(*th) * nthr);

	/* memory baseline: the pool exists and as many threads have run. */
	long rss_base = -1;
	if (wl == W_MEMORY) {
		for (unsigned i = 0; i < nthr; i++)
			if (pthread_create(&th[i].tid, NULL, idle_thread, NULL))
				die("pthread_create");
		for (unsigned i = 0; i < nthr; i++)
			pthread_join(th[i].tid, NULL);
		rss_base = rss_kib();
	}

	for (unsigned i = 0; i < nthr; i++) {
		th[i].id = i;
		if (wl == W_PRODCONS && i % 2 == 0) {
			th[i].ring = aligned_alloc(CACHELINE, sizeof(struct ring));
			if (!th[i].ring)
				die("aligned_alloc");
			memset(th[i].ring, 0, sizeof(struct ring));
		} else if (wl == W_PRODCONS) {
			th[i].ring = th[i - 1].ring;
		}
		if (pthread_create(&th[i].tid, NULL, thread_fn[wl][im], &th[i]))
			die("pthread_create");
	}

	double t0 = now_s();
	atomic_store_explicit(&g_go, 1, memory_order_release);
	double elapsed = 0;
	unsigned long ops = 0;
	if (wl != W_MEMORY) {
		sleep_s(secs / 5);
		unsigned long o0 = sum_ops(th, nthr);
		double m0 = now_s();
		sleep_s(secs);
		ops = sum_ops(th, nthr) - o0;
		elapsed = now_s() - m0;
		atomic_store_explicit(&g_stop, 1, memory_order_relaxed);
	}
	for (unsigned i = 0; i < nthr; i++)
		pthread_join(th[i].tid, NULL);
	if (wl == W_MEMORY) {
		elapsed = now_s() - t0;
		ops = sum_ops(th, nthr);
	}

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("result impl=%s variant=%s workload=%s size=%zu threads=%u window=%u "
	       "cache_size=%zu ops=%lu secs=%.4f ops_per_s=%.0f ops_all=%lu cpu_s=%.3f vcsw=%ld "
	       "ivcsw=%ld",
	       argv[1], variant, workload_name[wl], g_size, nthr,
	       wl == W_HOT ? window_for(g_size) : wl == W_SEEDS ? HELD : 0,
	       im == I_POOL ? pool_get_cache_size() : (size_t)0, ops, elapsed,
	       elapsed > 0 ? (double)ops / elapsed : 0.0, sum_ops(th, nthr),
	       (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
		       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6,
	       ru.ru_nvcsw, ru.ru_nivcsw);
	if (wl == W_MEMORY) {
		long rss_peak = hwm_kib();
		long rss_freed = rss_kib();
		if (im == I_POOL)
			pool_flush(g_pool);
		gc_all(im);
		long rss_after = rss_kib();
		printf(" rss_base_kib=%ld rss_peak_kib=%ld rss_freed_kib=%ld rss_after_kib=%ld"
		       " rss_delta_kib=%ld pool_allocated_after=%llu",
		       rss_base, rss_peak, rss_freed, rss_after, rss_after - rss_base,
		       im == I_POOL ? pool_total_allocated() : 0ull);
	}
	printf("\n");

	for (unsigned i = 0; i < nthr; i += (wl == W_PRODCONS ? 2 : 1))
		free(th[i].ring);
	free(th);
	if (im == I_POOL && pool_destroy(g_pool) != NULL)
		fprintf(stderr, "bench: pool_destroy: objects still in use\n");
	return 0;
}
