//! Per-thread caches: the hot path.
//!
//! Each thread that touches a pool gets one [`ThreadCache`]: a page-mapped
//! table of [`Entry`]s indexed by the pool's slot. An entry is a stack of
//! *pointers* to the pool's free objects, in an array of its own: a free
//! pushes the pointer, an allocation pops the newest. A cached object holds
//! no link, so a hit writes to no object but the one it hands out or takes
//! back, and one load and one store of the stack's top move it.
//!
//! ```text
//!   start      bottom         low            top      limit        end
//!     |  (room)  | objects kept  | pushed again  | (grant) | (room) |
//! ```
//!
//! Bounds, so that each hit makes one comparison:
//! - An allocation pops while `top != low`. `low` is the *low water*: the
//!   lowest the stack went since the thread's last eviction. When a pop
//!   reaches it, the slow path lowers it by one (or refills an empty stack).
//!   So the objects below `low` sat untouched since the last eviction, and
//!   those above it were pushed since.
//! - A free pushes while `top != limit`. `limit` ends the entry's *grant*:
//!   the thread's byte budget is handed to its entries in steps of a
//!   cluster, and the sum of the grants never exceeds it, so the thread never
//!   caches more than the budget without a byte counter on the hit path.
//!   A free that reaches `limit` asks for another step; when the budget is
//!   spent, it takes back grants that hold no objects, then evicts (and
//!   takes back the other entries' unused room only if that was not
//!   enough, see `make_room`).
//!
//! Eviction order (when a grant is refused): objects leave in clusters of
//! one pool, taken from the bottom of its stack, so that within a pool the
//! oldest object always leaves first. Across pools, the entry whose bottom
//! is oldest gives first, by the age marks kept in front of each array
//! ([`Marks`]): each grant and each eviction is a tick of the thread, every
//! grant marks the slots it opens with its tick, and at each eviction the
//! slots above a low water are marked no older than the previous eviction
//! (they were pushed again since). So across pools the order is oldest
//! first to within one grant step and one eviction period, at no cost on
//! the hit path. After an eviction every low water is reset to its top.
//! Objects of two pages or more, of a pool of few objects (buffers), give
//! their pages back as they leave (`discard_pages`): they were the
//! thread's least recently used, and may wait long in the shared cache.
//! Eviction takes bottoms away without moving the rest; the stack slides up
//! its array (twice the largest count the budget allows) and is moved back
//! to the start only when its grant reaches the end, at most once per as
//! many pushes as the array has free slots. An entry's array starts small
//! (one cluster's slots and the marks: 1 KiB or 512 bytes, from the
//! metadata arena, four or eight to a page) and moves to one four times as
//! large when it is full, up to that size: a short process binds a few
//! dozen entries and fills few of them.
//!
//! Why this design: the earlier linked list wrote a link into the previous
//! newest object on every free (a second cache line, and what a use after
//! free forges), stamped a tick into every object and kept a byte counter,
//! and a claim handshake with `pool_destroy` (two stores and a load) wrapped
//! every operation. Here a hit is the stack move and the compare of the
//! entry's key with the pool's (see below); everything else is on slow paths
//! that run once per cluster of objects.
//!
//! **Keys.** Each live pool has a random 64-bit key; an entry bound to it
//! holds the same key. The hit path compares the `stamp` of the pool's
//! handle with the entry's key: `stamp` equals the key while the pool is
//! live and plain, and has bit 0 set while the pool is dead or has debugging
//! options, which no entry key has, so one comparison checks the handle,
//! the entry's binding and the debug switch. The key is also written into
//! every freed object at [`KEY_OFFSET`], and cleared on every hand-out: a
//! free that finds it already there is a double free (see `Pool::free`).
//!
//! **Finding the entry.** The handles (`head::Handle`) are an array in slot
//! order, 64 bytes apart, as the entries of every table are; the thread's
//! *bias* (`tls`) is its table's address minus the first handle's, so an
//! entry is the handle's address plus the bias: two loads (the TLS word
//! through the GOT) and no load from the handle but its stamp. A thread
//! with no cache has a bias that lands on the zero word in front of each
//! handle, a key that matches no stamp. Where the bias is not used
//! (`tls::BIASED`: Miri, loom, other targets) the entry comes from the
//! pool's slot.
//!
//! **Ownership.** Only the owner thread changes its cache; other threads read
//! the stack bounds for statistics (atomics; see `Entry::objects`).
//! `pool_destroy` does not reach into other threads' caches: a dead pool's
//! entry is emptied by its owner (its objects go back to the system) at the
//! owner's next eviction, its next call on that slot, its next slow call
//! after a destroy, or its exit. A bound entry pins its pool's head (see
//! `lifecycle`), and the registry recycles a dead head only when nothing
//! pins it and it has no objects out, so no entry or stale handle can ever
//! make a later pool hand out a dead pool's objects. Every call out of the
//! cache (a put into the shared cache, a release to the system, which may
//! be a `free` that comes back into these pools) is made after the cache's
//! own state is consistent.

use crate::head::{self, clear_key, Handle, Pool, KEY_OFFSET};
use crate::shared_cache::{Cluster, Item};
use crate::{meta, options, os, tls};
use core::cell::Cell;
use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::AtomicUsize;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

pub(crate) use crate::head::MAX_POOLS;

/// Most bytes of new objects one refill takes (`ThreadCache::refill_new`).
const BATCH_BYTES: usize = 4096;
/// Bytes of new objects a pool's first refill takes; each later one takes
/// as many as were taken before it (`ThreadCache::refill_new`), up to
/// [`BATCH_BYTES`].
const FIRST_BATCH_BYTES: usize = 1024;

// Entries are laid out as the handles are: an entry's address is its
// pool's handle plus the thread's bias (see `entry_of`).
const _: () = assert!(size_of::<Entry>() == head::HANDLE_STRIDE);

/// The cache of one thread. Lives in zeroed memory (a mapping, or the
/// static `FIRST_CACHE`): all-zero is the
/// "unused" state of every field, so the table costs nothing until touched.
#[repr(C)]
pub(crate) struct ThreadCache {
    /// Per-pool entries by slot, at offset 0: the bias (see `entry_of`) is
    /// the cache's address minus the first handle's.
    table: [Entry; MAX_POOLS],
    /// The bucket this thread starts at in shared caches.
    pub(crate) home: usize,
    /// Bytes granted to the entries: the sum of `(limit - bottom) * obj_size`.
    granted: Cell<usize>,
    /// Slow events so far (grants and evictions): the clock of the marks.
    tick: Cell<u64>,
    /// The tick of the last eviction.
    evicted_at: Cell<u64>,
    nlisted: Cell<usize>,
    /// The registry's destroy count when this thread last emptied its
    /// entries of dead pools.
    swept: Cell<usize>,
    /// The list of every thread cache ([`THREADS`], under its lock).
    next: Cell<*mut ThreadCache>,
    /// Slots of the bound entries, `nlisted` of them. Last, so that the
    /// fields above and its first slots share a page.
    listed: [Cell<u16>; MAX_POOLS],
}

/// What [`ThreadCache::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// An object of the pool, the caller's.
    Object(NonNull<u8>),
    /// Nothing: the thread cache serves the pool, and the shared cache,
    /// which it looked at, had nothing either (nor new objects, for a pool
    /// that refills in batches).
    SharedEmpty,
    /// The thread cache does not serve the pool now: its objects are too
    /// large for it, its entry is closed, or it has no entry (a dead pool,
    /// no memory for one).
    NotServed,
}

impl Taken {
    /// The object, if any.
    pub(crate) fn object(self) -> Option<NonNull<u8>> {
        match self {
            Taken::Object(p) => Some(p),
            _ => None,
        }
    }
}

/// The entry a thread without a cache reads where there is no bias: zero,
/// whose key is no pool's stamp. Never written.
struct NoEntry(Entry);
// SAFETY: never written: its key (0) is no pool's stamp (only a handle no
// pool has had has a zero stamp, and then the entry's top and bounds, all
// null, make both hit paths miss), so sharing it races with nothing.
unsafe impl Sync for NoEntry {}
// SAFETY: all-zero is a valid Entry (the unbound state).
static NO_ENTRY: NoEntry = NoEntry(unsafe { core::mem::zeroed() });

thread_local! {
    /// Where this thread is in its cache's life: `IDLE`, `CREATING` (a
    /// nested allocation made meanwhile, by `pthread_setspecific` when it
    /// grows its table, goes without a cache), or `EXITED`. No destructor,
    /// so touching it registers nothing. `EXITED` also stands for a thread
    /// that can have no cache (no pthread key left). The cache pointer
    /// itself is in [`tls`](crate::tls), cheaper to reach on the hot path.
    static CREATE_STATE: Cell<u8> = const { Cell::new(IDLE) };
}

const IDLE: u8 = 0;
const CREATING: u8 = 1;
const EXITED: u8 = 2;

/// The pthread key whose destructor, [`at_thread_end`], gives a thread's
/// cache back, plus one (0: not made yet). Every thread with a cache sets
/// it. Key destructors run when a thread ends and the process goes on: a
/// return from its start routine or `pthread_exit`, the main thread's
/// included (glibc runs no `__cxa_thread_atexit` destructors there, so a
/// Rust `thread_local` with a destructor would leave main's cache behind).
/// `exit()` runs none: the process ends with its caches as they are, which
/// costs nothing (they go back to the system with the address space), and
/// the atexit handlers and destructors that run after it keep the calling
/// thread's cache. The destructor is the library's code, so the library is
/// never unloaded (`-z nodelete`, build.rs).
// Release (the exchange) and Acquire (the loads): whoever uses the key
// sees what `pthread_key_create` wrote for it.
static EXIT_KEY: AtomicUsize = AtomicUsize::new(0);

/// The key of [`EXIT_KEY`], made on first use; `None` if the process has
/// no key left.
fn exit_key() -> Option<libc::pthread_key_t> {
    let k = EXIT_KEY.load(Acquire);
    if k != 0 {
        return Some((k - 1) as libc::pthread_key_t);
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: a valid out-pointer, and a destructor that never unwinds.
    if unsafe { libc::pthread_key_create(&mut key, Some(at_thread_end)) } != 0 {
        return None;
    }
    match EXIT_KEY.compare_exchange(0, key as usize + 1, AcqRel, Acquire) {
        Ok(_) => Some(key),
        Err(theirs) => {
            // Another thread made one first: ours was never set.
            // SAFETY: a key of ours that no thread has used.
            unsafe { libc::pthread_key_delete(key) };
            Some((theirs - 1) as libc::pthread_key_t)
        }
    }
}

/// Gives every cached object back when the thread ends ([`EXIT_KEY`]).
unsafe extern "C" fn at_thread_end(_: *mut libc::c_void) {
    // Later calls on this thread (from other destructors) find no cache,
    // and `create` refuses: they take the cache-less path.
    let _ = CREATE_STATE.try_with(|s| s.set(EXITED));
    // The word's own pointer (made from the mapping), not one made from
    // `&ThreadCache`: it is unmapped through it.
    let raw = tls::get().cast::<ThreadCache>();
    let tc = ThreadCache::existing();
    tls::set(ptr::null_mut(), tls::NO_CACHE);
    if let (Some(tc), Some(raw)) = (tc, NonNull::new(raw)) {
        // SAFETY: the owner, leaving: nothing else runs on this cache.
        unsafe { drain(tc) };
        // SAFETY: drained; its owner is leaving.
        unsafe { THREADS.remove_and_unmap(raw) };
    }
}

/// The entry of the pool of handle `h` in this thread's table (a zero
/// entry if the thread has no cache).
#[inline(always)]
fn entry_of(h: &Handle) -> &'static Entry {
    if tls::BIASED {
        let e = tls::bias().wrapping_add(ptr::from_ref(h).addr());
        // SAFETY: `h` is a handle of `head::HANDLES` (every handle is), in
        // slot `s`, `HANDLE_STRIDE * s` bytes after the first. With a
        // cache, the bias is the table's address minus the first handle's,
        // so `e` is `table[s]`; with none it is `tls::NO_CACHE`, and `e` the
        // word in front of the handle, zero and never written, which reads
        // as the key of an entry that matches no pool (the hit path reads
        // nothing else of it). Both addresses were exposed
        // (`create_registered`, `head::handle_of_slot`).
        unsafe { &*ptr::with_exposed_provenance::<Entry>(e) }
    } else {
        match (ThreadCache::existing(), h.slot()) {
            (Some(tc), Some(slot)) => &tc.table[slot],
            _ => &NO_ENTRY.0,
        }
    }
}

/// The hit path of an allocation: the newest cached object of the pool of
/// handle `h`, or
/// `None` for the slow path (no cache, empty down to the low water, a
/// dead pool, or debugging options).
#[inline(always)]
pub(crate) fn alloc_hit(h: &Handle) -> Option<NonNull<u8>> {
    // Relaxed: a handle's stamp reached the caller through whatever
    // published the handle; a destroy racing with this call is the
    // caller's bug, which the registry makes harmless (module docs).
    let stamp = h.stamp.load(Relaxed);
    let e = entry_of(h);
    if e.own_key() != stamp {
        return None;
    }
    let top = e.own_top();
    if top == e.low.get() {
        return None;
    }
    // SAFETY: `low < top` within the array: the slot below `top` holds a
    // cached object of this pool, which is ours from now on.
    unsafe {
        let obj = *top.sub(1);
        clear_key(obj);
        // `top` read again after the store into the object (which might
        // alias it as far as the compiler knows): the update compiles to
        // one subtraction in memory.
        e.top.store(e.top.load(Relaxed).sub(1), Relaxed);
        Some(NonNull::new_unchecked(obj))
    }
}

/// The hit path of a free into the pool of handle `h`: pushes `obj` and
/// returns true, or returns false
/// for the slow path (no room in the grant, a dead pool, debugging
/// options, or the object already carrying the key of a free object).
///
/// # Safety
/// `obj` is a non-null object that the caller gives back to the pool.
#[inline(always)]
pub(crate) unsafe fn free_hit(h: &Handle, obj: NonNull<u8>) -> bool {
    // Relaxed: as in `alloc_hit`.
    let stamp = h.stamp.load(Relaxed);
    let e = entry_of(h);
    if e.own_key() != stamp {
        return false;
    }
    let key = obj.as_ptr().wrapping_add(KEY_OFFSET).cast::<u64>();
    // SAFETY: an object of a live pool has at least MIN_OBJECT bytes, and
    // every hand-out initialised its key word.
    if unsafe { key.read() } == stamp {
        return false;
    }
    let top = e.own_top();
    if top == e.limit.get() {
        return false;
    }
    // SAFETY: `top < limit <= end`: a slot of the array; the object is ours.
    unsafe {
        *top = obj.as_ptr();
        // Read again after the store into the slot, as in `alloc_hit`.
        e.top.store(e.top.load(Relaxed).add(1), Relaxed);
        key.write(stamp);
    }
    true
}

impl ThreadCache {
    /// This thread's cache, created and registered on first use; `None` when
    /// it cannot be had (the thread is exiting, or no memory for the table).
    #[inline]
    pub(crate) fn current() -> Option<&'static ThreadCache> {
        Self::existing().or_else(Self::create)
    }

    /// This thread's cache if it has one already.
    #[inline]
    pub(crate) fn existing() -> Option<&'static ThreadCache> {
        let tc = tls::get().cast::<ThreadCache>();
        if tc.is_null() {
            return None;
        }
        // SAFETY: the word holds a registered cache, which stays mapped
        // until this thread's end ([`at_thread_end`]) resets the word.
        Some(unsafe { &*tc })
    }

    #[cold]
    fn create() -> Option<&'static ThreadCache> {
        // Re-entrancy guard: a nested call (from the destructor
        // registration's malloc) or a call after the thread's exit
        // destructor ran gets no cache; `Pool` then goes cache-less.
        let state = CREATE_STATE.try_with(Cell::get).unwrap_or(EXITED);
        if state != IDLE {
            return None;
        }
        let _ = CREATE_STATE.try_with(|s| s.set(CREATING));
        // Creating a cache maps memory and takes the lock of the list of caches, either
        // of which may set errno; the call that got here (a pool_free, say)
        // must not report an error it did not have.
        // SAFETY: __errno_location returns this thread's errno slot.
        let errno = unsafe { *libc::__errno_location() };
        let tc = Self::create_registered();
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
        let _ = CREATE_STATE.try_with(|s| {
            if s.get() == CREATING {
                s.set(IDLE)
            }
        });
        tc
    }

    fn create_registered() -> Option<&'static ThreadCache> {
        // A thread whose cache could not be given back at its end has none.
        let Some(key) = exit_key() else {
            let _ = CREATE_STATE.try_with(|s| s.set(EXITED));
            return None;
        };
        let tc = map_cache()?;
        // SAFETY: zeroed memory of the right size (`map_cache`) is a valid
        // ThreadCache (every field is valid all-zero) that only we see.
        let r = unsafe {
            (*tc.as_ptr()).home = next_home();
            (*tc.as_ptr()).swept.set(head::destroys());
            &*tc.as_ptr()
        };
        // Arms the destructor that gives the cache back at the thread's end
        // (it fails without memory, for a key past the first few).
        // SAFETY: a key of ours; any non-null value arms its destructor.
        if unsafe { libc::pthread_setspecific(key, tc.as_ptr().cast()) } != 0 {
            // SAFETY: never registered nor shared: nobody else can see it.
            unsafe { unmap(tc) };
            return None;
        }
        THREADS.add(tc);
        let bias = tc.as_ptr().addr().wrapping_sub(head::first_handle_addr());
        tls::set(tc.as_ptr().cast(), bias);
        Some(r)
    }

    /// Objects of `pool` cached by this thread, for statistics; may lag an
    /// operation in flight on the owner thread.
    pub(crate) fn count_of(&self, pool: &Pool) -> usize {
        let e = &self.table[pool.slot];
        // Relaxed: a statistic; the pool pointer is compared first, so the
        // counts read are those of an entry bound to this pool.
        let key = e.key.load(Relaxed);
        if ptr::eq(e.pool.load(Relaxed), pool)
            && [pool.key, closed(pool), recheck(pool)].contains(&key)
        {
            e.objects()
        } else {
            0
        }
    }

    /// The entry of `pool`, bound to it if it can be (not for objects larger
    /// than an eighth of the budget, nor without memory for the array);
    /// `for_put`: for a free, which an entry no longer takes once the
    /// budget shrank below eight of its objects.
    fn bound_entry(&self, pool: &Pool, for_put: bool) -> Option<&Entry> {
        let e = &self.table[pool.slot];
        // Relaxed: the owner's own entry.
        let key = e.key.load(Relaxed);
        if key == pool.key || key == closed(pool) || key == recheck(pool) {
            // Objects the budget no longer lets a thread cache (it shrank
            // below eight of them): the entry is closed, so that no hit
            // pushes, and frees go elsewhere; what it holds stays until
            // taken or evicted. An entry to recheck (the budget changed)
            // opens again at its next free, which fits the thread into the
            // budget first (`make_room`).
            let fits = pool.obj_size <= options::cache_size() / 8;
            let want = match (fits, for_put) {
                (false, _) => closed(pool),
                (true, true) => pool.key,
                (true, false) if key == closed(pool) => pool.key,
                (true, false) => key,
            };
            if want != key {
                e.key.store(want, Relaxed);
            }
            return (fits || !for_put).then_some(e);
        }
        if e.key.load(Relaxed) != 0 {
            // Bound to this head's previous life (a destroyed pool whose
            // objects this thread still held): give those back first.
            self.unbind(e);
        }
        self.sweep_if_destroyed();
        let budget = options::cache_size();
        if pool.obj_size > budget / 8 || pool.is_dead() {
            return None;
        }
        if self.nlisted.get() == MAX_POOLS {
            return None;
        }
        let block = first_block(pool);
        let array = meta::obtain_array(block)?;
        if !pool.bind() {
            // Destroyed meanwhile (a call racing with pool_destroy).
            // SAFETY: obtained above with this size, unused.
            unsafe { meta::release_array(array, block) };
            return None;
        }
        let cap = (block - size_of::<Marks>()) / size_of::<*mut u8>();
        // SAFETY: the block starts with the marks, then `cap` slots.
        let start = unsafe {
            array.as_ptr().cast::<Marks>().write(Marks::EMPTY);
            array.as_ptr().add(size_of::<Marks>()).cast::<*mut u8>()
        };
        e.start.set(start);
        // SAFETY: `cap` slots were obtained.
        e.end.set(unsafe { start.add(cap) });
        e.bottom.store(start, Release);
        e.top.store(start, Relaxed);
        e.low.set(start);
        e.limit.set(start);
        e.pool.store(ptr::from_ref(pool).cast_mut(), Relaxed);
        let n = self.nlisted.get();
        self.listed[n].set(pool.slot as u16);
        self.nlisted.set(n + 1);
        // Relaxed: the owner's own entry; a statistic reader compares the
        // pool pointer stored above, which it may see late: then it counts 0.
        e.key.store(pool.key, Relaxed);
        // A statistics reader that acquires a `top` stored after this sees
        // the bound `bottom` (see `Entry::objects`).
        core::sync::atomic::fence(Release);
        Some(e)
    }

    /// Gives back every object of `e` (to the shared cache if its pool is
    /// live, else to the system), releases its array and unbinds it.
    fn unbind(&self, e: &Entry) {
        let Some(pool) = e.bound_pool() else { return };
        let n = e.objects();
        let bottom = e.bottom.load(Relaxed);
        let (start, cap) = (e.start.get(), self.capacity(e));
        self.granted
            .set(self.granted.get() - self.grant_of(e) * pool.obj_size);
        e.key.store(0, Relaxed);
        e.pool.store(ptr::null_mut(), Relaxed);
        e.top.store(ptr::null_mut(), Relaxed);
        e.bottom.store(ptr::null_mut(), Release);
        for c in [&e.low, &e.limit, &e.start, &e.end] {
            c.set(ptr::null_mut());
        }
        let slot = pool.slot as u16;
        let n_listed = self.nlisted.get();
        if let Some(i) = (0..n_listed).find(|&i| self.listed[i].get() == slot) {
            self.listed[i].set(self.listed[n_listed - 1].get());
            self.nlisted.set(n_listed - 1);
        }
        // The entry is consistent (unbound) before any object leaves: a
        // release that calls back into the pools finds it so.
        // SAFETY: `[bottom, bottom + n)` are this pool's cached objects, ours.
        unsafe { give_back(pool, self.home, bottom, n) };
        // SAFETY: the block came from `meta::obtain_array` with this size, the
        // marks in front of the slots.
        unsafe {
            meta::release_array(
                NonNull::new_unchecked(start.cast::<u8>().sub(size_of::<Marks>())),
                size_of::<Marks>() + cap * size_of::<*mut u8>(),
            )
        };
        pool.unbind();
    }

    /// Empties this thread's entries of pools destroyed since it last looked.
    fn sweep_if_destroyed(&self) {
        let d = head::destroys();
        if self.swept.get() == d {
            return;
        }
        self.swept.set(d);
        let mut i = 0;
        while i < self.nlisted.get() {
            let e = &self.table[self.listed[i].get() as usize];
            match e.bound_pool() {
                Some(p) if p.is_dead() => self.unbind(e),
                _ => i += 1,
            }
        }
    }

    /// The age marks of a bound entry.
    #[allow(clippy::mut_from_ref)]
    fn marks(&self, e: &Entry) -> &mut Marks {
        // SAFETY: a bound entry's slots are preceded by its marks, which
        // only the owner touches, one call at a time.
        unsafe {
            &mut *e
                .start
                .get()
                .cast::<u8>()
                .sub(size_of::<Marks>())
                .cast::<Marks>()
        }
    }

    /// The index of slot `p` of `e`.
    fn index(e: &Entry, p: *mut *mut u8) -> usize {
        (p as usize - e.start.get() as usize) / size_of::<*mut u8>()
    }

    fn next_tick(&self) -> u64 {
        let t = self.tick.get() + 1;
        self.tick.set(t);
        t
    }

    fn capacity(&self, e: &Entry) -> usize {
        (e.end.get() as usize - e.start.get() as usize) / size_of::<*mut u8>()
    }

    /// Objects `e` may hold without asking: `limit - bottom`.
    fn grant_of(&self, e: &Entry) -> usize {
        (e.limit.get() as usize - e.bottom.load(Relaxed) as usize) / size_of::<*mut u8>()
    }

    /// The newest object of `pool` in this thread, through the slow path:
    /// lowers the low water or refills from the shared cache (or, for a
    /// pool that refills in batches, with new objects).
    pub(crate) fn take(&self, pool: &Pool) -> Taken {
        let Some(e) = self.bound_entry(pool, false) else {
            return Taken::NotServed;
        };
        if e.own_top() == e.bottom.load(Relaxed) {
            return self.refill(e, pool);
        }
        // SAFETY: the stack is not empty.
        Taken::Object(unsafe { Self::pop_below_low(e) })
    }

    /// Pops the newest object of `e`, lowering the low water if the pop
    /// goes below it.
    ///
    /// # Safety
    /// `e` is an entry of this thread's cache holding an object.
    unsafe fn pop_below_low(e: &Entry) -> NonNull<u8> {
        // SAFETY: `bottom < top` (caller): the slot below `top` holds an
        // object, which is ours from now on.
        unsafe {
            let top = e.own_top().sub(1);
            if top < e.low.get() {
                e.low.set(top);
            }
            e.top.store(top, Relaxed);
            NonNull::new_unchecked(*top)
        }
    }

    /// The newest object of `pool` below the low water of its bound entry,
    /// lowering the low water; `None` if the entry is unbound or empty. No
    /// binding, no refill: what `Pool::alloc_slow` tries before pinning.
    pub(crate) fn take_cached(&self, pool: &Pool) -> Option<NonNull<u8>> {
        let e = &self.table[pool.slot];
        if e.own_key() != pool.key || e.own_top() == e.bottom.load(Relaxed) {
            return None;
        }
        // SAFETY: the stack is not empty; the object popped is ours.
        unsafe {
            let obj = Self::pop_below_low(e);
            clear_key(obj.as_ptr());
            Some(obj)
        }
    }

    /// The oldest object of `pool` in this thread (the `cold-first` option).
    pub(crate) fn take_oldest(&self, pool: &Pool) -> Option<NonNull<u8>> {
        let e = self.bound_entry(pool, false)?;
        let bottom = e.bottom.load(Relaxed);
        if e.top.load(Relaxed) == bottom {
            return self.refill(e, pool).object();
        }
        // SAFETY: `bottom < top`: `bottom` holds the oldest object.
        unsafe {
            let obj = *bottom;
            let bottom = bottom.add(1);
            self.marks(e).cut_below(Self::index(e, bottom));
            e.bottom.store(bottom, Release);
            if e.low.get() < bottom {
                e.low.set(bottom);
            }
            self.granted.set(self.granted.get() - pool.obj_size);
            Some(NonNull::new_unchecked(obj))
        }
    }

    /// An empty entry takes a cluster from the shared cache: one object for
    /// the caller, as many of the rest as the budget grants, and the others
    /// back (all of them for a closed entry, which `alloc_slow` then
    /// serves from the shared cache).
    fn refill(&self, e: &Entry, pool: &Pool) -> Taken {
        if e.key.load(Relaxed) != pool.key {
            return Taken::NotServed;
        }
        let Some(cluster) = pool.take_from_shared(self.home) else {
            return self
                .refill_new(e, pool)
                .map_or(Taken::SharedEmpty, Taken::Object);
        };
        let first = cluster.first;
        // SAFETY: the cluster is ours: its objects are linked through `down`.
        let mut rest = unsafe { Item::down(first.as_ptr()) };
        let mut left = cluster.len - 1;
        while left > 0 && self.make_room(e, pool, false) {
            let room = (e.limit.get() as usize - e.own_top() as usize) / size_of::<*mut u8>();
            for _ in 0..left.min(room) {
                // SAFETY: `top < limit` (`room` slots were free); `rest`
                // heads the rest of our cluster, `left > 0` objects.
                unsafe {
                    let next = Item::down(rest);
                    let top = e.own_top();
                    *top = rest.cast();
                    e.top.store(top.add(1), Relaxed);
                    rest = next;
                }
                left -= 1;
            }
        }
        if let Some(r) = NonNull::new(rest) {
            pool.release_cluster(
                self.home,
                Cluster {
                    first: r,
                    len: left,
                },
            );
        }
        Taken::Object(first.cast())
    }

    /// An empty entry, and nothing in the shared cache: for a pool that
    /// refills in batches (`Pool::refills_in_batches`), new objects, as many
    /// as one grant step holds, at most a page of them and at first fewer
    /// (`batch_len`), from one call to the backing allocator. So a growing
    /// heap takes the slow path once per batch rather than once per object,
    /// and a thread's new objects are neighbours of each other, not of
    /// another thread's. Hands out the
    /// first; the rest are cached, to be handed out in address order, each
    /// marked with the pool's key as every cached object is: a `free` of one
    /// of them (a forged pointer near a block the program holds) aborts as
    /// a double free instead of caching it twice. The marks touch the
    /// batch's objects, which the next hand-outs would touch anyway.
    fn refill_new(&self, e: &Entry, pool: &Pool) -> Option<NonNull<u8>> {
        let most = cluster_len(pool)
            .min(BATCH_BYTES / pool.obj_size)
            .min(batch_len(pool, self.home));
        if most < 2 || !pool.refills_in_batches() || !self.make_room(e, pool, false) {
            return None;
        }
        let room = (e.limit.get() as usize - e.own_top() as usize) / size_of::<*mut u8>();
        let want = (room + 1).min(most);
        let mut batch = [ptr::null_mut(); MAX_CLUSTER];
        let n = pool.obtain_new(self.home, &mut batch[..want]);
        let (&first, rest) = batch[..n].split_first()?;
        for &obj in rest.iter().rev() {
            // SAFETY: `rest` holds at most `room` new objects of this pool,
            // ours (not null, at least MIN_OBJECT bytes), and `room` slots
            // from `top` are inside the grant.
            unsafe {
                head::set_key(pool, NonNull::new_unchecked(obj));
                let top = e.own_top();
                *top = obj;
                e.top.store(top.add(1), Relaxed);
            }
        }
        NonNull::new(first)
    }

    /// The slow path of a free: grants room (evicting if the budget is
    /// spent) and pushes; `false` when the object must go elsewhere (too
    /// large to cache per thread, a dead pool, no memory for an array).
    ///
    /// # Safety
    /// The caller gives `obj` (of `pool`, carrying its key) to the cache.
    pub(crate) unsafe fn put(&self, pool: &Pool, obj: NonNull<u8>) -> bool {
        let Some(e) = self.bound_entry(pool, true) else {
            return false;
        };
        if !self.make_room(e, pool, true) {
            return false;
        }
        let top = e.top.load(Relaxed);
        // SAFETY: `top < limit` after make_room.
        unsafe {
            *top = obj.as_ptr();
            e.top.store(top.add(1), Relaxed);
        }
        true
    }
}

/// New objects of `pool` one refill takes (before the grant and
/// `BATCH_BYTES` cap it): [`FIRST_BATCH_BYTES`] of them at first, then as
/// many as its threads of bucket `home` took so far, so that batches double
/// while the pool grows. A class that a process uses for a few objects
/// marks and touches a few, not a page of them.
fn batch_len(pool: &Pool, home: usize) -> usize {
    let taken = pool.shared.allocated_on(home).max(0) as usize;
    (FIRST_BATCH_BYTES / pool.obj_size).max(taken)
}

/// Gives every cached object of `tc` back and unbinds every entry.
///
/// # Safety
/// The caller is `tc`'s owner (or, in a fork child, the only thread left).
unsafe fn drain(tc: &ThreadCache) {
    while tc.nlisted.get() > 0 {
        let e = &tc.table[tc.listed[0].get() as usize];
        tc.unbind(e);
    }
}

/// This thread's cache and its entry of `pool`, if the entry serves it.
fn own_entry(pool: &Pool) -> Option<(&'static ThreadCache, &'static Entry)> {
    let tc = ThreadCache::existing()?;
    let e = &tc.table[pool.slot];
    ptr::eq(e.pool.load(Relaxed), pool).then_some((tc, e))
}

/// This thread's entry of `pool`, emptied and unbound (`pool_destroy`).
pub(crate) fn release_own(pool: &Pool) {
    if let Some((tc, e)) = own_entry(pool) {
        tc.unbind(e);
    }
}

/// After `pool_set_cache_size`: this thread's entries are to be checked
/// again and its unused grants come back, so that its next free of each
/// pool fits the thread into the new budget (evicting if it must) or finds
/// the pool now too large to cache. Other threads follow at their next
/// grant.
pub(crate) fn fit_budget() {
    if let Some(tc) = ThreadCache::existing() {
        for i in 0..tc.nlisted.get() {
            let e = &tc.table[tc.listed[i].get() as usize];
            if let Some(pool) = e.bound_pool() {
                if e.key.load(Relaxed) == pool.key {
                    e.key.store(recheck(pool), Relaxed);
                }
            }
        }
        tc.take_back_unused_grants();
    }
}

/// Moves this thread's cached objects of `pool` to its shared cache.
pub(crate) fn evict_own(pool: &Pool) {
    if let Some((tc, e)) = own_entry(pool) {
        tc.evict_from(e, usize::MAX);
    }
}

/// Moves every object this thread caches to the shared caches.
pub(crate) fn evict_all() {
    if let Some(tc) = ThreadCache::existing() {
        tc.evict_to(0);
    }
}

/// The cache of the first thread that makes one, in the bss: a process
/// whose threads make their caches one after the other maps none (only the
/// pages it touches are backed, as in a mapping).
#[repr(C, align(4096))]
struct FirstCache(core::cell::UnsafeCell<core::mem::MaybeUninit<ThreadCache>>);

// SAFETY: handed to one thread at a time through FIRST_CACHE_STATE.
unsafe impl Sync for FirstCache {}

// Out of the preload's ordered bss (malloc/build.rs), whose small statics
// would otherwise be spread over its pages.
#[link_section = ".bss.pools_first"]
static FIRST_CACHE: FirstCache =
    FirstCache(core::cell::UnsafeCell::new(core::mem::MaybeUninit::zeroed()));

/// Whether [`FIRST_CACHE`] is free and zero ([`CLEAN`]), a thread's (or
/// out of use: see [`map_cache`]), or free with the contents of a cache
/// that was given back ([`DIRTY`]), zeroed by its next owner: so that a
/// process's last thread leaves without a system call for it.
static FIRST_CACHE_STATE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(CLEAN);
const CLEAN: u8 = 0;
const TAKEN: u8 = 1;
const DIRTY: u8 = 2;

/// Zeroed memory for a thread cache: [`FIRST_CACHE`] when it is free, else
/// a fresh mapping.
fn map_cache() -> Option<NonNull<ThreadCache>> {
    let first = NonNull::new(FIRST_CACHE.0.get().cast::<ThreadCache>())?;
    // Acquire: pairs with the Release in `unmap`: the last owner's writes
    // happen before the pages are dropped.
    match FIRST_CACHE_STATE.swap(TAKEN, core::sync::atomic::Ordering::Acquire) {
        CLEAN => return Some(first),
        // SAFETY: the static cache is page-aligned, in the anonymous part
        // of the bss, and its last owner is done with it; ours now. When
        // the kernel refuses, it stays TAKEN: out of use.
        DIRTY if unsafe { os::discard(first.cast(), size_of::<ThreadCache>()) } => {
            return Some(first)
        }
        _ => {}
    }
    Some(os::map_zeroed(size_of::<ThreadCache>())?.cast())
}

/// Unmaps a thread cache that is drained and unregistered (the static one
/// is freed for the next thread, which zeroes it).
///
/// # Safety
/// Nobody uses `tc` any more.
unsafe fn unmap(tc: NonNull<ThreadCache>) {
    if tc.as_ptr() == FIRST_CACHE.0.get().cast() {
        // Release: see `map_cache`.
        FIRST_CACHE_STATE.store(DIRTY, Release);
        return;
    }
    // SAFETY: any other cache is a mapping made by `map_cache` with this
    // size.
    unsafe { os::unmap(tc.cast(), size_of::<ThreadCache>()) };
}

mod entry;
mod evict;
mod list;

pub(crate) use entry::Entry;
use entry::{array_block, closed, first_block, recheck, Marks, MOVING};
use evict::{cluster_len, give_back, MAX_CLUSTER};
use list::next_home;
pub(crate) use list::THREADS;

#[cfg(all(test, not(loom)))]
mod tests;
