/* fork() when the program registered pthread_atfork handlers that allocate
 * (issue #14, item 2). Each case runs in a fresh process (this program
 * re-executed) that calls pthread_atfork at the top of main, before its
 * first allocation, with a prepare, parent or child handler that allocates
 * a new size class, 2,000 small blocks, or 100,000 bytes; then it forks
 * three times. Under the preload the handlers use malloc; built with
 * -DPOOLS (linked with -lpools) they use pools: a new pool, a pool of small
 * objects, a pool of 100,000-byte objects. A hang is killed by an alarm.
 *
 * With EARLY_ATFORK_LIB set, the handlers are those of a library whose
 * constructor ran before ours (early_atfork.c), so that its prepare handler
 * runs after ours and its parent and child handlers before ours: inside
 * the fork window, where our locks are held for the forking thread.
 *
 * Every case runs twice: in a process that never had a second thread (the
 * fork handlers then take no lock, as glibc's fork skips its malloc's
 * locks) and in one that started and joined a thread first (they take
 * them all, and open the window). */
#include "preload.h"
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef POOLS
#include <pools.h>
#endif
#include "atfork_work.h"

static const char *const KIND_NAMES[] = {"a new size class", "2,000 small blocks",
                                         "100,000 bytes"};
static const char *const WHERE_NAMES[] = {"prepare", "parent", "child"};

static void on_prepare(void)
{
    if (atfork_where == WHERE_PREPARE)
        atfork_work();
}

static void on_parent(void)
{
    if (atfork_where == WHERE_PARENT)
        atfork_work();
}

static void on_child(void)
{
    if (atfork_where == WHERE_CHILD)
        atfork_work();
}

static void *no_work(void *arg)
{
    return arg;
}

/* One case: this process registers its handlers first thing (unless a
 * library did it at load), starts and joins a thread if `threaded`, then
 * forks. */
static int run_case(int kind, int where, int threaded)
{
    if (threaded) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, no_work, NULL) == 0);
        CHECK(pthread_join(t, NULL) == 0);
    }
    if (getenv("EARLY_ATFORK_LIB") == NULL)
        CHECK(pthread_atfork(on_prepare, on_parent, on_child) == 0);
    atfork_setup(kind, where);
    free(malloc(100));
    for (int f = 0; f < 3; f++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            atfork_work();
            free(malloc(200));
            _exit(0);
        }
        int status;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    atfork_work();
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4)
        return run_case(atoi(argv[1]), atoi(argv[2]), atoi(argv[3]));
#ifndef POOLS
    require_preload();
#endif
    int failed = 0;
    for (int c = 0; c < 2 * KINDS * WHERES; c++) {
        int kind = c / WHERES % KINDS, where = c % WHERES, threaded = c / (KINDS * WHERES);
        {
            char k[4], w[4], th[4];
            snprintf(k, sizeof k, "%d", kind);
            snprintf(w, sizeof w, "%d", where);
            snprintf(th, sizeof th, "%d", threaded);
            pid_t pid = fork();
            CHECK(pid >= 0);
            if (pid == 0) {
                char both[8];
                snprintf(both, sizeof both, "%d %d", kind, where);
                /* For early_atfork.c, when it is loaded. */
                setenv("ATFORK_CASE", both, 1);
                /* Its own process group, so that a grandchild left hanging
                 * inside fork() is killed with it below. */
                setpgid(0, 0);
                alarm(10);
                execl("/proc/self/exe", argv[0], k, w, th, (char *)NULL);
                _exit(127);
            }
            int status;
            CHECK(waitpid(pid, &status, 0) == pid);
            kill(-pid, SIGKILL);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "fork with a %s handler that allocates %s%s: %s %d\n",
                        WHERE_NAMES[where], KIND_NAMES[kind],
                        threaded ? ", after a thread" : "",
                        WIFSIGNALED(status) ? "killed by signal" : "exit status",
                        WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
                failed = 1;
            }
        }
    }
    if (!failed)
        printf("fork with allocating atfork handlers%s%s: ok\n",
               getenv("EARLY_ATFORK_LIB") ? ", registered before ours" : "",
               getenv("LD_PRELOAD") ? " (preload)" : " (-lpools)");
    return failed;
}
