/*
 * test_unload: libpools.so, loaded with dlopen and closed with dlclose
 * while a thread that used it still runs, stays mapped: that thread's end
 * runs the library's destructor of its cache (a pthread key's, README "The
 * thread cache"), which would jump into unmapped code otherwise.
 *
 * Runs under the preload like the other tests here; the library is the
 * libpools.so beside the preloaded libpools_malloc.so.
 */
#include "preload.h"

#include <pools.h>
#include <pthread.h>
#include <semaphore.h>

static __typeof__(pool_create) *create;
static __typeof__(pool_alloc) *alloc;
static __typeof__(pool_free) *release;
static sem_t used, closed;

static void *use_a_pool(void *arg)
{
    struct pool_head *p = create("unload", 64, 0);
    CHECK(p != NULL);
    void *volatile obj = alloc(p);
    CHECK(obj != NULL);
    release(p, obj); /* cached: this thread now has a cache */
    sem_post(&used);
    sem_wait(&closed);
    return arg; /* the cache's destructor runs now */
}

int main(void)
{
    require_preload();
    const char *pre = getenv("LD_PRELOAD");
    char path[4096];
    const char *slash = strrchr(pre, '/');
    CHECK(slash != NULL && (size_t)(slash - pre) + sizeof "/libpools.so" < sizeof path);
    snprintf(path, sizeof path, "%.*s/libpools.so", (int)(slash - pre), pre);

    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return 1;
    }
    create = (__typeof__(create))dlsym(lib, "pool_create");
    alloc = (__typeof__(alloc))dlsym(lib, "pool_alloc");
    release = (__typeof__(release))dlsym(lib, "pool_free");
    CHECK(create != NULL && alloc != NULL && release != NULL);

    CHECK(sem_init(&used, 0, 0) == 0 && sem_init(&closed, 0, 0) == 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, use_a_pool, NULL) == 0);
    sem_wait(&used);
    CHECK(dlclose(lib) == 0);
    sem_post(&closed);
    CHECK(pthread_join(t, NULL) == 0);
    printf("test_unload: a thread ended after its library's dlclose\n");
    return 0;
}
