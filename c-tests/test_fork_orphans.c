/*
 * test_fork_orphans: after fork(), the objects that other threads of the
 * parent had in their caches are given back in the child, whose only
 * thread can then destroy the pool (the counters balance: nothing is
 * counted as held by the application).
 */
#include <pools.h>
#include "check.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#define N 50

static struct pool_head *pool;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int cached, done;

/* Caches N objects in its own thread cache, then waits (alive) until told. */
static void *holder(void *arg)
{
    (void)arg;
    void *o[N];
    for (int i = 0; i < N; i++)
        o[i] = pool_alloc(pool);
    for (int i = 0; i < N; i++)
        pool_free(pool, o[i]);
    pthread_mutex_lock(&mu);
    cached = 1;
    pthread_cond_broadcast(&cv);
    while (!done)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return NULL;
}

int main(void)
{
    pool = pool_create("orphans", 64, 0);
    CHECK(pool != NULL);
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, holder, NULL), 0);
    pthread_mutex_lock(&mu);
    while (!cached)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    struct pool_stats s;
    CHECK_EQ(pool_get_stats(pool, &s), 0);
    CHECK_EQ(s.cached, N);

    /* The child reports through a pipe and then kills itself: the parent's
     * other thread left memory of glibc's in the child (its TLS destructor
     * record), which a leak checker (valgrind's) would report at exit. */
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(10);
        struct pool_stats c;
        int ok = pool_get_stats(pool, &c) == 0 && c.used == 0 && c.cached == 0 &&
                 c.allocated == c.shared && c.allocated == N;
        if (!ok)
            fprintf(stderr, "child: allocated %lu used %lu cached %lu shared %lu\n",
                    c.allocated, c.used, c.cached, c.shared);
        /* The pool can be destroyed: nothing is held. */
        ok = ok && pool_destroy(pool) == NULL;
        char verdict = ok ? 'y' : 'n';
        if (write(fds[1], &verdict, 1) != 1)
            _exit(2);
        kill(getpid(), SIGKILL);
        _exit(3);
    }
    close(fds[1]);
    char verdict = 0;
    CHECK(pid > 0 && read(fds[0], &verdict, 1) == 1);
    close(fds[0]);
    CHECK_EQ(verdict, 'y');
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);

    pthread_mutex_lock(&mu);
    done = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    CHECK_EQ(pthread_join(t, NULL), 0);
    CHECK(pool_destroy(pool) == NULL);
    return check_done();
}
