/* bench/forks.c N [THREADED]: what fork() costs a process under a malloc
 * (bench/startup.sh counts its page faults). It allocates 64 blocks of
 * 16 to 2,536 bytes (25 of the preload's classes, as a shell holds), then
 * N times forks a child that allocates and frees one block and leaves by
 * _exit, and waits for it. With THREADED = 1 it first starts and joins a
 * thread, so that the C library no longer counts the process as single-
 * threaded. The page faults of the parent and its children, less those of
 * a run with N = 0, over N, are what one fork costs both sides. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *no_work(void *arg)
{
    return arg;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 100;
    if (argc > 2 && atoi(argv[2]) == 1) {
        pthread_t t;
        if (pthread_create(&t, NULL, no_work, NULL) != 0 || pthread_join(t, NULL) != 0)
            return 1;
    }
    void *keep[64];
    for (int i = 0; i < 64; i++) {
        keep[i] = malloc(16 + (size_t)i * 40);
        if (keep[i] == NULL)
            return 1;
        memset(keep[i], 1, 16);
    }
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            return 1;
        if (pid == 0) {
            free(malloc(100));
            _exit(0);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            return 1;
        free(malloc(200));
    }
    for (int i = 0; i < 64; i++)
        free(keep[i]);
    return 0;
}
