//! Per-thread caches: the hot path.
//!
//! Each thread that touches a pool gets one [`ThreadCache`]: a page-mapped
//! block holding a table of per-pool lists indexed by the pool's slot. A
//! freed object is linked at the head of its pool's list (newest first) and
//! stamped with the thread's *tick*, a count of its frees; an allocation
//! unlinks the newest object of its pool. When the thread's cached bytes
//! exceed the budget, the oldest objects leave in clusters of one pool for
//! the shared cache: the pool whose oldest object has the smallest tick goes
//! first, so eviction is oldest-first across all pools of the thread.
//!
//! A pool's list is walked from both ends (allocation takes the newest,
//! eviction the oldest), yet an allocation touches no object but the one it
//! returns. Each object links to its `older` neighbour, which the allocation
//! reads from the object it takes anyway, and to its `newer` one, which is
//! valid for every object but the newest: a free sets it on the object that
//! stops being the newest, and an allocation leaves the new newest object's
//! stale `newer` alone. Eviction walks `newer` from the oldest object and
//! stops before the newest, so it never reads a stale link. A doubly linked
//! list would make every allocation write into the next object, a cache
//! miss of its own when the objects are cold (`perf annotate` put 28 % of
//! the preload's `malloc` on that store in the larson benchmark).
//!
//! There is no LRU list across pools: keeping one costs two more unlinks per
//! allocation and two more links per free, on the hot path. Instead each
//! entry remembers the tick of its oldest object, and eviction (the cold
//! path) scans the entries that hold objects, which are few.
//!
//! Only the owner thread touches its cache, with plain loads and stores, with
//! one exception: `pool_destroy` must take back a dying pool's objects from
//! every thread, even a thread blocked elsewhere. It *claims* the caches with
//! an asymmetric Dekker handshake: the owner marks itself `active` and then
//! checks `claimed`, separated only by a compiler fence; the claimer sets
//! `claimed`, runs `membarrier(PRIVATE_EXPEDITED)` (a full fence on every
//! running thread of the process) and waits for `active` to drop. Either the
//! owner sees the claim and waits, or the claimer sees the owner inside and
//! waits. Where membarrier is missing, both sides use a SeqCst fence.

use crate::pool::Pool;
use crate::shared_cache::{Cluster, Item, CLUSTER};
use crate::{options, os, registry, tls};
use core::cell::Cell;
use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize};
use crossbeam_utils::Backoff;

/// Most pools alive at once (after merging); `pool_create` fails beyond.
#[cfg(not(miri))]
pub(crate) const MAX_POOLS: usize = 4096;
/// Under Miri a smaller table: every `&ThreadCache` is retagged over the
/// whole table (Stacked Borrows tracks each byte), which made the
/// multi-threaded tests take minutes; the tests use far fewer slots.
#[cfg(miri)]
pub(crate) const MAX_POOLS: usize = 256;

/// Smallest object: a cached object holds two links and a tick (24 bytes),
/// and the allocator underneath hands out multiples of `OBJECT_ALIGN` anyway.
pub(crate) const MIN_OBJECT: usize = size_of::<CachedItem>().next_multiple_of(os::OBJECT_ALIGN);

/// What an object holds while it sits in a thread cache.
#[repr(C)]
struct CachedItem {
    /// The next older object of the pool's list (meaningless on the oldest).
    older: *mut CachedItem,
    /// The next newer object (meaningless on the newest: see the module
    /// docs). At the offset of the shared cache's `Item::down`, so eviction
    /// reads it before it reuses the object as an `Item`.
    newer: *mut CachedItem,
    /// The thread's tick when the object was cached.
    tick: u64,
}

/// One pool's objects in one thread, from `newest` to `oldest_item`.
#[repr(C)]
struct PoolCache {
    /// The newest object, while `count > 0`.
    newest: Cell<*mut CachedItem>,
    /// The oldest object, while `count > 0`.
    oldest_item: Cell<*mut CachedItem>,
    /// The pool this entry serves, or null while unused in this thread.
    /// Written by the owner (or a claimer); read by statistics from any
    /// thread, hence atomic (Relaxed: a plain load and store on x86-64).
    pool: AtomicPtr<Pool>,
    /// Objects in `list`. Written by the owner (or a claimer); read by
    /// statistics from any thread.
    count: AtomicUsize,
    /// Tick of the oldest object in `list`, while `count > 0`.
    oldest: Cell<u64>,
    /// In the thread's list of entries that may hold objects (`listed`).
    is_listed: Cell<bool>,
    next_listed: Cell<*mut PoolCache>,
}

impl PoolCache {
    /// Whether this entry holds `pool`'s objects in this thread.
    #[inline]
    fn serves(&self, pool: &Pool) -> bool {
        ptr::eq(self.pool.load(Relaxed), pool)
    }
}

/// The cache of one thread. Lives in a zeroed mapping: all-zero is the
/// "unused" state of every field, so the table costs nothing until touched.
#[repr(C)]
pub(crate) struct ThreadCache {
    /// The owner is inside a pool operation.
    active: AtomicBool,
    /// A claimer (pool_destroy) wants or holds the cache.
    claimed: AtomicBool,
    /// The bucket this thread starts at in shared caches.
    pub(crate) home: usize,
    /// Bytes of objects in this cache.
    bytes: Cell<usize>,
    /// Frees so far: the age of cached objects.
    tick: Cell<u64>,
    /// Entries that may hold objects, linked through `next_listed`: every
    /// entry with `count > 0` is on it; emptied ones leave it lazily, when
    /// eviction walks it.
    listed: Cell<*mut PoolCache>,
    /// The registry's list of thread caches (under the registry lock).
    pub(crate) reg_next: Cell<*mut ThreadCache>,
    /// Per-pool lists, indexed by `Pool::slot`.
    table: [PoolCache; MAX_POOLS],
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
        let tc = tls::get().cast::<ThreadCache>();
        tls::set(ptr::null_mut());
        if let Some(tc) = NonNull::new(tc) {
            registry::thread_exit(tc);
        }
    }
}

/// Exclusive use of a thread cache, by its owner for one operation (see
/// [`ThreadCache::enter`]); released on drop.
pub(crate) struct Held<'a> {
    tc: &'a ThreadCache,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Release: a claimer that acquires `active == false` sees every
        // change this operation made to the lists.
        self.tc.active.store(false, Release);
    }
}

impl core::ops::Deref for Held<'_> {
    type Target = ThreadCache;
    fn deref(&self) -> &ThreadCache {
        self.tc
    }
}

impl ThreadCache {
    /// This thread's cache, created and registered on first use; `None` when
    /// it cannot be had (the thread is exiting, or no memory for the table).
    #[inline(always)]
    pub(crate) fn current() -> Option<&'static ThreadCache> {
        Self::existing().or_else(Self::create)
    }

    /// This thread's cache if it has one already.
    #[inline(always)]
    pub(crate) fn existing() -> Option<&'static ThreadCache> {
        // SAFETY: the word holds null or a registered cache, which stays
        // mapped until this thread's `ExitGuard` destructor clears the word.
        NonNull::new(tls::get().cast::<ThreadCache>()).map(|tc| unsafe { &*tc.as_ptr() })
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

    /// Starts an owner operation. While the guard lives, no claimer touches
    /// this cache.
    #[inline(always)]
    pub(crate) fn enter(&self) -> Held<'_> {
        // Relaxed, then the light fence: the claimer's heavy fence orders
        // this store before our load of `claimed` (see the module docs).
        self.active.store(true, Relaxed);
        registry::light_fence();
        // Acquire: if a claim just ended, see what the claimer changed.
        if self.claimed.load(Acquire) {
            self.wait_for_claimer();
        }
        Held { tc: self }
    }

    #[cold]
    fn wait_for_claimer(&self) {
        loop {
            // Release: hand the claimer our lists as they are.
            self.active.store(false, Release);
            let backoff = Backoff::new();
            while self.claimed.load(Acquire) {
                backoff.snooze();
            }
            self.active.store(true, Relaxed);
            registry::light_fence();
            if !self.claimed.load(Acquire) {
                return;
            }
        }
    }

    /// Marks the cache claimed; the claimer must then run the heavy fence
    /// and [`ThreadCache::claim_wait`] before touching it.
    pub(crate) fn claim_start(&self) {
        // Relaxed: ordered before the claimer's reads of `active` by the
        // heavy fence that follows.
        self.claimed.store(true, Relaxed);
    }

    /// Waits until the owner is outside any operation. After this (and
    /// until [`ThreadCache::claim_end`]) the claimer may use the
    /// `*_claimed` methods.
    pub(crate) fn claim_wait(&self) {
        let backoff = Backoff::new();
        // Acquire: pairs with the owner's Release in `Held::drop`.
        while self.active.load(Acquire) {
            backoff.snooze();
        }
    }

    /// Gives the cache back to its owner.
    pub(crate) fn claim_end(&self) {
        // Release: the owner acquires it in `enter` and sees our changes.
        self.claimed.store(false, Release);
    }

    /// The entry of `pool` in this thread, set up on first use.
    #[inline(always)]
    fn entry(&self, pool: &Pool) -> &PoolCache {
        debug_assert!(pool.slot < MAX_POOLS);
        // SAFETY: a pool's slot is below MAX_POOLS, checked once at its
        // creation (`registry::create_with`), and never changes.
        let pc = unsafe { self.table.get_unchecked(pool.slot) };
        if !pc.serves(pool) {
            Self::init_entry(pc, pool);
        }
        pc
    }

    #[cold]
    fn init_entry(pc: &PoolCache, pool: &Pool) {
        debug_assert!(
            pc.pool.load(Relaxed).is_null(),
            "slot reused while still in use"
        );
        pc.pool.store(ptr::from_ref(pool).cast_mut(), Relaxed);
    }

    /// Objects of `pool` cached by this thread, for statistics; may lag an
    /// operation in flight on the owner thread.
    pub(crate) fn count_of(&self, pool: &Pool) -> usize {
        let pc = &self.table[pool.slot];
        if pc.serves(pool) {
            // Relaxed: a statistic.
            pc.count.load(Relaxed)
        } else {
            0
        }
    }
}

impl Held<'_> {
    /// Unlinks and returns the newest object of `pool` in this thread.
    ///
    /// Counters: the pool's `count` and the thread's `bytes` drop.
    #[inline(always)]
    pub(crate) fn take(&self, pool: &Pool) -> Option<NonNull<u8>> {
        let pc = self.entry(pool);
        // Relaxed: only this thread writes `count` while it is held.
        let n = pc.count.load(Relaxed);
        if n == 0 {
            return None;
        }
        let item = pc.newest.get();
        // SAFETY: the cache is held and `n > 0`, so `item` is a cached
        // object of it. Its `older` is meaningless when it is the only one,
        // and then `count` says the list is empty.
        pc.newest.set(unsafe { (*item).older });
        pc.count.store(n - 1, Relaxed);
        self.bytes.set(self.bytes.get() - pool.obj_size);
        NonNull::new(item.cast())
    }

    /// Links `obj` as the newest object of `pool` in this thread, then sends
    /// the oldest objects to the shared cache if the thread is over `budget`.
    ///
    /// Counters: the pool's `count` and the thread's `bytes` grow.
    ///
    /// # Safety
    /// `obj` is an object of `pool` that nobody uses any more.
    #[inline(always)]
    pub(crate) unsafe fn put(&self, pool: &Pool, obj: NonNull<u8>, budget: usize) {
        let pc = self.entry(pool);
        let item = obj.as_ptr().cast::<CachedItem>();
        let tick = self.tick.get();
        self.tick.set(tick + 1);
        let n = pc.count.load(Relaxed);
        let newest = pc.newest.get();
        // SAFETY: the cache is held; `item` is free memory of at least
        // MIN_OBJECT bytes (caller's contract).
        unsafe {
            (*item).older = newest;
            (*item).tick = tick;
        }
        if n == 0 {
            pc.oldest_item.set(item);
            self.first_object(pc, tick);
        } else {
            // SAFETY: `n > 0`, so `newest` is a cached object of this held
            // cache; it stops being the newest, so its `newer` must be set.
            unsafe { (*newest).newer = item };
        }
        pc.newest.set(item);
        pc.count.store(n + 1, Relaxed);
        let bytes = self.bytes.get() + pool.obj_size;
        self.bytes.set(bytes);
        if bytes > budget {
            self.evict_to(budget - budget / 8);
        }
    }

    /// `pc` gets its only object, cached at `tick`: it is also the oldest,
    /// and the entry must be on the `listed` list.
    #[inline]
    fn first_object(&self, pc: &PoolCache, tick: u64) {
        pc.oldest.set(tick);
        if !pc.is_listed.get() {
            pc.is_listed.set(true);
            pc.next_listed.set(self.listed.get());
            self.listed.set(ptr::from_ref(pc).cast_mut());
        }
    }

    /// Adds the objects of a cluster taken from the shared cache.
    ///
    /// # Safety
    /// The cluster's objects belong to `pool` and are owned by the caller.
    pub(crate) unsafe fn put_cluster(&self, pool: &Pool, cluster: Cluster) {
        // SAFETY: the caller owns the cluster; each object goes to `put`
        // exactly once. `usize::MAX`: a refill never evicts.
        unsafe { cluster.for_each(|i| self.put(pool, i.cast(), usize::MAX)) };
    }

    /// Moves the oldest objects to their shared caches until the thread holds
    /// at most `target` bytes.
    #[cold]
    pub(crate) fn evict_to(&self, target: usize) {
        // SAFETY: the cache is held by us.
        unsafe { evict_to(self.tc, target) }
    }
}

/// Moves oldest-first clusters out of `tc` until it holds `target` bytes.
///
/// # Safety
/// The caller holds `tc` (owner operation, claim, or exiting owner).
pub(crate) unsafe fn evict_to(tc: &ThreadCache, target: usize) {
    while tc.bytes.get() > target {
        // SAFETY: the caller holds `tc`.
        let Some(pc) = (unsafe { oldest_entry(tc) }) else {
            break;
        };
        // SAFETY: an entry that holds objects points to its live pool.
        let len = cluster_len(unsafe { &*pc.pool.load(Relaxed) });
        // SAFETY: `pc` is an entry of this held cache.
        unsafe { evict_cluster(tc, pc, len) };
    }
}

/// Objects of `pool` moved to the shared cache as one cluster: about
/// `CLUSTER_BYTES` (at most a sixteenth of the budget), and at least
/// `CLUSTER` objects. Small objects move many at a time, so that the shared
/// cache's atomic operations (one per cluster) stay rare per object; large
/// ones move few, so that one eviction does not empty most of the budget.
fn cluster_len(pool: &Pool) -> usize {
    let bytes = CLUSTER_BYTES.min(options::cache_size() / 16);
    (bytes / pool.obj_size).clamp(CLUSTER, MAX_CLUSTER)
}

/// Bytes moved to the shared cache per cluster, for small objects.
const CLUSTER_BYTES: usize = 4096;
/// Most objects in one cluster.
const MAX_CLUSTER: usize = 64;

/// The entry holding the thread's oldest object, dropping emptied entries
/// from the `listed` list on the way.
///
/// # Safety
/// The caller holds `tc`.
unsafe fn oldest_entry(tc: &ThreadCache) -> Option<&PoolCache> {
    let mut best: Option<&PoolCache> = None;
    let mut link = &tc.listed;
    // SAFETY: listed entries are entries of `tc`'s table, which lives as
    // long as `tc`; only the holder walks or changes the list.
    while let Some(pc) = unsafe { link.get().as_ref() } {
        // Relaxed: the holder is the only writer of `count`.
        if pc.count.load(Relaxed) == 0 {
            link.set(pc.next_listed.get());
            pc.is_listed.set(false);
            continue;
        }
        if best.is_none_or(|b| pc.oldest.get() < b.oldest.get()) {
            best = Some(pc);
        }
        link = &pc.next_listed;
    }
    best
}

/// Unlinks up to `max` oldest objects of one pool and gives them to the
/// pool's shared cache as one cluster.
///
/// # Safety
/// The caller holds `tc`; `pc` is one of its entries.
unsafe fn evict_cluster(tc: &ThreadCache, pc: &PoolCache, max: usize) -> usize {
    // Relaxed: the holder is the only writer of `count`.
    let count = pc.count.load(Relaxed);
    let n = max.min(count);
    let mut first: *mut Item = ptr::null_mut();
    let mut item = pc.oldest_item.get();
    for i in 0..n {
        // SAFETY: the cache is held and `item` is one of the `n` oldest
        // objects of this list. Its `newer` is valid unless it is the
        // newest (`i + 1 == count`), where it is not read (it may never
        // have been written). It is read before `down`, at the same offset,
        // overwrites it; from then on the object is ours, an Item.
        unsafe {
            let newer = if i + 1 < count {
                (*item).newer
            } else {
                ptr::null_mut()
            };
            let it = item.cast::<Item>();
            (*it).down = first;
            first = it;
            item = newer;
        }
    }
    if let Some(first) = NonNull::new(first) {
        let left = count - n;
        if left > 0 {
            pc.oldest_item.set(item);
            // SAFETY: `item` is now the oldest object of the list.
            pc.oldest.set(unsafe { (*item).tick });
        }
        pc.count.store(left, Relaxed);
        // SAFETY: an entry in use points to its live pool.
        let pool = unsafe { &*pc.pool.load(Relaxed) };
        tc.bytes.set(tc.bytes.get() - n * pool.obj_size);
        pool.release_cluster(tc.home, Cluster { first, len: n });
    }
    n
}

/// Gives every cached object of `tc` back to the shared caches.
///
/// # Safety
/// The caller holds `tc`.
pub(crate) unsafe fn drain(tc: &ThreadCache) {
    // SAFETY: forwarded.
    unsafe { evict_to(tc, 0) };
}

/// Releases every object of `pool` cached in `tc` to the backing allocator
/// and resets the entry, for `pool_destroy`.
///
/// # Safety
/// The caller holds `tc` (a claim).
pub(crate) unsafe fn reclaim_pool(tc: &ThreadCache, pool: &Pool) {
    let pc = &tc.table[pool.slot];
    if !pc.serves(pool) {
        return;
    }
    // Relaxed: the claimer is the only writer of `count` meanwhile.
    let count = pc.count.load(Relaxed);
    let mut item = pc.newest.get();
    for _ in 0..count {
        // SAFETY: the cache is held and `item` is one of its `count`
        // objects, newest first. `older` is read before the object goes
        // back to the system (which may unmap it).
        unsafe {
            let older = (*item).older;
            pool.release_to_os(tc.home, NonNull::new_unchecked(item.cast()));
            item = older;
        }
    }
    tc.bytes.set(tc.bytes.get() - count * pool.obj_size);
    // The entry may stay on the owner's `listed` list: being empty, the
    // next eviction drops it (the claimer leaves that list alone).
    pc.count.store(0, Relaxed);
    pc.pool.store(ptr::null_mut(), Relaxed);
}

/// Unmaps a thread cache that is drained and unregistered.
///
/// # Safety
/// Nobody uses `tc` any more.
pub(crate) unsafe fn unmap(tc: NonNull<ThreadCache>) {
    // SAFETY: the mapping was made by `create` with this size.
    unsafe { os::unmap(tc.cast(), size_of::<ThreadCache>()) };
}

/// For the `cold-first` debugging option (HAProxy's `-dMcold-first`): kept
/// apart from the hot path, which always takes the newest object.
impl Held<'_> {
    /// Unlinks and returns the oldest object of `pool` in this thread.
    ///
    /// Counters: the pool's `count` and the thread's `bytes` drop.
    pub(crate) fn take_oldest(&self, pool: &Pool) -> Option<NonNull<u8>> {
        let pc = self.entry(pool);
        // Relaxed: only this thread writes `count` while it is held.
        let n = pc.count.load(Relaxed);
        if n == 0 {
            return None;
        }
        let item = pc.oldest_item.get();
        if n > 1 {
            // SAFETY: the cache is held and `item` is its oldest object of
            // `pool`; not the newest (`n > 1`), so its `newer` is valid and
            // becomes the oldest.
            unsafe {
                let newer = (*item).newer;
                pc.oldest_item.set(newer);
                pc.oldest.set((*newer).tick);
            }
        }
        pc.count.store(n - 1, Relaxed);
        self.bytes.set(self.bytes.get() - pool.obj_size);
        NonNull::new(item.cast())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::ThreadCache;
    use crate::pool::Pool;
    use crate::registry::{self, Destroyed};
    use crate::shared_cache::CLUSTER;
    use core::ptr::NonNull;
    use std::collections::HashMap;
    use std::sync::mpsc;

    /// A pool whose shared cache a concurrent test's `gc()` leaves alone.
    fn pool(name: &core::ffi::CStr, size: usize) -> &'static Pool {
        let p = registry::create(name, size, 0).expect("pool");
        p.minavail
            .store(usize::MAX, core::sync::atomic::Ordering::Relaxed);
        p
    }

    #[test]
    fn newest_object_comes_back_first() {
        let p = pool(c"tc-lifo", 64);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        // SAFETY: both objects came from `p` and are given back once.
        unsafe {
            p.free(a);
            p.free(b);
        }
        assert_eq!(p.alloc(), Some(b));
        assert_eq!(p.alloc(), Some(a));
        // SAFETY: as above.
        unsafe {
            p.free(a);
            p.free(b);
        }
        assert_eq!(registry::stats(p).cached, 2);
    }

    /// Over budget, the oldest objects leave for the shared cache; what
    /// stays is the newest, and comes back newest first.
    #[test]
    fn eviction_sends_the_oldest_to_the_shared_cache() {
        let size = 4096;
        let p = pool(c"tc-lru", size);
        let budget = crate::options::cache_size();
        let n = 2 * budget / size;
        let objs: Vec<_> = (0..n).map(|_| p.alloc().unwrap()).collect();
        for &o in &objs {
            // SAFETY: each object came from `p` and is given back once.
            unsafe { p.free(o) };
        }
        let s = registry::stats(p);
        assert!(s.cached * size <= budget, "over budget: {s:?}");
        assert!(s.cached * size > budget / 2, "evicted far too much: {s:?}");
        assert_eq!(s.cached + s.shared, n);
        assert_eq!(s.used, 0);
        // The cached ones are the last freed, returned newest first.
        for i in 0..s.cached {
            assert_eq!(p.alloc(), Some(objs[n - 1 - i]));
        }
        // Then come objects of the shared cache: all from the oldest ones.
        let next = p.alloc().unwrap();
        assert!(objs[..n - s.cached].contains(&next));
        // Give back what the test still holds (Miri's leak check sees it).
        for &o in objs[n - s.cached..].iter().chain([&next]) {
            // SAFETY: each object came from `p` and is given back once.
            unsafe { p.free(o) };
        }
    }

    /// Small objects leave in clusters of about `CLUSTER_BYTES`, not of
    /// `CLUSTER` objects.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "thousands of objects; eviction's memory safety is covered above"
    )]
    fn small_objects_leave_in_large_clusters() {
        let p = pool(c"tc-cluster", 64);
        let budget = crate::options::cache_size();
        let len = super::cluster_len(p);
        assert_eq!(len, super::CLUSTER_BYTES.min(budget / 16) / 64);
        assert!(len > CLUSTER);
        let n = budget / 64 + 1;
        let objs: Vec<_> = (0..n).map(|_| p.alloc().unwrap()).collect();
        for &o in &objs {
            // SAFETY: each object came from `p` and is given back once.
            unsafe { p.free(o) };
        }
        let s = registry::stats(p);
        // The fewest whole clusters that bring the thread to 7/8 of budget.
        let excess = n - (budget - budget / 8) / 64;
        assert_eq!(s.shared, excess.div_ceil(len) * len, "{s:?}");
    }

    /// Eviction is oldest-first across pools, in clusters: with objects of
    /// two pools freed alternately, both pools keep their newest objects,
    /// and about as many each (a per-pool order would empty one pool).
    #[test]
    fn eviction_is_oldest_first_across_pools() {
        let size = 4096;
        let (a, b) = (pool(c"tc-lru-a", size), pool(c"tc-lru-b", size));
        let budget = crate::options::cache_size();
        // Twice the budget, half of it from each pool.
        let n = budget / size;
        let objs: Vec<_> = (0..n)
            .flat_map(|_| [(a, a.alloc().unwrap()), (b, b.alloc().unwrap())])
            .collect();
        for &(p, o) in &objs {
            // SAFETY: each object came from `p` and is given back once.
            unsafe { p.free(o) };
        }
        let (sa, sb) = (registry::stats(a), registry::stats(b));
        assert!((sa.cached + sb.cached) * size <= budget, "{sa:?} {sb:?}");
        assert!(sa.cached.abs_diff(sb.cached) <= CLUSTER, "{sa:?} {sb:?}");
        for (p, kept) in [(a, sa.cached), (b, sb.cached)] {
            let newest = objs.iter().rev().filter(|(q, _)| core::ptr::eq(*q, p));
            let got: Vec<_> = (0..kept).map(|_| p.alloc().unwrap()).collect();
            let want: Vec<_> = newest.take(kept).map(|&(_, o)| o).collect();
            assert_eq!(got, want);
            for o in got {
                // SAFETY: as above.
                unsafe { p.free(o) };
            }
        }
    }

    /// An allocation leaves a stale `newer` on the object it uncovers; the
    /// next free must overwrite it, or the oldest-first walk would follow
    /// it to an object that left the cache.
    #[test]
    fn oldest_first_walk_survives_allocations() {
        let p = pool(c"tc-walk", 64);
        let [a, b, c] = [(); 3].map(|_| p.alloc().unwrap());
        let tc = ThreadCache::current().unwrap();
        let held = tc.enter();
        // SAFETY: each object came from `p` and is not used while cached.
        unsafe {
            held.put(p, a, usize::MAX);
            held.put(p, b, usize::MAX);
            assert_eq!(held.take(p), Some(b));
            held.put(p, c, usize::MAX);
        }
        assert_eq!(held.take_oldest(p), Some(a));
        assert_eq!(held.take_oldest(p), Some(c));
        assert_eq!(held.take(p), None);
        drop(held);
        for o in [a, b, c] {
            // SAFETY: the objects are ours again, given back once.
            unsafe { p.free(o) };
        }
    }

    #[test]
    fn exiting_thread_gives_its_cache_back() {
        let p = pool(c"tc-exit", 128);
        std::thread::spawn(move || {
            let objs: Vec<_> = (0..10).map(|_| p.alloc().unwrap()).collect();
            for o in objs {
                // SAFETY: each object came from `p` and is given back once.
                unsafe { p.free(o) };
            }
            assert_eq!(registry::stats(p).cached, 10);
        })
        .join()
        .unwrap();
        let s = registry::stats(p);
        assert_eq!((s.cached, s.shared, s.used, s.allocated), (0, 10, 0, 10));
    }

    /// pool_destroy takes back the objects of a thread that is alive and
    /// blocked, and that thread's cache keeps working afterwards.
    #[test]
    fn destroy_reclaims_from_a_blocked_thread() {
        let p = pool(c"tc-destroy", 256);
        let other = pool(c"tc-destroy-other", 256);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let objs: Vec<_> = (0..20).map(|_| p.alloc().unwrap()).collect();
            let o = other.alloc().unwrap();
            for x in objs {
                // SAFETY: each object came from `p` and is given back once.
                unsafe { p.free(x) };
            }
            // SAFETY: as above.
            unsafe { other.free(o) };
            ready_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // The destroyed pool's objects are gone from our LRU: evicting
            // everything must only find `other`'s object.
            crate::evict_local_cache();
            let s = registry::stats(other);
            (s.cached, s.shared)
        });
        ready_rx.recv().unwrap();
        assert_eq!(registry::stats(p).cached, 20);
        assert_eq!(registry::destroy(p), Ok(Destroyed::Released));
        go_tx.send(()).unwrap();
        assert_eq!(t.join().unwrap(), (0, 1));
        // SAFETY: heads are never released; `p` is now a dead handle.
        assert!(unsafe { Pool::from_handle(p) }.is_none());
    }

    /// An object crossing threads, with its pointer's provenance (an address
    /// turned back into a pointer would hide it from Miri's leak check).
    struct Obj(NonNull<u8>);
    // SAFETY: an object is plain memory owned by whoever holds the `Obj`.
    unsafe impl Send for Obj {}

    /// Many threads allocate, hand objects to each other and free them; no
    /// object is handed out twice and every counter balances at the end.
    #[test]
    fn cross_thread_traffic_balances() {
        let p = pool(c"tc-stress", 48);
        let threads = 4;
        let rounds = if cfg!(miri) { 50 } else { 20_000 };
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel::<Obj>()).unzip();
        let free = |x: Obj| {
            // SAFETY: every object passed here is an object of `p` that
            // its holder gives back exactly once.
            unsafe { p.free(x.0) }
        };
        let handles: Vec<_> = rxs
            .into_iter()
            .enumerate()
            .map(|(t, rx)| {
                let next = txs[(t + 1) % threads].clone();
                std::thread::spawn(move || {
                    let mut live = HashMap::new();
                    for i in 0..rounds {
                        let o = p.alloc().unwrap();
                        let a = o.as_ptr().addr();
                        assert!(live.insert(a, Obj(o)).is_none(), "object handed out twice");
                        if i % 3 == 0 {
                            next.send(live.remove(&a).unwrap()).unwrap();
                        }
                        rx.try_iter().for_each(free);
                        if live.len() > 64 {
                            let x = *live.keys().next().unwrap();
                            free(live.remove(&x).unwrap());
                        }
                    }
                    live.into_values().for_each(free);
                    rx
                })
            })
            .collect();
        drop(txs);
        let rxs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        rxs.iter().for_each(|rx| rx.try_iter().for_each(free));
        let s = registry::stats(p);
        assert_eq!(s.used, 0, "objects lost: {s:?}");
        assert_eq!(s.allocated, s.cached + s.shared);
    }
}
