/*
 * test_dlerror_kept: an allocation that fails does not touch the dynamic
 * loader's error state. A failing malloc runs pool_gc, which asks the
 * allocator underneath to trim; finding that allocator's trim function
 * with dlsym, there, replaced the error a failed dlopen left for dlerror()
 * (and when the malloc was dlerror's own, its result was freed twice).
 *
 * After a failed dlopen, the address space is capped so that new spans
 * cannot be mapped, small blocks are taken until malloc fails, the cap is
 * lifted, and dlerror() must still name the library.
 */
#include "preload.h"

#include <sys/resource.h>

#define MAX_BLOCKS 200000

static size_t vm_size(void)
{
    unsigned long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f != NULL);
    CHECK(fscanf(f, "%lu", &pages) == 1);
    fclose(f);
    return pages * (size_t)sysconf(_SC_PAGESIZE);
}

int main(void)
{
    require_preload();
    static void *blocks[MAX_BLOCKS];
    struct rlimit old;
    CHECK(getrlimit(RLIMIT_AS, &old) == 0);

    void *volatile h = dlopen("/nonexistent/libpools-test-none.so", RTLD_NOW);
    CHECK(h == NULL);

    struct rlimit low = old;
    low.rlim_cur = vm_size() + (1u << 20);
    CHECK(setrlimit(RLIMIT_AS, &low) == 0);
    size_t n = 0;
    while (n < MAX_BLOCKS) {
        void *volatile p = malloc(48);
        if (p == NULL)
            break;
        blocks[n++] = p;
    }
    CHECK(setrlimit(RLIMIT_AS, &old) == 0);
    CHECK(n < MAX_BLOCKS); /* malloc did fail */

    const char *err = dlerror();
    if (err == NULL || strstr(err, "libpools-test-none") == NULL) {
        fprintf(stderr, "dlerror() after a failed malloc: %s\n", err ? err : "(null)");
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        free(blocks[i]);
    printf("test_dlerror_kept: malloc failed after %zu blocks; dlerror kept\n", n);
    return 0;
}
