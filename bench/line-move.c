/*
 * line-move.c: what it costs on this machine to move one cache line between
 * two CPUs, the price a shared head pays each time another core uses it.
 *
 *   gcc -O2 -mcx16 -pthread bench/line-move.c -o target/bench/line-move
 *   target/bench/line-move [ROUNDS]
 *
 * Two threads pinned to CPUs 0 and 1 take turns on one word: each waits for
 * the value the other wrote and writes the next one with a locked
 * instruction (as a CAS on a head does), so every turn moves the line once.
 * Prints nanoseconds per move, and for comparison the cost of locked
 * instructions on a line that stays in one core: an 8-byte CAS (an xchg
 * head's push, a mutex lock), a 16-byte CAS (cmpxchg16b, a DWCAS head), an
 * exchange (an xchg head's lock, a mutex unlock) and a fetch-add (the
 * bucket's object count, a read unlock), and a plain store, timed on the
 * thread's CPU clock (the move is wall-clock time: it is only meaningful on
 * a quiet machine, where neither thread waits for a CPU).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Alignas(128) atomic_ulong turn;
static _Alignas(128) unsigned __int128 wide;
static _Alignas(128) atomic_ulong word;
static unsigned long rounds = 2000000;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* This thread's CPU time: the local loops are timed with it, so that other
 * processes running on the machine do not count. */
static double cpu_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0) {
		fprintf(stderr, "line-move: cannot pin to CPU %d\n", cpu);
		exit(1);
	}
}

static void *player(void *arg)
{
	unsigned long me = (unsigned long)arg;
	pin((int)me);
	for (unsigned long v = me; v < 2 * rounds; v += 2) {
		unsigned long want = v;
		/* wait for our turn, then pass it on with a locked CAS */
		while (!atomic_compare_exchange_weak_explicit(&turn, &want, v + 1,
							      memory_order_acq_rel,
							      memory_order_relaxed))
			want = v;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		rounds = strtoul(argv[1], NULL, 0);
	pthread_t a, b;
	double t0 = now_s();
	pthread_create(&a, NULL, player, (void *)0ul);
	pthread_create(&b, NULL, player, (void *)1ul);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	double moved = (now_s() - t0) / (2.0 * (double)rounds) * 1e9;

	pin(0);
	atomic_store(&turn, 0);
	t0 = cpu_now_s();
	for (unsigned long v = 0; v < 2 * rounds; v++) {
		unsigned long want = v;
		atomic_compare_exchange_strong(&turn, &want, v + 1);
	}
	double local = (cpu_now_s() - t0) / (2.0 * (double)rounds) * 1e9;
	unsigned long n = 2 * rounds;

	t0 = cpu_now_s();
	for (unsigned long v = 0; v < n; v++)
		__sync_bool_compare_and_swap(&wide, (unsigned __int128)v, (unsigned __int128)v + 1);
	double cas16 = (cpu_now_s() - t0) / (double)n * 1e9;
	t0 = cpu_now_s();
	for (unsigned long v = 0; v < n; v++)
		atomic_exchange_explicit(&word, v, memory_order_acq_rel);
	double xchg = (cpu_now_s() - t0) / (double)n * 1e9;
	t0 = cpu_now_s();
	for (unsigned long v = 0; v < n; v++)
		atomic_fetch_add_explicit(&word, 1, memory_order_relaxed);
	double xadd = (cpu_now_s() - t0) / (double)n * 1e9;
	t0 = cpu_now_s();
	for (unsigned long v = 0; v < n; v++)
		atomic_store_explicit(&word, v, memory_order_release);
	double store = (cpu_now_s() - t0) / (double)n * 1e9;
	printf("line moved between CPU 0 and 1: %.1f ns per move\n"
	       "on a local line, ns per op: cmpxchg %.1f, cmpxchg16b %.1f, xchg %.1f, "
	       "lock xadd %.1f, plain store %.2f\n", moved, local, cas16, xchg, xadd, store);
	return 0;
}
