/* A large block that realloc moves with mremap (MREMAP_FIXED onto a fresh
 * mapping) leaves its old addresses free at once: from then on any thread's
 * mmap may be given them. The preload may only unmap what is still its own
 * there, the old mapping's two guard pages, never the range between them,
 * or it takes away another thread's fresh mapping (a block of another
 * thread that then faults, or reads another block's bytes once the range is
 * mapped again). Likewise when mremap fails after the kernel has unmapped
 * the destination (as MREMAP_FIXED does first): the destination's range may
 * be another's by then.
 *
 * The other thread is played by this program's own mremap, which the
 * preload calls (the executable's definition comes first, -rdynamic): it
 * refuses growth in place (so that realloc moves the block), and right
 * after the move maps a page of its own in the vacated range, as a racing
 * mmap would; or it unmaps the destination, maps a page in it and fails.
 * That page must still be mapped, with its contents, when realloc returns.
 *
 * Then the race itself: threads that move large blocks by realloc, threads
 * that allocate, fill, check and free large blocks (and thus map fresh
 * ones), and one calling malloc_trim, for two seconds. */
#include "preload.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>

enum { PAGE = 4096, MARK = 0x5a };

/* What our mremap does to the next call that moves a block, and the page
 * it mapped (or NULL). Volatile: glibc declares realloc a leaf function, so
 * the compiler would assume the call leaves them alone. */
enum { PASS, MAP_IN_OLD, FAIL_AFTER_UNMAP };
static volatile int mode = PASS;
static void *volatile probe;

static void *map_probe(void *at)
{
    void *m = mmap(at, PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK(m == at); /* the range is free: nothing of the preload is left there */
    memset(m, MARK, PAGE);
    return m;
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    void *dest = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        dest = va_arg(ap, void *);
        va_end(ap);
    }
    int m = mode;
    if (m != PASS && !(flags & MREMAP_MAYMOVE)) {
        errno = ENOMEM; /* no growth in place: the block must move */
        return MAP_FAILED;
    }
    if (m == FAIL_AFTER_UNMAP && (flags & MREMAP_FIXED)) {
        mode = PASS;
        CHECK(munmap(dest, new_len) == 0);
        probe = map_probe(dest);
        errno = ENOMEM;
        return MAP_FAILED;
    }
    void *r = (void *)syscall(SYS_mremap, old, old_len, new_len, (long)flags, dest);
    if (m == MAP_IN_OLD && r != MAP_FAILED && (flags & MREMAP_FIXED)) {
        mode = PASS;
        probe = map_probe(old);
    }
    return r;
}

/* Whether the probe page is still mapped and holds what it was given. */
static int probe_intact(void)
{
    if (msync(probe, PAGE, MS_ASYNC) != 0) /* ENOMEM: unmapped */
        return 0;
    const unsigned char *p = probe;
    for (size_t i = 0; i < PAGE; i++)
        if (p[i] != MARK)
            return 0;
    return 1;
}

static void fill(unsigned char *p, size_t n, unsigned char s)
{
    for (size_t i = 0; i < n; i += 509)
        p[i] = (unsigned char)(s + i);
    p[n - 1] = (unsigned char)(s + n - 1);
}

static int intact(const unsigned char *p, size_t n, unsigned char s)
{
    for (size_t i = 0; i < n; i += 509)
        if (p[i] != (unsigned char)(s + i))
            return 0;
    return p[n - 1] == (unsigned char)(s + n - 1);
}

static void move_keeps_others(int m)
{
    malloc_trim(0);
    size_t n = 6 << 20, grown = 9 << 20; /* above the 4 MiB of copying growth */
    unsigned char *p = malloc(n);
    CHECK(p != NULL);
    fill(p, n, 3);
    probe = NULL;
    mode = m;
    unsigned char *q = realloc(p, grown);
    mode = PASS;
    CHECK(q != NULL && intact(q, n, 3));
    CHECK(probe != NULL); /* the move (or its failure) happened */
    if (m == MAP_IN_OLD)
        CHECK(q != p);
    if (!probe_intact()) {
        fprintf(stderr, "realloc unmapped a page mapped %s after the kernel %s\n",
                m == MAP_IN_OLD ? "in the block's old range" : "in mremap's destination",
                m == MAP_IN_OLD ? "moved the block" : "unmapped it and failed");
        exit(1);
    }
    CHECK(munmap(probe, PAGE) == 0);
    free(q);
    printf("large move: a mapping made %s survives: ok\n",
           m == MAP_IN_OLD ? "in the vacated range" : "in a failed move's destination");
}

static volatile int stop;

static uint64_t next(uint64_t *r)
{
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    return *r;
}

static void *mover(void *arg)
{
    uint64_t r = 0x9e3779b97f4a7c15ull * (uint64_t)(uintptr_t)arg;
    while (!stop) {
        size_t n = (9 << 19) + next(&r) % (4 << 20);
        unsigned char *p = malloc(n);
        CHECK(p != NULL);
        fill(p, n, 1);
        unsigned char *q = realloc(p, n + (1 << 20) + next(&r) % (6 << 20));
        CHECK(q != NULL && intact(q, n, 1));
        free(q);
    }
    return NULL;
}

static void *filler(void *arg)
{
    uint64_t r = 0x2545f4914f6cdd1dull * (uint64_t)(uintptr_t)arg;
    while (!stop) {
        size_t n = 33000 + next(&r) % (3 << 20);
        unsigned char *p = (next(&r) & 1) ? calloc(1, n) : malloc(n);
        CHECK(p != NULL);
        unsigned char s = (unsigned char)next(&r);
        fill(p, n, s);
        sched_yield();
        CHECK(intact(p, n, s));
        free(p);
    }
    return NULL;
}

static void *trimmer(void *arg)
{
    (void)arg;
    while (!stop) {
        malloc_trim(0);
        usleep(200);
    }
    return NULL;
}

static void race(void)
{
    enum { MOVERS = 2, FILLERS = 3 };
    pthread_t t[MOVERS + FILLERS + 1];
    int k = 0;
    for (int i = 0; i < MOVERS; i++)
        CHECK(pthread_create(&t[k++], NULL, mover, (void *)(uintptr_t)(i + 1)) == 0);
    for (int i = 0; i < FILLERS; i++)
        CHECK(pthread_create(&t[k++], NULL, filler, (void *)(uintptr_t)(i + 1)) == 0);
    CHECK(pthread_create(&t[k++], NULL, trimmer, NULL) == 0);
    sleep(2);
    stop = 1;
    for (int i = 0; i < k; i++)
        CHECK(pthread_join(t[i], NULL) == 0);
    printf("large blocks moved while others map theirs: ok\n");
}

int main(void)
{
    require_preload();
    move_keeps_others(MAP_IN_OLD);
    move_keeps_others(FAIL_AFTER_UNMAP);
    race();
    return 0;
}
