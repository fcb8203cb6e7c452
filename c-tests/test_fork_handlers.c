/*
 * test_fork_handlers: fork() from a threaded program whose own
 * pthread_atfork handlers use pools (issue #14, item 2). The handlers are
 * registered by this program's constructor: with a shared libpools it runs
 * after the library's (whose handlers then run as glibc's malloc's do:
 * prepare last, parent and child first); in a static program (musl-gcc
 * -static) it may run before it, so that its prepare handler runs while
 * ours hold every lock and its child and parent handlers before ours
 * release them. Either way each handler creates a pool of a size nothing
 * used, allocates 2,000 small objects and a 100,000-byte one, and gives
 * them back, while two threads churn a pool; the child allocates again.
 * The handlers do not destroy pools: inside the fork window a destroy
 * would wait for threads blocked on the locks held for the fork (or, in
 * the child, gone), which the README lists as not covered.
 * The children and the whole test have alarms; a hang fails the test.
 */
#include <pools.h>
#include "check.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { SMALL = 2000, LARGE = 100000, FORKS = 20, THREADS = 2 };

static struct pool_head *small_pool, *large_pool;
static unsigned handler_calls;
static volatile int stop;

/* What every handler does; 0 when something failed. */
static int use_pools(void)
{
    static void *v[SMALL];
    if (small_pool == NULL)
        return 1; /* a fork before main set the pools up: nothing to do */
    /* Kept: at most 64 such pools (20 forks, 3 handlers each). */
    struct pool_head *p = pool_create("fork-handler", 1008 + 16 * (handler_calls++ % 64), 0);
    if (p == NULL)
        return 0;
    void *o = pool_alloc(p);
    if (o == NULL)
        return 0;
    pool_free(p, o);
    for (int i = 0; i < SMALL; i++) {
        v[i] = pool_alloc(small_pool);
        if (v[i] == NULL)
            return 0;
        memset(v[i], i, 48);
    }
    for (int i = 0; i < SMALL; i++)
        pool_free(small_pool, v[i]);
    o = pool_alloc(large_pool);
    if (o == NULL)
        return 0;
    memset(o, 1, LARGE);
    pool_free(large_pool, o);
    return 1;
}

static int prepare_ok = 1, parent_ok = 1, child_ok = 1;
static void on_prepare(void) { prepare_ok &= use_pools(); }
static void on_parent(void) { parent_ok &= use_pools(); }
static void on_child(void) { child_ok &= use_pools(); }

__attribute__((constructor)) static void register_handlers(void)
{
    if (pthread_atfork(on_prepare, on_parent, on_child) != 0)
        abort();
}

static void *churn(void *arg)
{
    void *keep[64] = {0};
    unsigned n = 0;
    while (!stop) {
        unsigned i = n++ % 64;
        if (keep[i])
            pool_free(small_pool, keep[i]);
        keep[i] = pool_alloc(small_pool);
    }
    for (int i = 0; i < 64; i++)
        if (keep[i])
            pool_free(small_pool, keep[i]);
    return arg;
}

/* A hang: kill this test and every child it left hanging inside fork()
 * (this process leads their process group). */
static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "test_fork_handlers: hung, killed\n";
    if (write(2, msg, sizeof msg - 1) < 0)
        _exit(2);
    kill(0, SIGKILL);
}

int main(void)
{
    /* A hang in the parent (in a prepare or parent handler) fails too. */
    CHECK(setpgid(0, 0) == 0);
    signal(SIGALRM, on_alarm);
    /* valgrind runs it about 40 times slower (77 s in all here). */
    const char *preload = getenv("LD_PRELOAD");
    unsigned slow = preload && strstr(preload, "vgpreload") ? 20 : 1;
    alarm(60 * slow);
    small_pool = pool_create("fork-small", 48, 0);
    large_pool = pool_create("fork-large", LARGE, 0);
    CHECK(small_pool != NULL && large_pool != NULL);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, churn, NULL) == 0);
    int clean = 0;
    for (int f = 0; f < FORKS; f++) {
        usleep(1000);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            alarm(10 * slow);
            int ok = child_ok && use_pools();
            /* Under valgrind the child says how it went by the signal it
             * dies of, which skips memcheck's leak check at exit: it would
             * report what the parent's threads held when they were not
             * copied into the child. */
            if (slow > 1)
                raise(ok ? SIGKILL : SIGTERM);
            _exit(ok ? 0 : 1);
        }
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        clean += (WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
                 (slow > 1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    }
    CHECK_EQ(clean, FORKS);
    CHECK(prepare_ok && parent_ok);
    stop = 1;
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    CHECK(pool_destroy(small_pool) == NULL);
    CHECK(pool_destroy(large_pool) == NULL);
    return check_done();
}
