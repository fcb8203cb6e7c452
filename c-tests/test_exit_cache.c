/*
 * test_exit_cache: what a thread's cache does when the thread or the
 * process ends (README, "The thread cache"). Each case runs in a child:
 *
 *   - a thread that returns gives its cache back: main, joining it, finds
 *     nothing cached;
 *   - main's pthread_exit() while another thread runs gives main's cache
 *     back: that thread finds nothing cached once main is gone;
 *   - exit() leaves the caller's cache as it is, threads or not (the
 *     process ends, and its memory with it): an atexit handler, which runs
 *     after the TLS destructors, finds the objects still cached and can
 *     still allocate and free.
 *
 * Under memcheck every pool takes the debugging path, which caches
 * nothing: only the allocations are checked then.
 */
#include "check.h"
#include "child.h"

#include <pools.h>
#include <pthread.h>

#define N 8

static struct pool_head *pool;

static unsigned long cached_now(void)
{
    struct pool_stats st;
    if (pool_get_stats(pool, &st) != 0)
        return (unsigned long)-1;
    return st.cached;
}

/* Takes N objects and gives them back, so that the thread caches them. */
static void churn(void)
{
    void *volatile objs[N];
    for (int i = 0; i < N; i++)
        objs[i] = pool_alloc(pool);
    for (int i = 0; i < N; i++)
        pool_free(pool, objs[i]);
}

/* Ends the child: status 0 when `want` objects are cached (any number
 * under memcheck) and an allocation still works. */
static _Noreturn void end_expecting(unsigned long want)
{
    unsigned long got = cached_now();
    int ok = under_memcheck() || got == want;
    void *volatile p = pool_alloc(pool);
    ok = ok && p != NULL;
    pool_free(pool, p);
    if (!ok)
        fprintf(stderr, "%lu objects cached, expected %lu\n", got, want);
    _exit(ok ? 0 : 1);
}

/* Runs fn in a thread of its own until it returns. */
static void run_thread(void *(*fn)(void *))
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, NULL) != 0 || pthread_join(t, NULL) != 0)
        _exit(2);
}

static void *churn_and_return(void *arg)
{
    churn();
    return arg;
}

static void thread_returns(const void *arg)
{
    (void)arg;
    run_thread(churn_and_return);
    end_expecting(0);
}

/* Waits (up to 5 s) for main's objects to come back: main cannot be
 * joined everywhere (musl), and they come back before main is gone. */
static void *outlive_main(void *arg)
{
    for (int i = 0; i < 5000 && !under_memcheck() && cached_now() != 0; i++)
        usleep(1000);
    end_expecting(0);
    return arg;
}

static void main_leaves_first(const void *arg)
{
    (void)arg;
    churn();
    pthread_t t;
    if (pthread_create(&t, NULL, outlive_main, NULL) != 0)
        _exit(2);
    pthread_exit(NULL);
}

static void at_exit_check(void)
{
    end_expecting(N);
}

static void exit_alone(const void *arg)
{
    (void)arg;
    churn();
    atexit(at_exit_check);
    exit(0);
}

static void *nothing(void *arg)
{
    return arg;
}

static void exit_after_a_thread(const void *arg)
{
    (void)arg;
    run_thread(nothing);
    churn();
    atexit(at_exit_check);
    exit(0);
}

static void run_case(const char *name, void (*fn)(const void *))
{
    char err[512];
    int status = run_in_child(fn, NULL, 20, err, sizeof err);
    if (!CHECK(exited_zero(status)))
        fprintf(stderr, "  case %s: status %#x, stderr: %s\n", name, status, err);
}

int main(void)
{
    pool = pool_create("exit-cache", 64, 0);
    CHECK(pool != NULL);
    if (pool == NULL)
        return check_done();
    run_case("a thread returns", thread_returns);
    run_case("main leaves first", main_leaves_first);
    run_case("exit, never a thread", exit_alone);
    run_case("exit, after a thread", exit_after_a_thread);
    pool_destroy(pool);
    return check_done();
}
