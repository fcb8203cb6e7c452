/*
 * child.h: a function run in a child process, for the tests of misuse (a
 * child that commits the bug must die with a message, its harmless twin
 * must exit with status 0).
 *
 *   run_in_child(fn, arg, secs, err, len)
 *       forks; the child runs fn(arg) with its stderr on a pipe and an
 *       alarm of `secs` seconds (fn ends with _exit, or the child dies);
 *       the parent reads what the child wrote to stderr into `err` (at most
 *       len - 1 bytes, NUL-terminated) and returns the child's wait status,
 *       or -1 when the pipe or the fork failed.
 *   died_of(status, sig)    the child was killed by `sig`
 *   exited_zero(status)     the child exited with status 0
 */
#ifndef LIBPOOLS_C_TESTS_CHILD_H
#define LIBPOOLS_C_TESTS_CHILD_H

#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static inline int run_in_child(void (*fn)(const void *), const void *arg, unsigned secs,
                               char *err, size_t len)
{
    int fds[2];
    if (len == 0 || pipe(fds) != 0)
        return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        alarm(secs);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n < len - 1 && (r = read(fds[0], err + n, len - 1 - n)) > 0)
        n += (size_t)r;
    err[n] = 0;
    close(fds[0]);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return status;
}

static inline int died_of(int status, int sig)
{
    return status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == sig;
}

static inline int exited_zero(int status)
{
    return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

#endif
