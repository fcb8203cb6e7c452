/* The paranoid options under the preload, from POOL_DEBUG: the test runs
 * itself again with POOL_DEBUG=zero-on-free,random-order. Without them a
 * freed block keeps its bytes and a fresh span hands out its blocks in
 * address order; with them a use after free reads zeros (but the 8-byte
 * key word at offset 16 that marks the block free), and the blocks of a
 * fresh span come in a random order. The reads after free go through a
 * volatile function pointer. */
#include "preload.h"
#include <sys/wait.h>
#include <unistd.h>

static unsigned char read_byte(const void *p, size_t i) { return ((const unsigned char *)p)[i]; }
static unsigned char (*volatile read_after_free)(const void *, size_t) = read_byte;
static void *(*volatile do_malloc)(size_t) = malloc;

int main(int argc, char **argv)
{
    (void)argc;
    require_preload();
    const char *dbg = getenv("POOL_DEBUG");
    int paranoid = dbg && strstr(dbg, "zero-on-free") && strstr(dbg, "random-order");
    enum { SIZE = 200, N = 200 };
    unsigned char *p = do_malloc(SIZE);
    CHECK(p != NULL);
    memset(p, 0x5a, SIZE);
    free(p);
    size_t kept = 0;
    for (size_t i = 0; i < SIZE; i++)
        if ((i < 16 || i >= 24) && read_after_free(p, i) != 0)
            kept++;
    /* A class (1792 B) nothing else in this program uses: fresh spans. */
    static void *o[N];
    int descents = 0;
    for (int i = 0; i < N; i++) {
        CHECK((o[i] = do_malloc(1700)) != NULL);
        memset(o[i], i, 1700);
        if (i > 0 && o[i] < o[i - 1])
            descents++;
    }
    for (int i = 0; i < N; i++)
        free(o[i]);
    printf("%s: %zu bytes kept after free, %d descents in %d blocks\n",
           paranoid ? "zero-on-free,random-order" : "default", kept, descents, N);
    if (paranoid) {
        CHECK(kept == 0);
        CHECK(descents > N / 5);
        puts("test_paranoid: ok");
        return 0;
    }
    CHECK(kept == SIZE - 8);
    CHECK(descents < 5); /* a span boundary may go down */
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        setenv("POOL_DEBUG", "zero-on-free,random-order", 1);
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return 0;
}
