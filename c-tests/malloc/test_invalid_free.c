/* A pointer the preload did not hand out makes free / realloc /
 * malloc_usable_size print a clear message and abort: checked in child
 * processes, which must die of SIGABRT with the message on stderr. */
#include "preload.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static char global_buf[64];

static void expect_abort(const char *what, void (*f)(void))
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        f();
        _exit(0); /* not reached if the preload aborts */
    }
    close(fds[1]);
    char msg[1024];
    size_t n = 0;
    ssize_t r;
    while ((r = read(fds[0], msg + n, sizeof msg - 1 - n)) > 0)
        n += (size_t)r;
    msg[n] = 0;
    close(fds[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT ||
        strstr(msg, "libpools_malloc: ") == NULL || strstr(msg, "invalid pointer") == NULL) {
        fprintf(stderr, "%s: expected SIGABRT and the message, got status %d, stderr \"%s\"\n",
                what, status, msg);
        exit(1);
    }
    printf("%s: aborted with: %s", what, msg);
}

static void free_stack(void)
{
    char local[32];
    free(local + (getpid() & 1) * 16); /* hides the stack pointer from gcc */
}
static void free_global(void) { free(global_buf + 16); }
static void free_inner(void)
{
    char *p = malloc(100);
    free(p + 16);
}
static void free_large_inner(void)
{
    char *p = malloc(1 << 20);
    free(p + 4096);
}
/* Freed twice: the first free puts it in the cache of large mappings. */
static void free_large_twice(void)
{
    char *p = malloc(100000);
    free(p);
    free(p);
}
static void free_mmap(void)
{
    void *p = mmap(NULL, 1 << 22, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    free((char *)p + 4096);
}
static void free_unmapped(void)
{
    void *p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    munmap(p, 1 << 16);
    free(p); /* unmapped: must be rejected without being read */
}
static void realloc_global(void) { (void)!realloc(global_buf + 32, 10); }
static void usable_global(void) { (void)!malloc_usable_size(global_buf); }

int main(void)
{
    require_preload();
    expect_abort("free(stack)", free_stack);
    expect_abort("free(global)", free_global);
    expect_abort("free(inside a block)", free_inner);
    expect_abort("free(inside a large block)", free_large_inner);
    expect_abort("free(large block twice)", free_large_twice);
    expect_abort("free(foreign mmap)", free_mmap);
    expect_abort("free(unmapped)", free_unmapped);
    expect_abort("realloc(global)", realloc_global);
    expect_abort("malloc_usable_size(global)", usable_global);
    puts("invalid pointers abort: ok");
    return 0;
}
