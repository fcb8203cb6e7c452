/* The C semantics of the malloc family, under the preload (issue 7, item 3). */
#include "preload.h"
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <unistd.h>

/* Hides a size from the compiler, which rejects or folds constant
 * impossible requests at build time. */
static size_t opaque(size_t n)
{
    volatile size_t v = n;
    return v;
}

static void check_block(void *p, size_t n, size_t align)
{
    CHECK(p != NULL);
    CHECK((uintptr_t)p % align == 0);
    CHECK(malloc_usable_size(p) >= n);
    memset(p, 0xa5, n);
}

int main(void)
{
    require_preload();
    size_t page = (size_t)sysconf(_SC_PAGESIZE);

    /* free(NULL) does nothing; malloc_usable_size(NULL) is 0. */
    free(NULL);
    CHECK(malloc_usable_size(NULL) == 0);

    /* malloc(0): unique, freeable pointers. */
    void *z1 = malloc(0), *z2 = malloc(0);
    CHECK(z1 != NULL && z2 != NULL && z1 != z2);
    free(z1);
    free(z2);

    /* Every size from 0 to 40000 (classes and large), then a few big ones:
     * aligned to 16, usable size never smaller than asked. */
    for (size_t n = 0; n <= 40000; n += (n < 600 ? 1 : 97)) {
        void *p = malloc(n);
        check_block(p, n, 16);
        free(p);
    }
    size_t big[] = {32768, 32769, 65536, 1 << 20, (5 << 20) + 3, 64 << 20};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        void *p = malloc(big[i]);
        check_block(p, big[i], 16);
        free(p);
    }

    /* Live blocks do not overlap. */
    enum { LIVE = 2000 };
    static unsigned char *live[LIVE];
    for (int i = 0; i < LIVE; i++) {
        live[i] = malloc((size_t)(i % 300) + 1);
        CHECK(live[i] != NULL);
        memset(live[i], i & 0xff, (size_t)(i % 300) + 1);
    }
    for (int i = 0; i < LIVE; i++) {
        for (size_t j = 0; j < (size_t)(i % 300) + 1; j++)
            CHECK(live[i][j] == (unsigned char)(i & 0xff));
        free(live[i]);
    }

    /* calloc: zeroed (also when recycling a dirty block); overflow gives
     * NULL with ENOMEM. */
    for (int round = 0; round < 2; round++) {
        for (size_t n = 1; n <= 70000; n = n * 3 + 1) {
            unsigned char *p = calloc(n, 1);
            CHECK(p != NULL);
            for (size_t j = 0; j < n; j++)
                CHECK(p[j] == 0);
            memset(p, 0xff, n);
            free(p);
        }
    }
    errno = 0;
    CHECK(calloc(opaque(SIZE_MAX / 2), 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc(opaque((size_t)1 << 33), (size_t)1 << 33) == NULL && errno == ENOMEM);

    /* Failures set ENOMEM. */
    errno = 0;
    CHECK(malloc(opaque(SIZE_MAX)) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(opaque(SIZE_MAX - 4096)) == NULL && errno == ENOMEM);

    /* realloc: NULL is malloc; growth and shrink keep the contents across
     * classes and large blocks; (p, 0) frees and returns NULL as glibc. */
    unsigned char *r = realloc(NULL, 10);
    CHECK(r != NULL);
    for (int i = 0; i < 10; i++)
        r[i] = (unsigned char)i;
    size_t sizes[] = {10, 20, 100, 1000, 5000, 33000, 300000, 3 << 20, 40000, 700, 24, 3};
    size_t prev = 10;
    for (size_t i = 1; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        r = realloc(r, n);
        CHECK(r != NULL && malloc_usable_size(r) >= n);
        size_t keep = prev < n ? prev : n;
        for (size_t j = 0; j < keep; j++)
            CHECK(r[j] == (unsigned char)j);
        for (size_t j = 0; j < n; j++)
            r[j] = (unsigned char)j;
        prev = n;
    }
    CHECK(realloc(r, 0) == NULL);
    void *keep = malloc(100);
    errno = 0;
    CHECK(realloc(keep, opaque(SIZE_MAX - 100)) == NULL && errno == ENOMEM);
    free(keep); /* still ours after the failed realloc */

    /* reallocarray: overflow is ENOMEM and leaves the block alone. */
    int *a = reallocarray(NULL, 100, sizeof(int));
    CHECK(a != NULL);
    for (int i = 0; i < 100; i++)
        a[i] = i;
    errno = 0;
    CHECK(reallocarray(a, opaque(SIZE_MAX / 2), 4) == NULL && errno == ENOMEM);
    a = reallocarray(a, 1000, sizeof(int));
    CHECK(a != NULL);
    for (int i = 0; i < 100; i++)
        CHECK(a[i] == i);
    free(a);

    /* Aligned functions: every power of two up to 16 MiB, small and large
     * sizes. */
    for (size_t al = sizeof(void *); al <= ((size_t)16 << 20); al *= 2) {
        size_t ns[] = {0, 1, 24, al, al + 1, 5000, 100000};
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
            void *p = NULL;
            CHECK(posix_memalign(&p, al, ns[i]) == 0);
            check_block(p, ns[i], al);
            free(p);
            p = aligned_alloc(al, ns[i]);
            check_block(p, ns[i], al);
            free(p);
            p = memalign(al, ns[i]);
            check_block(p, ns[i], al);
            p = realloc(p, ns[i] + 100); /* an aligned block reallocs too */
            CHECK(p != NULL);
            free(p);
        }
    }
    void *q = (void *)1;
    CHECK(posix_memalign(&q, 24, 10) == EINVAL && q == (void *)1);
    CHECK(posix_memalign(&q, 4, 10) == EINVAL);
    errno = 0;
    CHECK(posix_memalign(&q, 64, opaque(SIZE_MAX - 10)) == ENOMEM);
    errno = 0;
    CHECK(aligned_alloc(24, 10) == NULL && errno == EINVAL);
    void *m = memalign(24, 10); /* glibc rounds the alignment up */
    CHECK(m != NULL && (uintptr_t)m % 32 == 0);
    free(m);
    void *v = valloc(10);
    check_block(v, 10, page);
    free(v);
    v = pvalloc(10);
    check_block(v, page, page);
    free(v);
    v = pvalloc(0);
    check_block(v, page, page);
    free(v);

    puts("malloc conformance: ok");
    return 0;
}
