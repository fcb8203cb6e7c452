/* fork() from a threaded program: while other threads allocate and free
 * (so that shared-cache heads and span locks are busy), the main thread
 * forks; the child allocates and frees across all classes, starts a thread
 * of its own, and exits 0. Run under the preload, and (built with -DPOOLS)
 * linked with -lpools, where the child also destroys a pool whose objects
 * sat in the other threads' caches: without the atfork handlers it would
 * wait forever for those threads. */
#include "preload.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef POOLS
#include <pools.h>
static struct pool_head *pool;
#endif

enum { THREADS = 3, FORKS = 40 };
static atomic_int stop;

static void *churn(void *arg)
{
    (void)arg;
    unsigned n = 0;
    void *keep[64] = {0};
    while (!atomic_load(&stop)) {
        unsigned i = n++ % 64;
#ifdef POOLS
        if (keep[i])
            pool_free(pool, keep[i]);
        keep[i] = pool_alloc(pool);
#else
        free(keep[i]);
        keep[i] = malloc(16 + (n * 37) % 40000);
#endif
        CHECK(keep[i] != NULL);
    }
    for (int i = 0; i < 64; i++) {
#ifdef POOLS
        pool_free(pool, keep[i]);
#else
        free(keep[i]);
#endif
    }
    return NULL;
}

static void *child_thread(void *arg)
{
    for (int i = 0; i < 1000; i++)
        free(malloc((size_t)(i * 31) % 33000));
    return arg;
}

static void child(void)
{
    /* The child must not hang: a watchdog kills it after 20 s. */
    alarm(20);
    for (int round = 0; round < 3; round++) {
        void *p[200];
        for (int i = 0; i < 200; i++) {
            p[i] = malloc((size_t)i * 170);
            CHECK(p[i] != NULL);
            memset(p[i], i, (size_t)i * 170);
        }
        for (int i = 0; i < 200; i++)
            free(p[i]);
    }
    pthread_t t;
    CHECK(pthread_create(&t, NULL, child_thread, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
#ifdef POOLS
    void *o = pool_alloc(pool);
    CHECK(o != NULL);
    pool_free(pool, o);
    struct pool_head *q = pool_create("child", 256, 0);
    CHECK(q != NULL);
    o = pool_alloc(q);
    pool_free(q, o);
    CHECK(pool_destroy(q) == NULL);
    pool_gc(NULL);
#endif
    _exit(0);
}

int main(void)
{
#ifdef POOLS
    pool = pool_create("fork", 96, 0);
    CHECK(pool != NULL);
#else
    require_preload();
#endif
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, churn, NULL) == 0);
    for (int f = 0; f < FORKS; f++) {
        usleep(2000);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0)
            child();
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "fork child %d: %s %d\n", f,
                    WIFSIGNALED(status) ? "killed by signal" : "exit status",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            return 1;
        }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    /* The parent's allocator still works. */
    free(malloc(100));
#ifdef POOLS
    CHECK(pool_destroy(pool) == NULL);
#endif
    printf("fork from a threaded program%s: ok\n", getenv("LD_PRELOAD") ? " (preload)" : " (-lpools)");
    return 0;
}
