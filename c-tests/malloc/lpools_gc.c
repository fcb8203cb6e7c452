/* A program linked with -lpools, run under the preload with
 * POOL_BACKEND=malloc (issue #14, item 3): the pools' objects come from
 * malloc, that is from the preload's own pools, and pool_gc gives them
 * back with free(). pool_gc from a thread that never allocated before
 * held the registry lock while that free() created the thread's cache,
 * which takes the same lock: a self-deadlock. Now pool_gc collects under
 * the lock and frees after it. The same for pool_destroy of a pool whose
 * objects the calling thread caches: it released them with free() while
 * holding a claim on its own cache, which free() waited for; now no claim
 * exists and destroy frees after the lock. A hang is killed by an alarm. */
#include "preload.h"
#include <pools.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

enum { OBJECTS = 1000 };
static struct pool_head *pool;

static void *fill(void *arg)
{
    static void *v[OBJECTS];
    for (int i = 0; i < OBJECTS; i++) {
        v[i] = pool_alloc(pool);
        CHECK(v[i] != NULL);
    }
    for (int i = 0; i < OBJECTS; i++)
        pool_free(pool, v[i]);
    /* The thread's exit gives its cached objects to the shared cache. */
    return arg;
}

static void *gc(void *arg)
{
    /* No allocation before: this thread has no cache in the preload. */
    pool_gc(NULL);
    return arg;
}

static int run(void)
{
    alarm(20);
    pool = pool_create("gc-malloc", 200, 0);
    CHECK(pool != NULL);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, fill, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    struct pool_stats s;
    CHECK(pool_get_stats(pool, &s) == 0);
    CHECK(s.shared > 0);
    CHECK(pthread_create(&t, NULL, gc, NULL) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(pool_get_stats(pool, &s) == 0);
    CHECK(s.allocated == 0 && s.shared == 0);
    CHECK(pool_destroy(pool) == NULL);

    /* Objects in this thread's cache, then destroy from this thread. */
    struct pool_head *mine = pool_create("destroy-malloc", 200, 0);
    CHECK(mine != NULL);
    static void *v[OBJECTS];
    for (int i = 0; i < OBJECTS; i++)
        v[i] = pool_alloc(mine);
    for (int i = 0; i < OBJECTS; i++)
        pool_free(mine, v[i]);
    CHECK(pool_get_stats(mine, &s) == 0);
    CHECK(s.cached > 0);
    CHECK(pool_destroy(mine) == NULL);
    return 0;
}

int main(void)
{
    require_preload();
    const char *b = getenv("POOL_BACKEND");
    CHECK(b != NULL && strcmp(b, "malloc") == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0)
        _exit(run());
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "pool_gc with malloc-backed objects under the preload: %s %d\n",
                WIFSIGNALED(status) ? "killed by signal" : "exit status",
                WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        return 1;
    }
    printf("pool_gc of malloc-backed objects under the preload: ok\n");
    return 0;
}
