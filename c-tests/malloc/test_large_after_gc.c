/* Under an address-space limit (issue #14, item 5): once small blocks have
 * used up the address space and been freed, their memory is idle in the
 * pools (thread and shared caches, spare spans), not gone. A large malloc
 * must then succeed, as a small one does, by giving that memory back first;
 * and malloc_trim(0) must give it back to the OS (checked with a plain mmap
 * afterwards). Each part runs in a child that sets RLIMIT_AS to what it
 * uses plus 96 MiB, allocates small blocks until malloc fails, and frees
 * them all. */
#include "preload.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>

enum { MIB = 1 << 20, SMALL = 200, MAX_BLOCKS = 4 << 20 };

static size_t vm_size(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    CHECK(f != NULL);
    unsigned long size, resident;
    CHECK(fscanf(f, "%lu %lu", &size, &resident) == 2);
    fclose(f);
    return size * (size_t)sysconf(_SC_PAGESIZE);
}

/* Fills the address space with small blocks (chained through their first
 * word), then frees them all; returns how many there were. */
static size_t fill_and_free(void)
{
    void *head = NULL;
    size_t n = 0;
    while (n < MAX_BLOCKS) {
        void **p = malloc(SMALL);
        if (p == NULL)
            break;
        *p = head;
        head = p;
        n++;
    }
    while (head != NULL) {
        void *next = *(void **)head;
        free(head);
        head = next;
    }
    return n;
}

static int part(int trim)
{
    alarm(60);
    /* stdio's buffers and the like, before the limit. */
    fprintf(stderr, "%s", "");
    free(malloc(2 * MIB));
    struct rlimit lim = {vm_size() + 96 * (size_t)MIB, RLIM_INFINITY};
    CHECK(setrlimit(RLIMIT_AS, &lim) == 0);
    size_t n = fill_and_free();
    CHECK(n > 1000 && n < MAX_BLOCKS);
    if (!trim) {
        void *big = malloc(MIB);
        if (big == NULL) {
            fprintf(stderr, "malloc(1 MiB) failed after %zu small blocks were freed\n", n);
            return 1;
        }
        memset(big, 1, MIB);
        free(big);
    } else {
        malloc_trim(0);
        void *m = mmap(NULL, 8 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            fprintf(stderr, "mmap(8 MiB) failed after malloc_trim, %zu small blocks freed\n", n);
            return 1;
        }
        munmap(m, 8 * MIB);
    }
    return 0;
}

int main(void)
{
    require_preload();
    for (int trim = 0; trim < 2; trim++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0)
            _exit(part(trim));
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    printf("large blocks after small ones are freed, and malloc_trim: ok\n");
    return 0;
}
