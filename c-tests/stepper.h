/*
 * stepper.h: a thread that runs one call at a time, in turns with the test
 * (for tests that need two threads to act in a chosen order).
 *
 *   stepper_start(s)          starts the thread; it waits for a call
 *   stepper_run(s, fn, arg)   runs fn(arg) on the thread, returns when done
 *   stepper_stop(s)           ends the thread (its exit runs as usual)
 *
 * Include after check.h.
 */
#ifndef LIBPOOLS_C_TESTS_STEPPER_H
#define LIBPOOLS_C_TESTS_STEPPER_H

#include <pthread.h>
#include <semaphore.h>
#include <string.h>

struct stepper {
    pthread_t th;
    sem_t go;   /* posted by the test: run `fn` (or leave, if `quit`) */
    sem_t done; /* posted by the thread when `fn` returned */
    void (*fn)(void *);
    void *arg;
    int quit;
};

static void *stepper_main_(void *arg)
{
    struct stepper *s = arg;
    for (;;) {
        sem_wait(&s->go);
        if (s->quit)
            return NULL;
        s->fn(s->arg);
        sem_post(&s->done);
    }
}

static inline void stepper_start(struct stepper *s)
{
    memset(s, 0, sizeof(*s));
    CHECK(sem_init(&s->go, 0, 0) == 0);
    CHECK(sem_init(&s->done, 0, 0) == 0);
    CHECK(pthread_create(&s->th, NULL, stepper_main_, s) == 0);
}

static inline void stepper_run(struct stepper *s, void (*fn)(void *), void *arg)
{
    s->fn = fn;
    s->arg = arg;
    sem_post(&s->go);
    sem_wait(&s->done);
}

static inline void stepper_stop(struct stepper *s)
{
    s->quit = 1;
    sem_post(&s->go);
    CHECK(pthread_join(s->th, NULL) == 0);
    sem_destroy(&s->go);
    sem_destroy(&s->done);
}

#endif
