/* Threads that exit give their caches back: each thread allocates and frees
 * blocks of a class nothing else uses (20480 bytes), which stay in its
 * thread cache; once the threads are joined, the pool report (pool_dump,
 * exported by the preload) must show none of them cached. */
#include "preload.h"
#include <pthread.h>
#include <unistd.h>

enum { THREADS = 4, PER = 10 };

static void *worker(void *arg)
{
    void *p[PER];
    for (int i = 0; i < PER; i++)
        CHECK((p[i] = malloc(20000)) != NULL);
    for (int i = 0; i < PER; i++)
        free(p[i]);
    return arg;
}

/* The line of pool `name` in the pool report, into `line`. */
static void report_line(const char *name, char *line, size_t len)
{
    void (*dump)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "pool_dump");
    CHECK(dump != NULL);
    int fds[2];
    CHECK(pipe(fds) == 0);
    dump(fds[1]);
    close(fds[1]);
    static char buf[65536];
    size_t n = 0;
    ssize_t r;
    while ((r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    close(fds[0]);
    buf[n] = 0;
    char *s = strstr(buf, name);
    CHECK(s != NULL);
    char *e = strchr(s, '\n');
    size_t l = e ? (size_t)(e - s) : strlen(s);
    l = l < len - 1 ? l : len - 1;
    memcpy(line, s, l);
    line[l] = 0;
}

int main(void)
{
    require_preload();
    char line[512];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, NULL) == 0);
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    report_line("Pool malloc-20480 ", line, sizeof line);
    printf("%s\n", line);
    CHECK(strstr(line, " 0 used") != NULL);
    CHECK(strstr(line, " 0 cached") != NULL);
    CHECK(strstr(line, " 0 allocated") == NULL);
    puts("thread exit returns caches: ok");
    return 0;
}
