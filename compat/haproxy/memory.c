/*
 * compat/haproxy/memory.c: replaces HAProxy 2.0's src/memory.c.
 *
 * The parts of HAProxy's pool API that are not a direct libpools call
 * (see memory.h): creation and destruction with the list of handles that
 * pool_destroy_all() needs, the refill, the totals, and "show pools" /
 * SIGQUIT printing libpools' dump.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <types/activity.h>
#include <types/applet.h>
#include <types/cli.h>
#include <types/global.h>

#include <common/chunk.h>
#include <common/config.h>
#include <common/hathreads.h>
#include <common/initcall.h>
#include <common/memory.h>
#include <common/mini-clist.h>

#include <proto/channel.h>
#include <proto/cli.h>
#include <proto/log.h>
#include <proto/stream_interface.h>

int mem_poison_byte = -1;

/* Never read (pool_get_index() is -1 for every pool); one row so that the
 * declaration in memory.h has a definition. */
struct pool_cache_head pool_cache[1][MAX_BASE_POOLS];

/* One handle given out by create_pool(). A merged pool appears once per
 * handle, as libpools counts its users. */
struct pool_ref {
	struct list list;
	struct pool_head *pool;
};

/* Every handle given out and not yet released, under handles_lock. */
static struct list handles = LIST_HEAD_INIT(handles);
__decl_hathreads(static HA_SPINLOCK_T handles_lock);

struct pool_head *create_pool(char *name, unsigned int size, unsigned int flags)
{
	struct pool_ref *ref = malloc(sizeof(*ref));
	struct pool_head *pool;

	if (!ref)
		return NULL;
	pool = pool_create(name, size, flags);
	if (!pool) {
		free(ref);
		return NULL;
	}
	ref->pool = pool;
	HA_SPIN_LOCK(POOL_LOCK, &handles_lock);
	LIST_ADDQ(&handles, &ref->list);
	HA_SPIN_UNLOCK(POOL_LOCK, &handles_lock);
	return pool;
}

void create_pool_callback(struct pool_head **ptr, char *name, unsigned int size)
{
	*ptr = create_pool(name, size, MEM_F_SHARED);
	if (!*ptr) {
		ha_alert("Cannot create the memory pool '%s' (%u bytes): %s. Aborting.\n",
			 name, size, strerror(errno));
		exit(1);
	}
}

void *hap_pool_destroy(struct pool_head *pool)
{
	struct pool_ref *ref;
	void *kept;

	if (!pool)
		return NULL;
	kept = (pool_destroy)(pool);
	if (kept)
		return kept;
	/* Released: forget one of its handles. */
	HA_SPIN_LOCK(POOL_LOCK, &handles_lock);
	list_for_each_entry(ref, &handles, list) {
		if (ref->pool == pool) {
			LIST_DEL(&ref->list);
			free(ref);
			break;
		}
	}
	HA_SPIN_UNLOCK(POOL_LOCK, &handles_lock);
	return NULL;
}

void pool_destroy_all()
{
	struct pool_ref *ref, *back;

	HA_SPIN_LOCK(POOL_LOCK, &handles_lock);
	list_for_each_entry_safe(ref, back, &handles, list) {
		if ((pool_destroy)(ref->pool) == NULL) {
			LIST_DEL(&ref->list);
			free(ref);
		}
	}
	HA_SPIN_UNLOCK(POOL_LOCK, &handles_lock);
}

void *__pool_refill_alloc(struct pool_head *pool, unsigned int avail)
{
	void *ret, *spare = NULL;
	unsigned int taken;

	if (!pool_has_margin(pool, avail)) {
		activity[tid].pool_fail++;
		return NULL;
	}
	ret = (pool_alloc)(pool);
	if (!ret) {
		activity[tid].pool_fail++;
		return NULL;
	}
	/* The spares are chained through their first word while held. */
	if (pool_size(pool) < sizeof(void *))
		return ret;
	for (taken = 0; taken < avail; taken++) {
		void *obj = (pool_alloc)(pool);

		if (!obj)
			break;
		*(void **)obj = spare;
		spare = obj;
	}
	while (spare) {
		void *next = *(void **)spare;

		pool_free(pool, spare);
		spare = next;
	}
	return ret;
}

void *pool_refill_alloc(struct pool_head *pool, unsigned int avail)
{
	return __pool_refill_alloc(pool, avail);
}

void dump_pools_to_trash()
{
	size_t room;
	long len;

	chunk_printf(&trash, "Dumping pools usage (libpools). Use SIGQUIT to flush them.\n");
	room = trash.size - trash.data;
	len = pool_dump_to_buffer(trash.area + trash.data, room, POOL_DUMP_UNSORTED, 0);
	if (len > 0)
		trash.data += (size_t)len < room ? (size_t)len : room - 1;
}

void dump_pools(void)
{
	dump_pools_to_trash();
	qfprintf(stderr, "%s", trash.area);
}

int pool_total_failures()
{
	struct pool_ref *ref, *prev;
	struct pool_stats st;
	unsigned long failed = 0;

	HA_SPIN_LOCK(POOL_LOCK, &handles_lock);
	list_for_each_entry(ref, &handles, list) {
		int seen = 0;

		/* a merged pool counts once */
		list_for_each_entry(prev, &handles, list) {
			if (prev == ref)
				break;
			if (prev->pool == ref->pool)
				seen = 1;
		}
		if (!seen && pool_get_stats(ref->pool, &st) == 0)
			failed += st.failed;
	}
	HA_SPIN_UNLOCK(POOL_LOCK, &handles_lock);
	return failed;
}

/* "show pools" on the CLI: the dump into the trash chunk, then into the
 * stream's input channel; 0 to be called again when it had no room. */
static int cli_io_handler_dump_pools(struct appctx *appctx)
{
	struct stream_interface *si = appctx->owner;

	dump_pools_to_trash();
	if (ci_putchk(si_ic(si), &trash) == -1) {
		si_rx_room_blk(si);
		return 0;
	}
	return 1;
}

static struct cli_kw_list cli_kws = {{ },{
	{ { "show", "pools",  NULL }, "show pools     : report information about the memory pools usage", NULL, cli_io_handler_dump_pools },
	{{},}
}};

INITCALL1(STG_REGISTER, cli_register_kw, &cli_kws);
