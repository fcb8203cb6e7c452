/*
 * compat/haproxy/memory.h: replaces HAProxy 2.0's include/common/memory.h.
 *
 * HAProxy's pool API, served by libpools (include/pools.h). Written for
 * libpools; none of HAProxy's pool code is left. What each call becomes:
 *
 *   pool_alloc(p)            libpools' pool_alloc, then HAProxy's -dM poison
 *                            fill (mem_poison_byte), as 2.0 did it
 *   pool_alloc_dirty(p),     libpools' pool_alloc: libpools has no "only
 *   pool_get_first(p),       from the caches" call, so these may allocate
 *   __pool_get_first(p)      where 2.0 returned NULL (a failure avoided)
 *   pool_free(p, ptr)        libpools' pool_free (NULL does nothing)
 *   pool_flush(p), pool_gc() libpools' own
 *   create_pool(), DECLARE_POOL, DECLARE_STATIC_POOL, pool_destroy(),
 *   pool_destroy_all(), pool_refill_alloc(), dump_pools*(),
 *   pool_total_failures()    compat/haproxy/memory.c
 *   pool_total_allocated(),
 *   pool_total_used()        libpools' own (bytes, all pools)
 *
 * A pool handle is libpools' opaque `struct pool_head`: HAProxy reads no
 * field of it. The few places of HAProxy that did (buffer.h, buffer.c,
 * chunk.c, flt_spoe.c) are changed by haproxy-2.0.0.patch to call
 * pool_size(), pool_set_minavail(), pool_set_limit() and the two helpers
 * at the end of this file.
 */
#ifndef _COMMON_MEMORY_H
#define _COMMON_MEMORY_H

/* What HAProxy's memory.h brought in, which other files rely on. */
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>
#include <unistd.h>

#include <common/config.h>
#include <common/mini-clist.h>
#include <common/hathreads.h>
#include <common/initcall.h>

#include <pools.h>

/* buffer.h's b_alloc_margin() takes the pool's spin lock unless the pools
 * are lockless; a libpools handle has no lock to take. */
#ifndef CONFIG_HAP_LOCKLESS_POOLS
#error "the libpools compat layer needs CONFIG_HAP_LOCKLESS_POOLS (USE_THREAD on x86_64)"
#endif

/* MEM_F_SHARED and MEM_F_EXACT are pools.h's POOL_F_* values. */
#ifdef DEBUG_DONT_SHARE_POOLS
#undef MEM_F_SHARED
#define MEM_F_SHARED 0
#endif

/* HAProxy's per-thread caches are gone (libpools keeps its own): no pool
 * has an index into them, so b_alloc_margin(), their one reader left,
 * never reads pool_cache. */
#define MAX_BASE_POOLS 32

struct pool_cache_head {
	struct list list;    /* unused */
	size_t size;         /* unused */
	unsigned int count;  /* unused */
};

extern struct pool_cache_head pool_cache[][MAX_BASE_POOLS];

static inline ssize_t pool_get_index(const struct pool_head *pool)
{
	return -1;
}

/* Byte that new objects are filled with when >= 0 (-dM, haproxy.c). */
extern int mem_poison_byte;

/* Creates a pool as libpools' pool_create() does and remembers the handle
 * for pool_destroy_all() and pool_total_failures(). NULL when out of
 * memory. pools.h's own create_pool spelling is replaced by this one. */
#undef create_pool
struct pool_head *create_pool(char *name, unsigned int size, unsigned int flags);

/* create_pool(name, size, MEM_F_SHARED) into *ptr, or an alert and exit. */
void create_pool_callback(struct pool_head **ptr, char *name, unsigned int size);

/* HAProxy creates its declared pools at the STG_POOL init stage, after
 * its early setup, through create_pool_callback(); pools.h's versions of
 * these macros (constructors) are replaced so that HAProxy keeps its
 * order and its error message. */
#undef DECLARE_POOL
#undef DECLARE_STATIC_POOL

#define REGISTER_POOL(ptr, name, size)  \
	INITCALL3(STG_POOL, create_pool_callback, (ptr), (name), (size))

#define DECLARE_POOL(ptr, name, size)   \
	struct pool_head *(ptr) = NULL; \
	REGISTER_POOL(&ptr, name, size)

#define DECLARE_STATIC_POOL(ptr, name, size) \
	static struct pool_head *(ptr);      \
	REGISTER_POOL(&ptr, name, size)

/* Releases one handle (libpools' pool_destroy: refused, returning <pool>,
 * while objects are held) and forgets it when released. */
void *hap_pool_destroy(struct pool_head *pool);
#define pool_destroy(pool) hap_pool_destroy(pool)

/* pool_destroy() on every handle create_pool() gave out (at exit). */
void pool_destroy_all();

/* Returns an object and leaves at least <avail> more obtainable: it takes
 * <avail> + 1 objects and gives <avail> back to the caches, so that they
 * are there for the next calls. Under a pool_set_limit() cap, returns NULL
 * (counting a pool failure in HAProxy's activity) when the cap leaves no
 * room for <avail> more. */
void *__pool_refill_alloc(struct pool_head *pool, unsigned int avail);
void *pool_refill_alloc(struct pool_head *pool, unsigned int avail);

/* Prints libpools' dump (pool_dump_to_buffer) into the trash chunk. */
void dump_pools_to_trash();
/* The same, then the trash chunk to stderr (SIGQUIT). */
void dump_pools(void);
/* Failed allocations, all pools together. */
int pool_total_failures();

/* libpools' pool_alloc, with the -dM poison fill. */
static inline void *hap_pool_alloc(struct pool_head *pool)
{
	void *p = (pool_alloc)(pool);

	if (unlikely(mem_poison_byte >= 0) && p)
		memset(p, mem_poison_byte, pool_size(pool));
	return p;
}
#define pool_alloc(pool) hap_pool_alloc(pool)

#define pool_alloc_dirty(pool)  (pool_alloc)(pool)
#define pool_get_first(pool)    (pool_alloc)(pool)
#define __pool_get_first(pool)  (pool_alloc)(pool)

/* Objects of <pool> allocated but idle (in the thread caches or the shared
 * cache): what 2.0 computed as pool->allocated - pool->used. Takes the
 * library's registry lock: for slow paths only. */
static inline unsigned long pool_idle(const struct pool_head *pool)
{
	struct pool_stats st;

	if (pool_get_stats(pool, &st) != 0)
		return 0;
	return st.allocated - st.used;
}

/* Whether one more object can be taken from <pool> with <margin> more
 * still obtainable after it (b_alloc_margin()). Without a pool_set_limit()
 * cap that is always so, as in 2.0 where the slow path then called malloc
 * (an allocation that fails is reported by pool_alloc). Under a cap, the
 * idle objects plus the room left under the cap must exceed <margin>. */
static inline int pool_has_margin(const struct pool_head *pool, int margin)
{
	unsigned long limit = pool_get_limit(pool);
	struct pool_stats st;

	if (likely(!limit) || margin < 0)
		return 1;
	if (pool_get_stats(pool, &st) != 0)
		return 0;
	return st.allocated - st.used +
	       (limit > st.allocated ? limit - st.allocated : 0) > (unsigned long)margin;
}

#endif /* _COMMON_MEMORY_H */
