/* bench/profile-cost.c: what memory profiling costs a pool_alloc/pool_free
 * pair (64 B, a window of 64 objects, 4 M pairs per thread).
 *   gcc -O2 -pthread -Iinclude bench/profile-cost.c -o target/profile-cost \
 *       -Ltarget/release -lpools -Wl,-rpath,$PWD/target/release
 *   target/profile-cost off 1; target/profile-cost on 1   (interleave runs) */
#include <pools.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
static struct pool_head *p;
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec/1e9;}
static void *run(void *a){(void)a; void *w[64]={0}; for(long i=0;i<4000000;i++){int k=i&63; if(w[k]) pool_free(p,w[k]); w[k]=pool_alloc(p);} for(int k=0;k<64;k++) pool_free(p,w[k]); return NULL;}
int main(int argc,char**argv){ int threads=argc>2?atoi(argv[2]):1; if(argc>1&&!strcmp(argv[1],"on")) pool_set_profiling(1);
 p=pool_create("bench",64,0); double t0=now(); pthread_t t[8]; for(int i=0;i<threads;i++) pthread_create(&t[i],0,run,0); for(int i=0;i<threads;i++) pthread_join(t[i],0);
 double dt=now()-t0; printf("%s %d threads: %.1f ns per alloc+free pair\n", argc>1?argv[1]:"off", threads, dt*1e9/(4e6*threads)); return 0;}
