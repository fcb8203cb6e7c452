/*
 * haptool: the helpers of the HAProxy traffic test and benchmark
 * (scripts/haproxy-traffic.sh).
 *
 *   haptool port               prints a free TCP port of 127.0.0.1
 *   haptool cli SOCKET CMD     sends CMD to HAProxy's CLI socket (a Unix
 *                              socket), prints the answer; 1 on failure
 *   haptool storm PID US SECS  sends SIGQUIT to PID every US microseconds
 *                              for SECS seconds; prints how many it sent.
 *                              When PID dies first (gone, or a zombie),
 *                              prints "died after S s" and exits 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int usage(void)
{
    fprintf(stderr, "usage: haptool port | cli SOCKET CMD | storm PID US SECS\n");
    return 1;
}

static int free_port(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t len = sizeof a;
    int s = socket(AF_INET, SOCK_STREAM, 0);

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0) {
        perror("haptool port");
        return 1;
    }
    printf("%u\n", ntohs(a.sin_port));
    close(s);
    return 0;
}

static int cli(const char *path, const char *cmd)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    char buf[65536];
    ssize_t n;
    size_t got = 0;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);

    if (strlen(path) >= sizeof a.sun_path)
        return usage();
    strcpy(a.sun_path, path);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0)
        return 1;
    if (write(s, cmd, strlen(cmd)) != (ssize_t)strlen(cmd) || write(s, "\n", 1) != 1)
        return 1;
    while ((n = read(s, buf, sizeof buf)) > 0) {
        fwrite(buf, 1, (size_t)n, stdout);
        got += (size_t)n;
    }
    close(s);
    return n < 0 || got == 0;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Whether `pid` still runs (exists and is not a zombie). */
static int alive(pid_t pid)
{
    char path[64], stat[256];
    FILE *f;
    char *state;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return 0;
    state = fgets(stat, sizeof stat, f) ? strrchr(stat, ')') : NULL;
    fclose(f);
    return state && state[1] == ' ' && state[2] != 'Z' && state[2] != 'X';
}

static int storm(pid_t pid, long us, double secs)
{
    struct timespec next, cur;
    double start = now();
    unsigned long sent = 0;

    clock_gettime(CLOCK_MONOTONIC, &next);
    while (now() - start < secs) {
        if ((sent % 256 == 0 && !alive(pid)) || kill(pid, SIGQUIT) != 0) {
            printf("died after %.3f s, %lu signals\n", now() - start, sent);
            return 2;
        }
        sent++;
        next.tv_nsec += us * 1000;
        while (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        /* Late (a loaded machine): start again from now, no burst. */
        clock_gettime(CLOCK_MONOTONIC, &cur);
        if (cur.tv_sec > next.tv_sec || (cur.tv_sec == next.tv_sec && cur.tv_nsec > next.tv_nsec))
            next = cur;
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
            ;
    }
    if (!alive(pid)) {
        printf("died after %.3f s, %lu signals\n", now() - start, sent);
        return 2;
    }
    printf("%lu signals in %.3f s\n", sent, now() - start);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "port") == 0)
        return free_port();
    if (argc == 4 && strcmp(argv[1], "cli") == 0)
        return cli(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "storm") == 0)
        return storm((pid_t)atoi(argv[2]), atol(argv[3]), atof(argv[4]));
    return usage();
}
