/* A successful realloc leaves errno as it was (issue #14, item 7), as
 * glibc's does and as free and posix_memalign here do. Growing a large
 * block first tries to extend its mapping in place; when the addresses
 * after it are taken, that mremap fails with ENOMEM and the block moves:
 * the call succeeds, and must not report the ENOMEM it recovered from.
 * Neighbours are allocated between the steps so that in-place growth
 * fails for some of them (the kernel places new mappings next to old
 * ones). Also: shrinking, growing small blocks, and a failed realloc (which
 * sets ENOMEM and leaves the block alone). */
#include "preload.h"
#include <errno.h>
#include <stdint.h>

enum { BLOCKS = 16 };

int main(void)
{
    require_preload();
    void *blocks[BLOCKS];
    void *fences[BLOCKS][4];
    for (int i = 0; i < BLOCKS; i++) {
        blocks[i] = malloc(40000 + (size_t)i * 8192);
        CHECK(blocks[i] != NULL);
        memset(blocks[i], i, 40000);
        /* Large neighbours, mapped right after (below or above) it. */
        for (int j = 0; j < 4; j++) {
            fences[i][j] = malloc((size_t)(1 + j) << 20);
            CHECK(fences[i][j] != NULL);
        }
    }
    int moved = 0;
    for (int step = 1; step <= 6; step++) {
        for (int i = 0; i < BLOCKS; i++) {
            size_t size = (size_t)(40000 + i * 8192) << step;
            errno = 0;
            void *q = realloc(blocks[i], size);
            CHECK(q != NULL);
            if (errno != 0) {
                fprintf(stderr, "realloc(%d -> %zu) succeeded with errno %d\n", i, size, errno);
                exit(1);
            }
            moved += q != blocks[i];
            CHECK(((unsigned char *)q)[39999] == (unsigned char)i);
            blocks[i] = q;
        }
    }
    /* The test is only meaningful if some growth had to move the block. */
    CHECK(moved > 0);
    for (int i = 0; i < BLOCKS; i++) {
        errno = 0;
        void *q = realloc(blocks[i], 100);
        CHECK(q != NULL && errno == 0);
        q = realloc(q, 3000);
        CHECK(q != NULL && errno == 0);
        CHECK(((unsigned char *)q)[99] == (unsigned char)i);
        blocks[i] = q;
    }
    /* A failing realloc reports ENOMEM and keeps the block. */
    errno = 0;
    void *(*volatile re)(void *, size_t) = realloc;
    CHECK(re(blocks[0], SIZE_MAX / 2) == NULL && errno == ENOMEM);
    CHECK(((unsigned char *)blocks[0])[99] == 0);
    for (int i = 0; i < BLOCKS; i++) {
        free(blocks[i]);
        for (int j = 0; j < 4; j++)
            free(fences[i][j]);
    }
    printf("realloc errno: %d moves, errno kept\n", moved);
    return 0;
}
