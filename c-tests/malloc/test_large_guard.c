/* Guard pages and header checks of large blocks (issue #18, item 3): each
 * large mapping has an inaccessible page after its end and before its
 * header, so a linear overflow past the block's end, or an underflow past
 * its header, dies of SIGSEGV; an underflow that only reaches the header is
 * caught when the block is freed or resized (SIGABRT and a message). Each
 * bug runs in a child; a harmless twin, doing the same without the bug,
 * must exit normally.
 *
 * So that a missing guard cannot go unnoticed by luck (the page past the
 * block happening to be unmapped), the child first tries to map that page
 * itself (MAP_FIXED_NOREPLACE): with a guard there, it cannot; without one,
 * it can, and the overflow then lands in its page and the child survives. */
#include "preload.h"
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

enum { PAGE = 4096 };

/* Through volatile pointers, so the compiler keeps the bugs. */
static void *(*volatile do_memset)(void *, int, size_t) = memset;
static void (*volatile do_free)(void *) = free;
static void *(*volatile do_realloc)(void *, size_t) = realloc;

/* Maps the page at `at` for the test if nothing is there (see above). */
static void claim(uintptr_t at)
{
    void *m = mmap((void *)at, PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (m != MAP_FAILED && m != (void *)at)
        munmap(m, PAGE); /* an old kernel ignoring the flag: not ours */
}

static size_t sizes[] = {40000, 262144, 5u << 20};
static size_t cur;

/* Writes from the block's start to one byte past its usable end. */
static void overflow(int bug)
{
    unsigned char *p = malloc(cur);
    CHECK(p != NULL);
    size_t u = malloc_usable_size(p);
    uintptr_t end = (uintptr_t)p + u;
    CHECK(end % PAGE == 0); /* a large block fills its mapping */
    claim(end);
    do_memset(p, 0x41, u + (size_t)bug);
    do_free(p);
}

/* Writes from just below the block's start down past its header (at the
 * mapping's start, 32 bytes below) into the page before the mapping. */
static void underflow_far(int bug)
{
    unsigned char *p = malloc(cur);
    CHECK(p != NULL);
    uintptr_t base = (uintptr_t)p & ~(uintptr_t)(PAGE - 1);
    claim(base - PAGE);
    if (bug)
        do_memset((void *)(base - 64), 0x42, (size_t)((uintptr_t)p - base + 64));
    else
        do_memset(p, 0x42, 64);
    do_free(p);
}

/* Writes the byte just before the block (the header's last field), then
 * frees or grows the block. */
static void underflow_near(int bug, int by_realloc)
{
    unsigned char *p = malloc(cur);
    CHECK(p != NULL);
    unsigned char *w = bug ? p - 1 : p;
    do_memset(w, 0x55, 1);
    if (by_realloc) {
        unsigned char *q = do_realloc(p, cur * 3);
        CHECK(q != NULL);
        do_free(q);
    } else {
        do_free(p);
    }
}
static void underflow_near_free(int bug) { underflow_near(bug, 0); }
static void underflow_near_realloc(int bug) { underflow_near(bug, 1); }

/* Runs f(bug) in a child; returns its status, its stderr in msg. */
static int run(void (*f)(int), int bug, char *msg, size_t cap)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(20);
        dup2(fds[1], 2);
        f(bug);
        _exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fds[0], msg + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    msg[n] = 0;
    close(fds[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    return status;
}

static void expect(const char *what, void (*f)(int), int sig, const char *text)
{
    char msg[1024];
    int st = run(f, 0, msg, sizeof msg);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "%s, %zu B, harmless twin: status %d, stderr \"%s\"\n", what, cur, st, msg);
        exit(1);
    }
    st = run(f, 1, msg, sizeof msg);
    if (!WIFSIGNALED(st) || WTERMSIG(st) != sig || (text && !strstr(msg, text))) {
        fprintf(stderr, "%s, %zu B: expected signal %d%s%s, got status %d, stderr \"%s\"\n", what,
                cur, sig, text ? " and " : "", text ? text : "", st, msg);
        exit(1);
    }
    printf("%s, %zu B: signal %d%s%s", what, cur, sig, *msg ? ", " : "\n", msg);
}

int main(void)
{
    require_preload();
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        cur = sizes[i];
        expect("overflow past the end", overflow, SIGSEGV, NULL);
        expect("underflow past the header", underflow_far, SIGSEGV, NULL);
        expect("underflow into the header, free", underflow_near_free, SIGABRT,
               "header of its large block is overwritten");
        expect("underflow into the header, realloc", underflow_near_realloc, SIGABRT,
               "header of its large block is overwritten");
    }
    printf("large blocks: guard pages and header checks: ok\n");
    return 0;
}
