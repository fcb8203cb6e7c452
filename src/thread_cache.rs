//! Per-thread caches: the hot path.
//!
//! Each thread that touches a pool gets one [`ThreadCache`]: a page-mapped
//! block holding the thread's LRU list of all cached objects and a table of
//! per-pool lists indexed by the pool's slot. A freed object is linked at the
//! head of both lists (newest first); an allocation unlinks the newest object
//! of its pool. When the thread's cached bytes exceed the budget, the oldest
//! objects leave in clusters of one pool for the shared cache.
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
use crate::{os, registry};
use core::cell::{Cell, UnsafeCell};
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

/// Smallest object: a cached object holds two list links.
pub(crate) const MIN_OBJECT: usize = size_of::<CachedItem>();

/// A doubly-linked list node; a list's head is a sentinel node.
#[repr(C)]
struct Link {
    next: *mut Link,
    prev: *mut Link,
}

/// What an object holds while it sits in a thread cache.
#[repr(C)]
struct CachedItem {
    /// In its pool's list of this thread; first, so a `by_pool` link is
    /// also the item's address.
    by_pool: Link,
    /// In the thread's LRU list across pools.
    by_lru: Link,
}

/// One pool's objects in one thread, newest first.
#[repr(C)]
struct PoolCache {
    /// Sentinel of the `by_pool` list; first, so that the oldest item's
    /// `by_pool.next` (which points here) also finds the `PoolCache`. In an
    /// `UnsafeCell` because the owner relinks it through `&PoolCache`
    /// (a write through a shared reference to a plain field is undefined
    /// behaviour; Miri reports it).
    list: UnsafeCell<Link>,
    /// The pool this entry serves, or null while unused in this thread.
    /// Written by the owner (or a claimer); read by statistics from any
    /// thread, hence atomic (Relaxed: a plain load and store on x86-64).
    pool: AtomicPtr<Pool>,
    /// Objects in `list`. Written by the owner (or a claimer); read by
    /// statistics from any thread.
    count: AtomicUsize,
}

impl PoolCache {
    /// The sentinel, as a pointer to the whole entry (`list` is its first
    /// field). Items link to it and [`evict_to`] goes back from it to the
    /// `PoolCache`, so it carries the entry's provenance, not only the
    /// field's (`list.get()` would give a pointer Miri confines to `list`).
    #[inline]
    fn sentinel(&self) -> *mut Link {
        ptr::from_ref(self).cast_mut().cast()
    }

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
    /// Sentinel of the LRU list: `next` is the newest object.
    lru: UnsafeCell<Link>,
    /// The registry's list of thread caches (under the registry lock).
    pub(crate) reg_next: Cell<*mut ThreadCache>,
    /// Per-pool lists, indexed by `Pool::slot`.
    table: [PoolCache; MAX_POOLS],
}

thread_local! {
    /// This thread's cache, created on first use; its destructor gives every
    /// cached object back when the thread exits.
    static LOCAL: Local = const { Local(Cell::new(ptr::null_mut())) };
}

struct Local(Cell<*mut ThreadCache>);

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(tc) = NonNull::new(self.0.replace(ptr::null_mut())) {
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
    #[inline]
    pub(crate) fn current() -> Option<&'static ThreadCache> {
        let tc = LOCAL.try_with(|l| l.0.get()).ok()?;
        match NonNull::new(tc) {
            // SAFETY: a registered cache stays mapped until this thread's
            // `Local` destructor, after which `try_with` fails.
            Some(tc) => Some(unsafe { &*tc.as_ptr() }),
            None => Self::create(),
        }
    }

    #[cold]
    fn create() -> Option<&'static ThreadCache> {
        // Creating a cache maps memory and takes the registry lock, either
        // of which may set errno; the call that got here (a pool_free, say)
        // must not report an error it did not have.
        // SAFETY: __errno_location returns this thread's errno slot.
        let errno = unsafe { *libc::__errno_location() };
        let tc = Self::create_registered();
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
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
        let lru = r.lru.get();
        // SAFETY: the sentinel is ours; an empty list links to itself.
        unsafe {
            *lru = Link {
                next: lru,
                prev: lru,
            }
        };
        if LOCAL.try_with(|l| l.0.set(tc.as_ptr())).is_err() {
            // SAFETY: never registered nor shared: nobody else can see it.
            unsafe { os::unmap(tc.cast(), size_of::<ThreadCache>()) };
            return None;
        }
        registry::thread_start(tc);
        Some(r)
    }

    /// Starts an owner operation. While the guard lives, no claimer touches
    /// this cache.
    #[inline]
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
    #[inline]
    fn entry(&self, pool: &Pool) -> &PoolCache {
        // `slot < MAX_POOLS` is checked once, at pool creation.
        let pc = &self.table[pool.slot];
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
        let list = pc.sentinel();
        // SAFETY: the entry belongs to this (held) cache and its list is
        // empty, so nothing else points into it.
        unsafe {
            *list = Link {
                next: list,
                prev: list,
            }
        };
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
    #[inline]
    pub(crate) fn take(&self, pool: &Pool) -> Option<NonNull<u8>> {
        let pc = self.entry(pool);
        // Relaxed: only this thread writes `count` while it is held.
        let n = pc.count.load(Relaxed);
        if n == 0 {
            return None;
        }
        // SAFETY: the cache is held; `n > 0` so `list.next` is an object.
        let item = unsafe { (*pc.sentinel()).next };
        // SAFETY: `item` is a cached object of this held cache.
        unsafe { unlink_both(item.cast()) };
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
    #[inline]
    pub(crate) unsafe fn put(&self, pool: &Pool, obj: NonNull<u8>, budget: usize) {
        let pc = self.entry(pool);
        let item = obj.as_ptr().cast::<CachedItem>();
        // SAFETY: the cache is held; `item` is free memory of at least
        // MIN_OBJECT bytes (caller's contract), both sentinels are live.
        unsafe {
            push_front(pc.sentinel(), ptr::addr_of_mut!((*item).by_pool));
            push_front(self.lru.get(), ptr::addr_of_mut!((*item).by_lru));
        }
        pc.count.store(pc.count.load(Relaxed) + 1, Relaxed);
        let bytes = self.bytes.get() + pool.obj_size;
        self.bytes.set(bytes);
        if bytes > budget {
            self.evict_to(budget - budget / 8);
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
    let lru = tc.lru.get();
    while tc.bytes.get() > target {
        // SAFETY: the cache is held; the LRU is non-empty since bytes > 0.
        let oldest = unsafe { (*lru).prev };
        if oldest == lru {
            break;
        }
        // The oldest object of the thread is also the oldest of its pool, so
        // its `by_pool.next` is the pool's sentinel, the start of PoolCache.
        // SAFETY: `oldest` is the `by_lru` link of a cached item.
        let pc = unsafe { (*item_of_lru(oldest)).by_pool.next }.cast::<PoolCache>();
        // SAFETY: `pc` is an entry of this held cache.
        unsafe { evict_cluster(tc, &*pc, CLUSTER) };
    }
}

/// Unlinks up to `max` oldest objects of one pool and gives them to the
/// pool's shared cache as one cluster.
///
/// # Safety
/// The caller holds `tc`; `pc` is one of its entries.
unsafe fn evict_cluster(tc: &ThreadCache, pc: &PoolCache, max: usize) -> usize {
    let sentinel = pc.sentinel();
    let mut first: *mut Item = ptr::null_mut();
    let mut n = 0;
    while n < max {
        // SAFETY: the cache is held, the sentinel is live.
        let oldest = unsafe { (*sentinel).prev };
        if oldest == sentinel {
            break;
        }
        let item = oldest.cast::<CachedItem>();
        // SAFETY: `item` is cached here; once unlinked it is ours to
        // reuse as a shared-cache Item.
        unsafe {
            unlink_both(item);
            let it = item.cast::<Item>();
            (*it).down = first;
            first = it;
        }
        n += 1;
    }
    if let Some(first) = NonNull::new(first) {
        pc.count.store(pc.count.load(Relaxed) - n, Relaxed);
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
    let sentinel = pc.sentinel();
    let mut released = 0;
    loop {
        // SAFETY: the cache is held, the sentinel is live.
        let item = unsafe { (*sentinel).next };
        if item == sentinel {
            break;
        }
        // SAFETY: a cached object of the held cache; unlinked, it is ours.
        unsafe {
            unlink_both(item.cast());
            pool.release_to_os(tc.home, NonNull::new_unchecked(item.cast()));
        }
        released += 1;
    }
    tc.bytes.set(tc.bytes.get() - released * pool.obj_size);
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

/// The cached item whose `by_lru` link is `l`.
fn item_of_lru(l: *mut Link) -> *mut CachedItem {
    l.cast::<u8>()
        .wrapping_sub(core::mem::offset_of!(CachedItem, by_lru))
        .cast()
}

/// Links `node` right after the sentinel `head`.
///
/// # Safety
/// `head` is a live list; `node` is not in any list.
unsafe fn push_front(head: *mut Link, node: *mut Link) {
    // SAFETY: by the contract all three nodes are live and ours.
    unsafe {
        let first = (*head).next;
        (*node).next = first;
        (*node).prev = head;
        (*first).prev = node;
        (*head).next = node;
    }
}

/// Unlinks `node` from its list.
///
/// # Safety
/// `node` is in a live list.
unsafe fn unlink(node: *mut Link) {
    // SAFETY: the neighbours of a listed node are live nodes.
    unsafe {
        let (next, prev) = ((*node).next, (*node).prev);
        (*prev).next = next;
        (*next).prev = prev;
    }
}

/// Unlinks a cached item from both of its lists.
///
/// # Safety
/// `item` is cached in a held thread cache.
unsafe fn unlink_both(item: *mut CachedItem) {
    // SAFETY: forwarded: a cached item is in both lists.
    unsafe {
        unlink(ptr::addr_of_mut!((*item).by_pool));
        unlink(ptr::addr_of_mut!((*item).by_lru));
    }
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
        // SAFETY: the cache is held; `n > 0` so `list.prev` is an object.
        let item = unsafe { (*pc.sentinel()).prev };
        // SAFETY: `item` is a cached object of this held cache.
        unsafe { unlink_both(item.cast()) };
        pc.count.store(n - 1, Relaxed);
        self.bytes.set(self.bytes.get() - pool.obj_size);
        NonNull::new(item.cast())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::pool::Pool;
    use crate::registry::{self, Destroyed};
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
