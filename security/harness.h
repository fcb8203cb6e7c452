/*
 * harness.h: the runner of the security suite (security/README.md).
 *
 * A suite is a table of cases, each a function run(size, bug) that commits
 * one kind of bug at one size when `bug` is 1 and does the same steps
 * without the bug (its harmless twin) when `bug` is 0. Each runs in a
 * forked child (c-tests/child.h) with an alarm; the parent classifies what
 * happened:
 *
 *   CAUGHT   the child died of SIGABRT, SIGSEGV or SIGBUS, or exited with
 *            HANDLED (the allocator did what was due: NULL for an
 *            overflowing size, zeroed memory from calloc)
 *   MISSED   the child exited 0 after committing the bug
 *   HANG     the alarm fired
 *   OTHER    any other end (another signal, a setup failure: exit 3)
 *
 * A twin must exit 0 (or HANDLED, for the cases whose correct result is
 * HANDLED either way); a twin that does not makes the case BROKEN, which
 * the runner reports and counts as a failure of the suite itself.
 *
 * Usage: prog [--list] [--expect FILE] [--only KIND]
 *   prints one line per case:
 *     <kind> <size> <CAUGHT|MISSED|HANG|OTHER|BROKEN> <what the child said>
 *   --expect FILE: FILE has a line "<kind> <size> CAUGHT|MISSED|ANY" for
 *   every case ('#' starts a comment line): what the case must give (ANY:
 *   whatever it gives, for a case that depends on what happens to lie
 *   around the block). Exits 1 if a case differs or is not in FILE, or if
 *   any twin fails.
 */
#ifndef LIBPOOLS_SECURITY_HARNESS_H
#define LIBPOOLS_SECURITY_HARNESS_H

#include "../c-tests/child.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The exit status of a child whose allocator did what was due. */
#define HANDLED 10
/* The exit status of a child whose setup failed (no memory, ...). */
#define SETUP_FAILED 3

#define KIB ((size_t)1024)
#define MIB ((size_t)1024 * 1024)

struct sec_case {
    const char *kind;
    void (*run)(size_t size, int bug);
    /* 1: the case does not depend on the size: run once, at size 0. */
    int sizeless;
};

/* Through a volatile pointer, so that the compiler keeps every write. */
static void *(*volatile sec_memset)(void *, int, size_t) = memset;

static const size_t sec_sizes[] = { 8, 4 * KIB, 256 * KIB };

struct sec_job {
    const struct sec_case *c;
    size_t size;
    int bug;
};

static void sec_child(const void *arg)
{
    const struct sec_job *j = arg;
    j->c->run(j->size, j->bug);
    _exit(0);
}

/* The first line of what the child wrote, cleaned for one table cell. */
static void sec_first_line(char *msg)
{
    char *nl = strchr(msg, '\n');
    if (nl)
        *nl = 0;
    for (char *c = msg; *c; c++)
        if (*c == '\t' || (unsigned char)*c < 32)
            *c = ' ';
    if (strlen(msg) > 160)
        msg[160] = 0;
}

static const char *sec_classify(int status, char *why, size_t len)
{
    if (status == -1) {
        snprintf(why, len, "fork failed");
        return "OTHER";
    }
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        snprintf(why, len, "%s", strsignal(sig));
        if (sig == SIGABRT || sig == SIGSEGV || sig == SIGBUS)
            return "CAUGHT";
        return sig == SIGALRM ? "HANG" : "OTHER";
    }
    int code = WEXITSTATUS(status);
    snprintf(why, len, "exit %d", code);
    if (code == HANDLED)
        return "CAUGHT";
    return code == 0 ? "MISSED" : "OTHER";
}

/* What FILE expects of "<kind> <size>": "CAUGHT", "MISSED", "ANY", or
 * NULL when it does not list the case. */
static const char *sec_expected(const char *file, const char *kind, size_t size)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", file);
        exit(2);
    }
    static char want[16];
    char line[256], k[128];
    unsigned long s;
    const char *found = NULL;
    while (!found && fgets(line, sizeof line, f))
        if (line[0] != '#' && sscanf(line, "%127s %lu %15s", k, &s, want) == 3 &&
            strcmp(k, kind) == 0 && s == size)
            found = want;
    fclose(f);
    return found;
}

static int sec_main(const struct sec_case *cases, size_t n, int argc, char **argv)
{
    const char *expect = NULL, *only = NULL;
    int list = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--list") == 0)
            list = 1;
        else if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc)
            expect = argv[++i];
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--list] [--expect FILE] [--only KIND]\n", argv[0]);
            return 2;
        }
    }
    int failures = 0, ran = 0;
    for (size_t i = 0; i < n; i++) {
        const struct sec_case *c = &cases[i];
        if (only && strcmp(only, c->kind) != 0)
            continue;
        size_t nsizes = c->sizeless ? 1 : sizeof sec_sizes / sizeof *sec_sizes;
        for (size_t s = 0; s < nsizes; s++) {
            size_t size = c->sizeless ? 0 : sec_sizes[s];
            if (list) {
                printf("%s %zu\n", c->kind, size);
                continue;
            }
            char msg[4096], why[64];
            struct sec_job twin = { c, size, 0 }, bug = { c, size, 1 };
            int st = run_in_child(sec_child, &twin, 10, msg, sizeof msg);
            const char *res = sec_classify(st, why, sizeof why);
            int twin_ok = st != -1 && WIFEXITED(st) &&
                          (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == HANDLED);
            if (!twin_ok) {
                sec_first_line(msg);
                printf("%s %zu BROKEN twin: %s: %s\n", c->kind, size, why, msg);
                failures++;
                ran++;
                continue;
            }
            st = run_in_child(sec_child, &bug, 10, msg, sizeof msg);
            res = sec_classify(st, why, sizeof why);
            sec_first_line(msg);
            printf("%s %zu %s %s%s%s\n", c->kind, size, res, why, *msg ? ": " : "", msg);
            ran++;
            if (expect) {
                const char *want = sec_expected(expect, c->kind, size);
                if (!want || (strcmp(want, "ANY") != 0 && strcmp(want, res) != 0)) {
                    printf("  ^ expected %s (%s)\n", want ? want : "a line for the case", expect);
                    failures++;
                }
            }
            fflush(stdout);
        }
    }
    if (list)
        return 0;
    if (ran == 0) {
        fprintf(stderr, "no case ran\n");
        return 1;
    }
    if (failures)
        printf("%d of %d cases failed%s\n", failures, ran, expect ? " their expectation" : "");
    return failures ? 1 : 0;
}

#endif
