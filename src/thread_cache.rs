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
//!   spent, it takes back grants that hold no objects, then evicts.
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
//! Eviction takes bottoms away without moving the rest; the stack slides up
//! its array (twice the largest count the budget allows) and is moved back
//! to the start only when its grant reaches the end, at most once per as
//! many pushes as the array has free slots.
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
//! holds the same key. The hit path compares the pool's `stamp` with the
//! entry's key: `stamp` equals the key while the pool is live and plain, and
//! has bit 0 set while the pool is dead or has debugging options, which no
//! entry key has, so one comparison checks the handle, the entry's binding
//! and the debug switch. The key is also written into every freed object
//! at [`KEY_OFFSET`], and cleared on every hand-out: a free that finds it
//! already there is a double free (see `Pool::free`).
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

use crate::pool::Pool;
use crate::shared_cache::{Cluster, Item, CLUSTER};
use crate::{meta, options, os, registry, tls};
use core::cell::Cell;
use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicPtr, AtomicU64};

/// Most pools alive at once (after merging); `pool_create` fails beyond.
#[cfg(not(miri))]
pub(crate) const MAX_POOLS: usize = 4096;
/// Under Miri a smaller table: every `&ThreadCache` is retagged over the
/// whole table (Stacked Borrows tracks each byte); the tests use few slots.
#[cfg(miri)]
pub(crate) const MAX_POOLS: usize = 256;

/// Where a free object holds its pool's key: after the two links the shared
/// cache keeps at its start (`Item`), so that every free state keeps it.
pub(crate) const KEY_OFFSET: usize = 2 * size_of::<usize>();

/// Smallest object: the shared cache's two links and the key.
pub(crate) const MIN_OBJECT: usize = (KEY_OFFSET + 8).next_multiple_of(os::OBJECT_ALIGN);

/// log2 of `size_of::<Entry>()`.
const ENTRY_SHIFT: u32 = 6;
/// Masks a pool's `entry_off` into the table, whatever the handle holds.
pub(crate) const ENTRY_MASK: u32 = ((MAX_POOLS - 1) << ENTRY_SHIFT) as u32;

/// A pool's byte offset of its entry in every thread's table.
pub(crate) const fn entry_offset(slot: usize) -> u32 {
    (slot << ENTRY_SHIFT) as u32
}

/// One pool's free objects in one thread: a stack of pointers (module docs).
/// All-zero is "unbound". Fields the hit path reads come first.
#[repr(C, align(64))]
pub(crate) struct Entry {
    /// The key of the pool this entry serves, or 0 while unbound. Written by
    /// the owner; read by statistics (Relaxed: a plain load on x86-64).
    key: AtomicU64,
    /// The next free slot: objects are `[bottom, top)`. Written by the
    /// owner; read by statistics.
    top: AtomicPtr<*mut u8>,
    /// The low water, `bottom <= low <= top`: the bound of allocations.
    low: Cell<*mut *mut u8>,
    /// The end of the grant, `top <= limit <= end`: the bound of frees.
    limit: Cell<*mut *mut u8>,
    /// The oldest object. Written by the owner; read by statistics.
    bottom: AtomicPtr<*mut u8>,
    /// The array.
    start: Cell<*mut *mut u8>,
    end: Cell<*mut *mut u8>,
    /// The pool served while bound. Written by the owner; read by
    /// statistics (which compare it before trusting the counts).
    pool: AtomicPtr<Pool>,
}

const _: () = assert!(size_of::<Entry>() == 1 << ENTRY_SHIFT);

/// The key of an entry of `pool` that is closed to frees (see
/// `ThreadCache::bound_entry`): no pool's stamp, so no hit matches it.
fn closed(pool: &Pool) -> u64 {
    pool.key ^ 2
}

/// The key of an entry whose next free must check the budget again
/// (after `pool_set_cache_size`): no hit matches it either.
fn recheck(pool: &Pool) -> u64 {
    pool.key ^ 4
}

impl Entry {
    /// `key`, read by its owner thread, the only writer: a plain load,
    /// which the compiler may fold into the comparison.
    #[inline(always)]
    fn own_key(&self) -> u64 {
        // SAFETY: only this thread writes `key`; other threads only read it,
        // so this non-atomic read races with no write.
        unsafe { *self.key.as_ptr() }
    }

    /// `top`, read by its owner thread (see `own_key`).
    #[inline(always)]
    fn own_top(&self) -> *mut *mut u8 {
        // SAFETY: as in `own_key`.
        unsafe { *self.top.as_ptr() }
    }

    /// Objects cached, read by the owner or, as a statistic that may lag,
    /// by another thread: only the two atomic bounds are read, `bottom`
    /// first. Whoever moves `bottom` (`compact`, evictions, `unbind`) has
    /// set `top` first, and publishes it with the Release store of `bottom`:
    /// a reader that acquires the new `bottom` sees a `top` at least as new,
    /// so it may count fewer objects while a move is under way, never more.
    fn objects(&self) -> usize {
        let bottom = self.bottom.load(Acquire);
        // Relaxed: see above; the owner reads its own value.
        let top = self.top.load(Relaxed);
        (top as usize).saturating_sub(bottom as usize) / size_of::<*mut u8>()
    }

    /// The pool this entry serves, while bound.
    fn bound_pool(&self) -> Option<&'static Pool> {
        // SAFETY: a bound entry names a pool head, and heads are never
        // unmapped (nor recycled while an entry is bound to them).
        unsafe { self.pool.load(Relaxed).as_ref() }
    }
}

/// Bytes of an entry's block: its marks, then room for twice the most
/// objects the budget lets it hold (so that the stack can slide).
fn array_block(pool: &Pool) -> usize {
    let slots = 2 * options::cache_size() / pool.obj_size;
    (size_of::<Marks>() + slots * size_of::<*mut u8>()).next_power_of_two()
}

/// Most age marks per entry.
const MARKS: usize = 15;

/// The ages of an entry's objects, kept in front of its slots: mark `k`
/// says that the objects from slot `slot` (up to the next mark) were pushed
/// no earlier than the thread's slow event `tick`. Ticks count the slow
/// events (grants and evictions), so ages are known to within a grant step
/// of the thread (module docs). Only the owner reads or writes them.
#[repr(C)]
struct Marks {
    n: usize,
    mark: [(usize, u64); MARKS],
}

impl Marks {
    const EMPTY: Marks = Marks {
        n: 0,
        mark: [(0, 0); MARKS],
    };

    /// Objects pushed from slot `slot` on are no older than `tick`.
    fn push(&mut self, slot: usize, tick: u64) {
        if self.n > 0 && self.mark[self.n - 1].0 >= slot {
            // Marks at or past `slot` cover no object: replace them.
            while self.n > 0 && self.mark[self.n - 1].0 >= slot {
                self.n -= 1;
            }
        }
        if self.n == MARKS {
            // Merge the two neighbouring ranges whose ticks are closest,
            // under the older tick: the least age is lost, and objects
            // only ever look older than they are (they leave sooner).
            // (Of equal gaps, the newest: the bottom ages matter most.)
            let k = (1..MARKS)
                .rev()
                .min_by_key(|&k| self.mark[k].1 - self.mark[k - 1].1)
                .expect("MARKS > 1");
            self.mark.copy_within(k + 1..MARKS, k);
            self.n -= 1;
        }
        self.mark[self.n] = (slot, tick);
        self.n += 1;
    }

    /// The slots below `bottom` left: the first range starts there.
    fn cut_below(&mut self, bottom: usize) {
        let dead = (1..self.n)
            .take_while(|&k| self.mark[k].0 <= bottom)
            .count();
        self.mark.copy_within(dead..self.n, 0);
        self.n -= dead;
        if self.n > 0 {
            self.mark[0].0 = self.mark[0].0.max(bottom);
        }
    }

    /// Every object from slot `from` on is no older than `tick`.
    fn no_older_than(&mut self, from: usize, tick: u64) {
        let covering = (0..self.n).rev().find(|&k| self.mark[k].0 <= from);
        let Some(k) = covering else { return };
        if self.mark[k].1 >= tick {
            return;
        }
        let upper = self.mark[k + 1..self.n]
            .iter()
            .map(|m| (m.0, m.1.max(tick)));
        let mut rest = [(0, 0); MARKS];
        let mut m = 0;
        for x in upper {
            rest[m] = x;
            m += 1;
        }
        self.n = k + 1;
        self.push(from, tick);
        for &(slot, t) in &rest[..m] {
            self.push(slot, t);
        }
    }

    /// Slot indexes move down by `d` (the stack moved to the array start).
    fn shift(&mut self, d: usize) {
        for m in &mut self.mark[..self.n] {
            m.0 -= d;
        }
    }

    /// The tick of the oldest object.
    fn oldest(&self) -> u64 {
        if self.n == 0 {
            0
        } else {
            self.mark[0].1
        }
    }
}

/// The cache of one thread. Lives in a zeroed mapping: all-zero is the
/// "unused" state of every field, so the table costs nothing until touched.
#[repr(C)]
pub(crate) struct ThreadCache {
    /// Per-pool entries, at offset 0 so that an entry is `tc + entry_off`.
    table: [Entry; MAX_POOLS],
    /// The bucket this thread starts at in shared caches.
    pub(crate) home: usize,
    /// Bytes granted to the entries: the sum of `(limit - bottom) * obj_size`.
    granted: Cell<usize>,
    /// Slow events so far (grants and evictions): the clock of the marks.
    tick: Cell<u64>,
    /// The tick of the last eviction.
    evicted_at: Cell<u64>,
    /// Slots of the bound entries, `nlisted` of them.
    listed: [Cell<u16>; MAX_POOLS],
    nlisted: Cell<usize>,
    /// The registry's destroy count when this thread last emptied its
    /// entries of dead pools.
    swept: Cell<usize>,
    /// The registry's list of thread caches (under the registry lock).
    pub(crate) reg_next: Cell<*mut ThreadCache>,
}

/// What the thread-local word points to while the thread has no cache: an
/// all-zero cache whose entries match no pool, so that the hit path needs
/// no null test. Never written.
#[repr(C, align(64))]
pub(crate) struct Empty(core::cell::UnsafeCell<[u8; size_of::<ThreadCache>()]>);
// SAFETY: nobody ever writes it; it is read as an all-zero ThreadCache.
unsafe impl Sync for Empty {}
pub(crate) static EMPTY: Empty = Empty(core::cell::UnsafeCell::new([0; size_of::<ThreadCache>()]));

impl Empty {
    /// The address the thread-local word holds while a thread has no cache.
    pub(crate) fn ptr(&self) -> *mut u8 {
        self.0.get().cast()
    }
}

thread_local! {
    /// Where this thread is in its cache's life: `IDLE`, `CREATING` (a
    /// nested allocation made meanwhile, by the TLS destructor registration
    /// that may call malloc, goes without a cache), or `EXITED`. No
    /// destructor, so touching it registers nothing.
    static CREATE_STATE: Cell<u8> = const { Cell::new(IDLE) };
    /// Gives every cached object back when the thread exits. Touched only
    /// while creating the cache, under `CREATE_STATE == CREATING`: its first
    /// touch registers a TLS destructor, which may call malloc, which inside
    /// the LD_PRELOAD malloc comes back here. The cache pointer itself is in
    /// [`tls`](crate::tls), cheaper to reach on the hot path.
    static EXIT: ExitGuard = const { ExitGuard };
}

const IDLE: u8 = 0;
const CREATING: u8 = 1;
const EXITED: u8 = 2;

struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Later calls on this thread (from other TLS destructors) find no
        // cache, and `create` refuses: they take the cache-less path.
        let _ = CREATE_STATE.try_with(|s| s.set(EXITED));
        // The word's own pointer (made from the mapping), not one made
        // from `&ThreadCache`: it is unmapped through it.
        let raw = tls::get().cast::<ThreadCache>();
        let tc = ThreadCache::existing();
        tls::set(EMPTY.ptr());
        if let (Some(tc), Some(raw)) = (tc, NonNull::new(raw)) {
            // SAFETY: the owner, leaving: nothing else runs on this cache.
            unsafe { drain(tc) };
            registry::thread_exit(raw);
        }
    }
}

/// The entry at byte offset `off` of this thread's table (of [`EMPTY`] if
/// the thread has no cache).
#[inline(always)]
fn entry_at(off: u32) -> &'static Entry {
    // SAFETY: the word points to this thread's cache or to EMPTY, both of
    // which hold a whole table, and the mask keeps the offset inside it.
    unsafe { &*tls::get().add((off & ENTRY_MASK) as usize).cast::<Entry>() }
}

/// The hit path of an allocation: the newest cached object of `pool`, or
/// `None` for the slow path (no cache, empty down to the low water, a
/// dead pool, or debugging options).
#[inline(always)]
pub(crate) fn alloc_hit(pool: &Pool) -> Option<NonNull<u8>> {
    // Relaxed: a handle's stamp reached the caller through whatever
    // published the handle; a destroy racing with this call is the
    // caller's bug, which the registry makes harmless (module docs).
    let stamp = pool.stamp.load(Relaxed);
    let e = entry_at(pool.entry_off);
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
        let top = top.sub(1);
        let obj = *top;
        e.top.store(top, Relaxed);
        clear_key(obj);
        Some(NonNull::new_unchecked(obj))
    }
}

/// The hit path of a free: pushes `obj` and returns true, or returns false
/// for the slow path (no room in the grant, a dead pool, debugging
/// options, or the object already carrying the key of a free object).
///
/// # Safety
/// `obj` is a non-null object that the caller gives back to `pool`.
#[inline(always)]
pub(crate) unsafe fn free_hit(pool: &Pool, obj: NonNull<u8>) -> bool {
    // Relaxed: as in `alloc_hit`.
    let stamp = pool.stamp.load(Relaxed);
    let e = entry_at(pool.entry_off);
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
        e.top.store(top.add(1), Relaxed);
        key.write(stamp);
    }
    true
}

/// Clears the key word of an object being handed out (see the module docs).
///
/// # Safety
/// `obj` is an object of at least MIN_OBJECT bytes that the caller owns.
#[inline(always)]
pub(crate) unsafe fn clear_key(obj: *mut u8) {
    // SAFETY: per the contract.
    unsafe { obj.add(KEY_OFFSET).cast::<u64>().write(0) };
}

/// Whether `obj` carries `pool`'s key, as every object in a free state does.
///
/// # Safety
/// `obj` is an object of `pool` whose key word was initialised.
pub(crate) unsafe fn has_key(pool: &Pool, obj: NonNull<u8>) -> bool {
    // SAFETY: per the contract.
    unsafe { obj.as_ptr().add(KEY_OFFSET).cast::<u64>().read() == pool.key }
}

/// Writes `pool`'s key into an object entering a free state.
///
/// # Safety
/// `obj` is an object of `pool` that the caller owns.
pub(crate) unsafe fn set_key(pool: &Pool, obj: NonNull<u8>) {
    // SAFETY: per the contract.
    unsafe { obj.as_ptr().add(KEY_OFFSET).cast::<u64>().write(pool.key) };
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
        if ptr::eq(tc.cast(), EMPTY.ptr()) || tc.is_null() {
            return None;
        }
        // SAFETY: the word holds a registered cache, which stays mapped
        // until this thread's `ExitGuard` destructor resets the word.
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
        // Creating a cache maps memory and takes the registry lock, either
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
        let tc = os::map_zeroed(size_of::<ThreadCache>())?.cast::<ThreadCache>();
        // SAFETY: a fresh zeroed mapping of the right size is a valid
        // ThreadCache (every field is valid all-zero) that only we see.
        let r = unsafe {
            (*tc.as_ptr()).home = registry::next_home();
            (*tc.as_ptr()).swept.set(registry::destroys());
            &*tc.as_ptr()
        };
        // Registers the exit destructor; fails once the thread is exiting.
        if EXIT.try_with(|_| ()).is_err() {
            let _ = CREATE_STATE.try_with(|s| s.set(EXITED));
            // SAFETY: never registered nor shared: nobody else can see it.
            unsafe { os::unmap(tc.cast(), size_of::<ThreadCache>()) };
            return None;
        }
        registry::thread_start(tc);
        tls::set(tc.as_ptr().cast());
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
        let block = array_block(pool);
        let array = meta::obtain(block)?;
        if !pool.bind() {
            // Destroyed meanwhile (a call racing with pool_destroy).
            // SAFETY: obtained above with this size, unused.
            unsafe { meta::release(array, block) };
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
        // SAFETY: the block came from `meta::obtain` with this size, the
        // marks in front of the slots.
        unsafe {
            meta::release(
                NonNull::new_unchecked(start.cast::<u8>().sub(size_of::<Marks>())),
                size_of::<Marks>() + cap * size_of::<*mut u8>(),
            )
        };
        pool.unbind();
    }

    /// Empties this thread's entries of pools destroyed since it last looked.
    fn sweep_if_destroyed(&self) {
        let d = registry::destroys();
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
    /// lowers the low water or refills from the shared cache.
    pub(crate) fn take(&self, pool: &Pool) -> Option<NonNull<u8>> {
        let e = self.bound_entry(pool, false)?;
        if e.own_top() == e.bottom.load(Relaxed) {
            return self.refill(e, pool);
        }
        // SAFETY: the stack is not empty.
        Some(unsafe { Self::pop_below_low(e) })
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
            return self.refill(e, pool);
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
    fn refill(&self, e: &Entry, pool: &Pool) -> Option<NonNull<u8>> {
        if e.key.load(Relaxed) != pool.key {
            return None;
        }
        let cluster = pool.take_from_shared(self.home)?;
        let first = cluster.first;
        // SAFETY: the cluster is ours: its objects are linked through `down`.
        let mut rest = unsafe { Item::down(first.as_ptr()) };
        let mut left = cluster.len - 1;
        while left > 0 && self.make_room(e, pool, false) {
            // SAFETY: `top < limit` after make_room; `rest` heads the rest
            // of our cluster, `left > 0` objects.
            unsafe {
                let next = Item::down(rest);
                let top = e.top.load(Relaxed);
                *top = rest.cast();
                e.top.store(top.add(1), Relaxed);
                rest = next;
            }
            left -= 1;
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
        Some(first.cast())
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

    /// Makes `top < limit` for `e`, growing its grant by up to a cluster;
    /// a free (`evict`) may evict to get it, a refill may not. Returns
    /// whether there is room.
    fn make_room(&self, e: &Entry, pool: &Pool, evict: bool) -> bool {
        let budget = options::cache_size();
        // (Grants above the budget: it shrank since they were made.)
        if e.top.load(Relaxed) < e.limit.get() && self.granted.get() <= budget {
            return true;
        }
        let size = pool.obj_size;
        // A grant is a step of a cluster: when the budget has no room for
        // one, unused grants come back, and then the oldest objects leave,
        // down to 7/8 of the budget counting the step (so that the next
        // eviction is at least an eighth of the budget away).
        let step = cluster_len(pool) * size;
        if self.granted.get() + step > budget {
            self.take_back_unused_grants();
        }
        if self.granted.get() + step > budget && evict {
            self.evict_to((budget - budget / 8).saturating_sub(step));
            self.take_back_unused_grants();
        }
        if e.bottom.load(Relaxed) == e.top.load(Relaxed) && e.limit.get() == e.end.get() {
            // Evicted empty (or emptied by allocations) at the end of its
            // array: start again at the beginning.
            self.compact(e);
        }
        if e.limit.get() == e.end.get() {
            self.compact(e);
            if e.limit.get() == e.end.get() {
                // The array is full (the budget grew since it was sized):
                // its oldest cluster leaves.
                if !evict {
                    return false;
                }
                self.evict_from(e, cluster_len(pool));
                self.compact(e);
            }
        }
        let room = (budget.saturating_sub(self.granted.get()) / size)
            .min(cluster_len(pool))
            .min(self.capacity_left(e));
        if room == 0 {
            return false;
        }
        let tick = self.next_tick();
        self.marks(e).push(Self::index(e, e.limit.get()), tick);
        // SAFETY: `room` slots past `limit` are inside the array.
        e.limit.set(unsafe { e.limit.get().add(room) });
        self.granted.set(self.granted.get() + room * size);
        true
    }

    fn capacity_left(&self, e: &Entry) -> usize {
        (e.end.get() as usize - e.limit.get() as usize) / size_of::<*mut u8>()
    }

    /// Moves `e`'s stack to the start of its array (bounds move with it).
    fn compact(&self, e: &Entry) {
        let (start, bottom) = (e.start.get(), e.bottom.load(Relaxed));
        if bottom == start {
            return;
        }
        let n = e.objects();
        // SAFETY: `[bottom, limit)` lies inside the array; the copy may
        // overlap; every bound moves down by the same distance.
        unsafe {
            let d = bottom.offset_from(start) as usize;
            self.marks(e).shift(d);
            ptr::copy(bottom, start, n);
            e.top.store(start.add(n), Relaxed);
            e.bottom.store(start, Release);
            e.low.set(e.low.get().sub(d));
            e.limit.set(e.limit.get().sub(d));
        }
    }

    /// Every entry's grant shrinks to the objects it holds.
    fn take_back_unused_grants(&self) {
        for i in 0..self.nlisted.get() {
            let e = &self.table[self.listed[i].get() as usize];
            let Some(pool) = e.bound_pool() else { continue };
            let top = e.top.load(Relaxed);
            let unused = (e.limit.get() as usize - top as usize) / size_of::<*mut u8>();
            e.limit.set(top);
            self.granted
                .set(self.granted.get() - unused * pool.obj_size);
        }
    }

    /// Evicts oldest-first (module docs) until the thread caches at most
    /// `target` bytes, then starts a new low-water period.
    #[cold]
    pub(crate) fn evict_to(&self, target: usize) {
        self.sweep_if_destroyed();
        self.age_by_low_water();
        loop {
            let mut cached = 0;
            let mut oldest: Option<(&Entry, u64)> = None;
            for i in 0..self.nlisted.get() {
                let e = &self.table[self.listed[i].get() as usize];
                let Some(pool) = e.bound_pool() else { continue };
                let n = e.objects();
                if n == 0 || pool.is_dead() {
                    continue;
                }
                cached += n * pool.obj_size;
                let t = self.marks(e).oldest();
                if oldest.is_none_or(|(_, o)| t < o) {
                    oldest = Some((e, t));
                }
            }
            let Some((e, _)) = oldest.filter(|_| cached > target) else {
                break;
            };
            let pool = e.bound_pool().expect("listed entries are bound");
            self.evict_from(e, cluster_len(pool));
        }
        let tick = self.next_tick();
        self.evicted_at.set(tick);
        for i in 0..self.nlisted.get() {
            let e = &self.table[self.listed[i].get() as usize];
            if e.bound_pool().is_some() {
                let top = e.top.load(Relaxed);
                e.low.set(top);
                // What hits push from here on is no older than now.
                self.marks(e).push(Self::index(e, top), tick);
            }
        }
        self.sweep_if_destroyed();
    }

    /// Objects above an entry's low water were pushed again since the last
    /// eviction (allocations took the stack down to the low water after
    /// it): their marks must not say they are older.
    fn age_by_low_water(&self) {
        let since = self.evicted_at.get();
        for i in 0..self.nlisted.get() {
            let e = &self.table[self.listed[i].get() as usize];
            if e.bound_pool().is_some() && e.low.get() < e.top.load(Relaxed) {
                let low = e.low.get().max(e.bottom.load(Relaxed));
                self.marks(e).no_older_than(Self::index(e, low), since);
            }
        }
    }

    /// Takes up to `max` objects from the bottom of `e` and gives them to
    /// the pool's shared cache as one cluster.
    fn evict_from(&self, e: &Entry, max: usize) {
        let Some(pool) = e.bound_pool() else { return };
        let n = max.min(e.objects());
        if n == 0 {
            return;
        }
        let bottom = e.bottom.load(Relaxed);
        // SAFETY: `n` objects from `bottom` are cached; the bounds move past
        // them before they leave, so the entry is consistent meanwhile.
        unsafe {
            let nb = bottom.add(n);
            self.marks(e).cut_below(Self::index(e, nb));
            e.bottom.store(nb, Release);
            if e.low.get() < nb {
                e.low.set(nb);
            }
            self.granted.set(self.granted.get() - n * pool.obj_size);
            give_back(pool, self.home, bottom, n);
        }
    }
}

/// Gives `n` objects whose pointers start at `slots` to `pool`: to its
/// shared cache as clusters while it is live, else to the system.
///
/// # Safety
/// The `n` pointers are objects of `pool` that the caller owns; the slots
/// are not written meanwhile (the entry no longer covers them).
unsafe fn give_back(pool: &Pool, home: usize, slots: *mut *mut u8, n: usize) {
    let len = cluster_len(pool);
    let mut i = 0;
    while i < n {
        let m = len.min(n - i);
        let mut first: *mut Item = ptr::null_mut();
        for j in (i..i + m).rev() {
            // SAFETY: per the contract; the object becomes an Item.
            unsafe {
                let it = (*slots.add(j)).cast::<Item>();
                Item::set_down(it, first);
                first = it;
            }
        }
        // SAFETY: `m > 0`, so `first` is an object.
        let first = unsafe { NonNull::new_unchecked(first) };
        pool.release_from_cache(home, Cluster { first, len: m });
        i += m;
    }
}

/// Objects of `pool` moved to the shared cache as one cluster: about
/// `CLUSTER_BYTES` (at most a sixteenth of the budget), and at least
/// `CLUSTER` objects. Small objects move many at a time, so that the shared
/// cache's atomic operations (one per cluster) stay rare per object; large
/// ones move few, so that one eviction does not empty most of the budget.
pub(crate) fn cluster_len(pool: &Pool) -> usize {
    let bytes = CLUSTER_BYTES.min(options::cache_size() / 16);
    (bytes / pool.obj_size).clamp(CLUSTER, MAX_CLUSTER)
}

/// Bytes moved to the shared cache per cluster, for small objects.
const CLUSTER_BYTES: usize = 4096;
/// Most objects in one cluster.
const MAX_CLUSTER: usize = 64;

/// Gives every cached object of `tc` back and unbinds every entry.
///
/// # Safety
/// The caller is `tc`'s owner (or, in a fork child, the only thread left).
pub(crate) unsafe fn drain(tc: &ThreadCache) {
    while tc.nlisted.get() > 0 {
        let e = &tc.table[tc.listed[0].get() as usize];
        tc.unbind(e);
    }
}

/// This thread's entry of `pool`, emptied and unbound (`pool_destroy`).
pub(crate) fn release_own(pool: &Pool) {
    if let Some(tc) = ThreadCache::existing() {
        let e = &tc.table[pool.slot];
        if ptr::eq(e.pool.load(Relaxed), pool) {
            tc.unbind(e);
        }
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

/// Moves every object this thread caches to the shared caches.
pub(crate) fn evict_all() {
    if let Some(tc) = ThreadCache::existing() {
        tc.evict_to(0);
    }
}

/// Unmaps a thread cache that is drained and unregistered.
///
/// # Safety
/// Nobody uses `tc` any more.
pub(crate) unsafe fn unmap(tc: NonNull<ThreadCache>) {
    // SAFETY: the mapping was made by `create` with this size.
    unsafe { os::unmap(tc.cast(), size_of::<ThreadCache>()) };
}

#[cfg(all(test, not(loom)))]
mod tests;
