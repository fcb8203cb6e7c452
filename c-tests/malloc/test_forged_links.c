/* Under the preload, a write after free that plants a pointer in a free
 * block's links (a shared-cache cluster's two links at its start, a span
 * free list's link in its first word) aborts with "corrupted free list"
 * when the block is popped, instead of handing out the planted address.
 * Blocks of 8 B and 4 KiB (large blocks hold no links): freed by a thread
 * that exits (its cache drains into the shared cache, as clusters), and
 * then (span) put back on their span by malloc_trim. In child processes,
 * which must die of SIGABRT with the message; each twin writes the pointer
 * at offset 24 (no link there) and must exit 0. The write goes through a
 * volatile function pointer. */
#include "preload.h"
#include "../child.h"
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void store_words(void *obj, size_t off, void *v, int n)
{
    for (int i = 0; i < n; i++)
        memcpy((char *)obj + off + (size_t)i * sizeof v, &v, sizeof v);
}
static void (*volatile write_after_free)(void *, size_t, void *, int) = store_words;
static void *(*volatile do_malloc)(size_t) = malloc;

static _Alignas(64) char fake[8192];
enum { N = 16 }; /* with `keep`, in one span even at 4 KiB */
static void *blocks[N];
static size_t block_size;

static void *alloc_and_free(void *arg)
{
    (void)arg;
    for (int i = 0; i < N; i++)
        if (!(blocks[i] = do_malloc(block_size)))
            _exit(3);
    for (int i = 0; i < N; i++)
        free(blocks[i]);
    return NULL;
}

static void child(size_t size, int span, int twin)
{
    block_size = size;
    void *keep = do_malloc(size); /* keeps the span mapped */
    pthread_t t;
    if (!keep || pthread_create(&t, NULL, alloc_and_free, NULL) || pthread_join(t, NULL))
        _exit(3);
    if (span)
        malloc_trim(0);
    for (int i = 0; i < N; i++)
        write_after_free(blocks[i], twin ? 24 : 0, fake, twin ? 1 : 2);
    /* More than this thread's cache may hold of its own: `keep` came with
     * a batch of up to a page of new blocks (256 of 16 bytes), which the
     * first allocations take before the freed blocks' turn comes. */
    for (int i = 0; i < N + 256; i++) {
        void *q = do_malloc(size);
        if (!q)
            _exit(4);
        if ((char *)q >= fake && (char *)q < fake + sizeof fake)
            _exit(5); /* the planted address was handed out */
    }
    free(keep);
    _exit(twin ? 0 : 6); /* not caught */
}

static int failures;

/* What run() gives the child. */
struct job {
    size_t size;
    int span;
    int twin;
};

static void child_main(const void *arg)
{
    const struct job *j = arg;
    child(j->size, j->span, j->twin);
}

static void run(size_t size, int span, int twin)
{
    struct job job = { size, span, twin };
    char msg[1024];
    int status = run_in_child(child_main, &job, 10, msg, sizeof msg);
    CHECK(status != -1);
    const char *where = span ? "span" : "shared cache";
    if (twin) {
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "%zu B in the %s, twin: status %#x, \"%s\"\n", size, where, status,
                    msg);
            failures++;
        }
        return;
    }
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT ||
        !strstr(msg, "corrupted free list")) {
        fprintf(stderr, "%zu B in the %s: not caught: status %#x, \"%s\"\n", size, where,
                status, msg);
        failures++;
        return;
    }
    printf("%zu B in the %s: %s", size, where, msg);
}

int main(void)
{
    require_preload();
    size_t sizes[] = { 8, 4096 };
    for (unsigned i = 0; i < 2; i++)
        for (int span = 0; span <= 1; span++) {
            run(sizes[i], span, 0);
            run(sizes[i], span, 1);
        }
    if (failures) {
        fprintf(stderr, "test_forged_links: %d cases failed\n", failures);
        return 1;
    }
    puts("test_forged_links: ok");
    return 0;
}
