/* Shared helpers of the C tests run under LD_PRELOAD=libpools_malloc.so. */
#ifndef PRELOAD_H
#define PRELOAD_H
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                      \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

/* Fails unless malloc is the preload's: a test that silently ran on glibc's
 * malloc would prove nothing. */
static inline void require_preload(void)
{
    Dl_info info;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    CHECK(m != NULL && dladdr(m, &info) != 0 && info.dli_fname != NULL);
    if (strstr(info.dli_fname, "libpools_malloc") == NULL) {
        fprintf(stderr, "malloc comes from %s, not libpools_malloc.so: run under LD_PRELOAD\n",
                info.dli_fname);
        exit(1);
    }
}

/* Resident memory of this process, in KiB. */
static inline size_t rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f != NULL);
    unsigned long size, resident;
    CHECK(fscanf(f, "%lu %lu", &size, &resident) == 2);
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE) / 1024;
}
#endif
