//! One pool: its object size, flags and counters, and the alloc/free path
//! through thread cache, shared cache and backing allocator.

use crate::debug::{self, Layout};
use crate::lifecycle::{Lifecycle, Unpinned};
use crate::options::{
    SharedMode, DBG_COLD_FIRST, DBG_FAIL, DBG_NO_CACHE, DBG_NO_GLOBAL, DBG_PROFILE, DBG_RUNTIME,
};
use crate::shared_cache::{Cluster, Item, SharedCache};
use crate::thread_cache::{self, ThreadCache, MIN_OBJECT};
use crate::{options, os, registry};
use core::cell::Cell;
use core::ffi::CStr;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{Relaxed, Release, SeqCst};
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize};

/// May be merged with another shareable pool of the same rounded size.
pub const POOL_F_SHARED: u32 = 1;
/// Do not round the object size up to a multiple of 16.
pub const POOL_F_EXACT: u32 = 2;
/// Every flag bit `pool_create` knows.
pub(crate) const KNOWN_FLAGS: u32 = POOL_F_SHARED | POOL_F_EXACT;

/// Largest object size a pool serves.
pub const POOL_MAX_SIZE: usize = 1 << 30;

/// `magic` of a live pool; anything else is a destroyed or foreign head.
const LIVE: u32 = 0x706f_6f6c; // "pool"
const DEAD: u32 = 0x6465_6164; // "dead"
/// `magic` of a dead head on the registry's free list.
const FREE: u32 = 0x6672_6565; // "free"

/// A pool of objects of one size: the opaque handle pool_create returns.
//
// Heads live in metadata memory and are recycled, never released, so a
// stale handle still reads a DEAD magic until its head is reused, which the
// registry does only once no object and no thread-cache entry of the dead
// pool is left.
pub struct Pool {
    /// What the hit path compares with a thread-cache entry's key: `key`
    /// while the pool is live and has no debugging flags, `key | 1`
    /// otherwise, which no entry holds (see `thread_cache`).
    pub(crate) stamp: AtomicU64,
    /// Byte offset of this pool's entry in every thread cache's table.
    pub(crate) entry_off: u32,
    magic: AtomicU32,
    /// This incarnation's random key (bit 0 clear, never 0): bound entries
    /// hold it, and so does every free object of the pool.
    pub(crate) key: u64,
    /// Live, dead or free, and the thread-cache entries that pin the head.
    life: Lifecycle,
    /// Index of this pool in every thread cache's table.
    pub(crate) slot: usize,
    /// Object size as the caller sees it (rounded unless POOL_F_EXACT).
    pub(crate) size: usize,
    /// Bytes an object counts for in the thread caches' budget: `size`, at
    /// least `MIN_OBJECT` (the debugging parts are not counted, so that
    /// debugging options do not change what the caches hold).
    pub(crate) obj_size: usize,
    /// Bytes obtained per object from the backing allocator: `obj_size`
    /// plus the debugging parts of `layout`.
    pub(crate) alloc_size: usize,
    pub(crate) flags: u32,
    /// Debugging flags (`options::DBG_*`), fixed at creation: the layout
    /// and what the debug path does to each object. A pool with any sends
    /// alloc and free to `alloc_debug` / `free_debug` (through `debug_live`).
    pub(crate) debug: u32,
    /// `debug` plus the bits switched on while the pool lives (`DBG_FAIL`,
    /// `DBG_PROFILE`, see [`Pool::enable_debug`]); anything but 0 sends
    /// alloc and free to the debug path (and sets bit 0 of `stamp`, which
    /// is what the hit path tests).
    pub(crate) debug_live: AtomicU32,
    /// Where an object's parts are (see `debug`); fixed at creation.
    pub(crate) layout: Layout,
    /// The byte `poison` fills new allocations with.
    pub(crate) poison: u8,
    /// Hard cap on `allocated` (0: none), `pool_set_limit`.
    pub(crate) limit: AtomicUsize,
    /// Fills so far, to vary the `integrity` pattern.
    pub(crate) pattern: AtomicUsize,
    /// Handles given out by `pool_create` (merging adds one).
    pub(crate) users: AtomicU32,
    /// Idle objects `pool_gc` leaves in place.
    pub(crate) minavail: AtomicUsize,
    /// Allocations that returned NULL.
    pub(crate) failed: AtomicUsize,
    /// The shared cache's buckets, whichever variant runs over them.
    pub(crate) shared: SharedCache,
    /// Where objects come from; fixed at creation.
    pub(crate) backend: os::Backend,
    /// The caller's name, copied; owned by the registry.
    pub(crate) name: Cell<Option<NonNull<libc::c_char>>>,
    /// The other names the pool was merged under, comma-separated (for
    /// `pool_dump`); owned by the registry, written under its lock.
    pub(crate) also: Cell<Option<NonNull<libc::c_char>>>,
    /// The registry's list of pools, or of free heads (under its lock).
    pub(crate) reg_next: Cell<*mut Pool>,
}

// SAFETY: the `Cell` fields (`name`, `also`, `reg_next`) are only written under the
// registry lock, while the pool is not live (name) or only by the registry
// (list links); everything else is atomic or immutable after creation.
unsafe impl Sync for Pool {}
// SAFETY: as above; a Pool holds no thread-bound state.
unsafe impl Send for Pool {}

/// A pin a call holds on its pool (see `lifecycle`), dropped at its end.
pub(crate) struct Pin<'a>(&'a Pool);

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.0.unbind();
    }
}

/// Point-in-time counters of a pool (exact when no call is in flight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub size: usize,
    pub users: u32,
    pub allocated: usize,
    pub used: usize,
    pub cached: usize,
    pub shared: usize,
    pub failed: usize,
    pub minavail: usize,
}

/// Objects of pools backed by malloc that a holder of the registry lock took
/// out of their pools (counted as released), chained through their first
/// word, to be given to `free` once the lock is released: under an
/// LD_PRELOAD malloc built on these pools (`libpools_malloc.so`), `free`
/// may create the thread's cache, which takes that lock.
pub(crate) struct MallocFrees(*mut u8);

impl MallocFrees {
    pub(crate) const fn new() -> Self {
        MallocFrees(core::ptr::null_mut())
    }

    /// Frees every object (call it without the registry lock).
    pub(crate) fn release_all(self) {
        let mut cur = self.0;
        while let Some(obj) = NonNull::new(cur) {
            // SAFETY: each object was chained by `release_or_defer`, which
            // gave it up: read the link, then free it once.
            unsafe {
                cur = obj.as_ptr().cast::<*mut u8>().read();
                os::release_object(obj, 0, os::Backend::Malloc);
            }
        }
    }
}

impl Pool {
    /// A live, empty pool in slot `slot`, its objects from `backend`, with
    /// the debugging flags `debug` (`poison` the poison byte).
    pub(crate) fn new(
        slot: usize,
        size: usize,
        flags: u32,
        backend: os::Backend,
        debug: u32,
        poison: u8,
        key: u64,
    ) -> Pool {
        let layout = Layout::new(size, debug);
        debug_assert!(layout.total >= size.max(MIN_OBJECT));
        debug_assert!(key != 0 && key & 1 == 0);
        Pool {
            stamp: AtomicU64::new(if debug | options::runtime_debug() == 0 {
                key
            } else {
                key | 1
            }),
            entry_off: thread_cache::entry_offset(slot),
            magic: AtomicU32::new(LIVE),
            key,
            life: Lifecycle::new(),
            slot,
            size,
            obj_size: size.max(MIN_OBJECT),
            alloc_size: layout.total,
            flags,
            debug,
            debug_live: AtomicU32::new(debug | options::runtime_debug()),
            layout,
            poison,
            limit: AtomicUsize::new(0),
            pattern: AtomicUsize::new(0),
            users: AtomicU32::new(1),
            minavail: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            shared: SharedCache::new(),
            backend,
            name: Cell::new(None),
            also: Cell::new(None),
            reg_next: Cell::new(core::ptr::null_mut()),
        }
    }

    /// The pool behind a C handle, if it is a live pool.
    ///
    /// # Safety
    /// `p` is null or points to readable memory of a `Pool` (a handle from
    /// `pool_create`, live or destroyed: heads are never unmapped).
    #[inline]
    pub(crate) unsafe fn from_handle<'a>(p: *const Pool) -> Option<&'a Pool> {
        if p.is_null() || !p.is_aligned() {
            return None;
        }
        // SAFETY: non-null and aligned, readable by the caller's contract.
        let pool = unsafe { &*p };
        // Relaxed: the handle reached the caller through whatever
        // synchronisation published it; magic is only a misuse check.
        (pool.magic.load(Relaxed) == LIVE).then_some(pool)
    }

    /// Whether a handle that is not live is a destroyed pool (rather than a
    /// recycled head or something else), for the message of a free into it.
    ///
    /// # Safety
    /// As for [`Pool::from_handle`], and `p` is not null.
    pub(crate) unsafe fn is_destroyed_handle(p: *const Pool) -> bool {
        // SAFETY: per the contract.
        p.is_aligned() && unsafe { (*p).magic.load(Relaxed) } == DEAD
    }

    /// Marks the head destroyed, so later calls with it fail with EINVAL
    /// and no thread binds an entry to it any more (see `lifecycle`).
    pub(crate) fn kill(&self) {
        // Relaxed: the hit path's and the handle check's hints; the
        // handshake with the thread caches is the lifecycle word.
        self.stamp.store(self.key | 1, Relaxed);
        self.magic.store(DEAD, Relaxed);
        self.life.kill();
    }

    /// Whether the pool was destroyed.
    pub(crate) fn is_dead(&self) -> bool {
        self.life.is_dead()
    }

    /// Sends this pool's calls to the debug path from now on, with the
    /// run-time bits `bits` (`DBG_FAIL`, `DBG_PROFILE`) set for it there:
    /// the stamp's bit 0 makes every hit miss (see `thread_cache`). The only
    /// way to switch debugging on for a live pool: these bits change no
    /// layout, so objects allocated before and freed after (or the reverse)
    /// need nothing. Relaxed: a call that misses the change for a moment
    /// takes the plain path, which is correct for these bits.
    pub(crate) fn enable_debug(&self, bits: u32) {
        debug_assert_eq!(bits & !DBG_RUNTIME, 0, "not a run-time bit");
        self.debug_live.fetch_or(bits & DBG_RUNTIME, Relaxed);
        self.stamp.fetch_or(1, Relaxed);
    }

    /// Pins the pool for one call, or `None` if it is dead.
    pub(crate) fn pin(&self) -> Option<Pin<'_>> {
        self.bind().then_some(Pin(self))
    }

    /// A thread-cache entry binds to (pins) this pool; false, and no pin,
    /// if the pool is dead.
    pub(crate) fn bind(&self) -> bool {
        match self.life.bind() {
            Ok(()) => true,
            Err(u) => {
                self.after_unpin(u);
                false
            }
        }
    }

    /// A thread-cache entry unbinds, after giving its objects back.
    pub(crate) fn unbind(&self) {
        self.after_unpin(self.life.unbind());
    }

    /// The last pin of a dead pool is gone: what its entries put into the
    /// shared cache after the destroyer's flush goes back, and the head may
    /// be recycled.
    fn after_unpin(&self, u: Unpinned) {
        if u == Unpinned::LastOfDead {
            self.flush();
            registry::recycle(self);
        }
    }

    /// Claims a dead head without pins for the free list (the registry,
    /// under its lock, once no object is out).
    pub(crate) fn claim_free(&self) -> bool {
        let free = self.life.claim_free();
        if free {
            self.magic.store(FREE, Relaxed);
        }
        free
    }

    /// Marks a recycled head (or a new one) live.
    pub(crate) fn revive(&self) {
        self.life.revive();
        self.magic.store(LIVE, Release);
    }

    /// The other names of a merged pool, comma-separated, or "".
    pub(crate) fn also(&self) -> &CStr {
        match self.also.get() {
            // SAFETY: the registry keeps the string alive as long as the pool
            // and replaces it only under its lock, which dump holds.
            Some(n) => unsafe { CStr::from_ptr(n.as_ptr()) },
            None => c"",
        }
    }

    pub(crate) fn name(&self) -> &CStr {
        match self.name.get() {
            // SAFETY: the registry keeps the copy alive as long as the pool.
            Some(n) => unsafe { CStr::from_ptr(n.as_ptr()) },
            None => c"",
        }
    }

    /// One object: the newest in this thread's cache, else a cluster from
    /// the shared cache, else a new one. On failure, runs `pool_gc` and
    /// tries once more, then counts a failure.
    ///
    /// Counters: cached or shared drop, or allocated grows; used grows.
    #[inline(always)]
    pub fn alloc(&self) -> Option<NonNull<u8>> {
        self.alloc_from(0)
    }

    /// The hit path of [`Pool::alloc`] alone (see `thread_cache`).
    #[inline(always)]
    pub(crate) fn alloc_hit(&self) -> Option<NonNull<u8>> {
        thread_cache::alloc_hit(self)
    }

    /// The hit path of [`Pool::free`] alone: false if the object must take
    /// the slow path.
    ///
    /// # Safety
    /// As for [`Pool::free`], with `obj` aligned.
    #[inline(always)]
    pub(crate) unsafe fn free_hit(&self, obj: NonNull<u8>) -> bool {
        // SAFETY: forwarded.
        unsafe { thread_cache::free_hit(self, obj) }
    }

    /// [`Pool::alloc`] for a call made from the return address `caller`
    /// (kept by the `caller` debugging option).
    #[inline(always)]
    pub fn alloc_from(&self, caller: usize) -> Option<NonNull<u8>> {
        thread_cache::alloc_hit(self).or_else(|| self.alloc_slow(caller))
    }

    /// [`Pool::alloc_from`] past the hit path: a debugging pool, no thread
    /// cache yet, or no object of this pool above the low water.
    #[cold]
    #[inline(never)]
    pub(crate) fn alloc_slow(&self, caller: usize) -> Option<NonNull<u8>> {
        if self.debug_live.load(Relaxed) == 0 {
            // The common slow case, a pop below the low water: the bound
            // entry pins the pool, nothing more to do.
            if let Some(p) = ThreadCache::existing().and_then(|tc| tc.take_cached(self)) {
                return Some(p);
            }
        }
        // Everything else may take objects from the shared cache or the
        // system: pinned, so that a destroy racing with this call (the
        // caller's bug) cannot recycle the head before the object is counted.
        let _pin = self.pin()?;
        if self.debug_live.load(Relaxed) != 0 {
            return self.alloc_debug(caller);
        }
        let p = match ThreadCache::current() {
            // `take` refills from the shared cache when the entry is bound;
            // objects too large for the thread cache come from it here,
            // from this CPU's bucket first, where `free_object` put what
            // this CPU freed last (LIFO: the object still in its caches).
            Some(tc) => tc
                .take(self)
                .or_else(|| self.take_shared(os::current_cpu()))
                .or_else(|| self.alloc_from_os(tc.home)),
            None => self.take_shared(0).or_else(|| self.alloc_from_os(0)),
        };
        let p = p.or_else(|| self.alloc_after_gc())?;
        // SAFETY: an object of this pool, ours to hand out.
        unsafe { thread_cache::clear_key(p.as_ptr()) };
        Some(p)
    }

    #[cold]
    fn alloc_after_gc(&self) -> Option<NonNull<u8>> {
        let limit = self.limit.load(Relaxed);
        if limit != 0 && self.shared.allocated() >= limit {
            // At its cap: a gc would not make room in this pool.
            self.failed.fetch_add(1, Relaxed);
            return None;
        }
        registry::gc();
        let p = self.alloc_from_os(0);
        if p.is_none() {
            self.failed.fetch_add(1, Relaxed);
        }
        p
    }

    /// One object from the shared cache with no thread cache at hand: the
    /// rest of its cluster goes back.
    fn take_shared(&self, home: usize) -> Option<NonNull<u8>> {
        let cluster = self.take_from_shared(home)?;
        let first = cluster.first;
        // SAFETY: the cluster is ours.
        let rest = unsafe { (*first.as_ptr()).down };
        if let Some(rest) = NonNull::new(rest) {
            self.release_cluster(
                home,
                Cluster {
                    first: rest,
                    len: cluster.len - 1,
                },
            );
        }
        Some(first.cast())
    }

    /// A new object from the backing allocator.
    ///
    /// Counter: allocated grows.
    fn alloc_from_os(&self, home: usize) -> Option<NonNull<u8>> {
        // Relaxed: a setting; an allocation racing with pool_set_limit may
        // see either value.
        let limit = self.limit.load(Relaxed);
        if limit != 0 {
            return self.alloc_within_limit(home, limit);
        }
        let p = os::obtain_object(self.alloc_size, self.backend)?;
        self.shared.count_allocated(home, 1);
        Some(p)
    }

    /// A new object if `allocated` stays at most `limit`: counts it first,
    /// then checks the sum, and takes the count back when over.
    ///
    /// Counter: allocated grows (or stays).
    #[cold]
    fn alloc_within_limit(&self, home: usize, limit: usize) -> Option<NonNull<u8>> {
        self.shared.count_allocated(home, 1);
        // SeqCst fence between our increment and our reading of the sum: of
        // two racing allocations, the one whose fence comes second sees the
        // other's increment, so they cannot both pass a cap that has room
        // for one (both may fail, a spurious ENOMEM at the boundary).
        fence(SeqCst);
        if self.shared.allocated() > limit {
            self.shared.count_allocated(home, -1);
            return None;
        }
        let p = os::obtain_object(self.alloc_size, self.backend);
        if p.is_none() {
            self.shared.count_allocated(home, -1);
        }
        p
    }

    /// The alloc path of a pool with debugging flags: first the `fail=N`
    /// draw (as HAProxy's, before any cache: a refused call returns `None`
    /// and counts in `failed`), then the same layers, with `cold-first`,
    /// `no-cache` and `no-global` applied, the object checked and prepared
    /// by `debug::on_alloc`, and the call recorded in the memory profile.
    #[cold]
    #[inline(never)]
    fn alloc_debug(&self, caller: usize) -> Option<NonNull<u8>> {
        let live = self.debug_live.load(Relaxed);
        if live & DBG_FAIL != 0 && os::injected_failure() {
            self.failed.fetch_add(1, Relaxed);
            return None;
        }
        let p = self.alloc_debug_object(caller)?;
        if live & DBG_PROFILE != 0 {
            crate::profile::on_alloc(self.slot, self.size, caller);
        }
        Some(p)
    }

    /// [`Pool::alloc_debug`] past the failure draw.
    fn alloc_debug_object(&self, caller: usize) -> Option<NonNull<u8>> {
        let tc = ThreadCache::current();
        let home = tc.map_or(0, |tc| tc.home);
        let cached = match tc.filter(|_| self.debug & DBG_NO_CACHE == 0) {
            Some(tc) if self.debug & DBG_COLD_FIRST != 0 => tc.take_oldest(self),
            Some(tc) => tc.take(self),
            None => None,
        }
        .or_else(|| self.take_shared(home));
        let (base, from_cache) = match cached {
            Some(p) => (p, true),
            None => (
                self.alloc_from_os(home).or_else(|| self.alloc_after_gc())?,
                false,
            ),
        };
        // SAFETY: `base` is an object of this pool that we own.
        unsafe { thread_cache::clear_key(base.as_ptr()) };
        // SAFETY: as above.
        Some(unsafe { debug::on_alloc(self, base, from_cache, caller) })
    }

    /// Takes back an object: into this thread's cache, or straight into the
    /// shared cache when it is too large to be worth caching per thread.
    /// Aborts, naming the object and the pool, when the object already
    /// carries the pool's key, which only a free object does: a double free.
    ///
    /// Counters: used drops; cached or shared grows (or allocated drops).
    ///
    /// # Safety
    /// `obj` came from `alloc` of this pool and is not used any more.
    #[inline(always)]
    pub unsafe fn free(&self, obj: NonNull<u8>) {
        // SAFETY: forwarded.
        unsafe { self.free_from(obj, 0) }
    }

    /// [`Pool::free`] for a call made from the return address `caller`.
    ///
    /// # Safety
    /// As for [`Pool::free`].
    #[inline(always)]
    pub unsafe fn free_from(&self, obj: NonNull<u8>, caller: usize) {
        // SAFETY: forwarded.
        if !unsafe { thread_cache::free_hit(self, obj) } {
            // SAFETY: forwarded. A dead pool's object stays the caller's.
            let _ = unsafe { self.free_slow(obj, caller) };
        }
    }

    /// [`Pool::free_from`] past the hit path.
    ///
    /// # Safety
    /// As for [`Pool::free`].
    #[cold]
    #[inline(never)]
    ///
    /// Returns false, leaving the object to the caller, if the pool died
    /// (a destroy racing with this call: the caller's bug).
    #[must_use]
    pub(crate) unsafe fn free_slow(&self, obj: NonNull<u8>, caller: usize) -> bool {
        // Pinned, as in `alloc_slow`.
        let Some(_pin) = self.pin() else {
            return false;
        };
        if self.debug_live.load(Relaxed) != 0 {
            // SAFETY: forwarded.
            unsafe { self.free_debug(obj, caller) };
        } else {
            // SAFETY: forwarded.
            unsafe { self.free_object(obj) }
        }
        true
    }

    /// The free path of a pool with debugging flags: `debug::on_free`
    /// checks and prepares the object, then it goes to the thread cache, or
    /// with `no-cache` to the shared cache (or to the system).
    ///
    /// # Safety
    /// As for [`Pool::free`].
    #[cold]
    #[inline(never)]
    unsafe fn free_debug(&self, obj: NonNull<u8>, caller: usize) {
        if self.debug_live.load(Relaxed) & DBG_PROFILE != 0 {
            crate::profile::on_free(self.slot, self.size, caller);
        }
        // SAFETY: the caller gives `obj` up. It came from `alloc_debug`, or
        // (a pool with `debug == 0`, on this path through the run-time bits
        // only) from the plain path: the same layout, which on_free leaves
        // alone when `debug == 0`.
        let base = unsafe { debug::on_free(self, obj, caller) };
        if self.debug & DBG_NO_CACHE == 0 {
            // SAFETY: `base` is an object of this pool nobody uses.
            return unsafe { self.free_object(base) };
        }
        // SAFETY: as above.
        unsafe { self.check_not_free(base) };
        let item = base.cast::<Item>();
        // SAFETY: the object is ours; a lone object is a cluster of one.
        unsafe {
            thread_cache::set_key(self, base);
            (*item.as_ptr()).down = core::ptr::null_mut();
        }
        let home = ThreadCache::existing().map_or(0, |tc| tc.home);
        self.release_from_cache(
            home,
            Cluster {
                first: item,
                len: 1,
            },
        );
    }

    /// Aborts if `obj` carries this pool's key (a double free).
    ///
    /// # Safety
    /// `obj` is an object of this pool whose key word was initialised.
    #[inline]
    unsafe fn check_not_free(&self, obj: NonNull<u8>) {
        // SAFETY: per the contract.
        if unsafe { thread_cache::has_key(self, obj) } {
            debug::double_free(self, obj);
        }
    }

    /// Puts an object (as the caches hold it) into this thread's cache, or
    /// into the shared cache when it is too large to cache per thread.
    ///
    /// # Safety
    /// As for [`Pool::free`].
    unsafe fn free_object(&self, obj: NonNull<u8>) {
        // SAFETY: forwarded.
        unsafe {
            self.check_not_free(obj);
            thread_cache::set_key(self, obj);
        }
        let tc = ThreadCache::current();
        if let Some(tc) = tc {
            // SAFETY: the caller gives `obj` up; it is of this pool.
            if unsafe { tc.put(self, obj) } {
                return;
            }
        }
        let item = obj.cast::<Item>();
        // SAFETY: the object is ours; a lone object is a cluster of one.
        unsafe { (*item.as_ptr()).down = core::ptr::null_mut() };
        // Into this CPU's bucket, whichever thread frees it: the next
        // thread on this CPU to take one (`alloc_slow`) gets it back while
        // it is still in this CPU's caches.
        self.release_from_cache(
            os::current_cpu(),
            Cluster {
                first: item,
                len: 1,
            },
        );
    }

    /// Gives a cluster that leaves a thread cache (or a free) to the shared
    /// cache, or to the system if the pool died. A thread cache that puts
    /// into a dying pool pins it (see `lifecycle`), so whatever it puts after
    /// the destroyer's flush is flushed when its last pin goes.
    pub(crate) fn release_from_cache(&self, home: usize, cluster: Cluster) {
        if self.is_dead() {
            // SAFETY: the cluster is ours; each object is released once.
            unsafe { cluster.for_each(|i| self.release_to_os(home, i.cast())) };
            return;
        }
        self.release_cluster(home, cluster);
    }

    /// Gives a cluster to the shared cache or, when it is switched off, back
    /// to the backing allocator.
    ///
    /// Counters: shared grows (or allocated drops).
    pub(crate) fn release_cluster(&self, home: usize, cluster: Cluster) {
        if self.debug & DBG_NO_GLOBAL != 0 {
            // SAFETY: the cluster is ours; each object is released once.
            unsafe { cluster.for_each(|i| self.release_to_os(home, i.cast())) };
            return;
        }
        match options::shared_mode() {
            SharedMode::Xchg => self.shared.put(home, cluster),
            SharedMode::None => {
                // SAFETY: the cluster is ours; each object is released once.
                unsafe { cluster.for_each(|i| self.release_to_os(home, i.cast())) };
            }
            legacy => self.shared.put_legacy(legacy, home, cluster),
        }
    }

    /// A cluster from the shared cache, starting at bucket `home`.
    ///
    /// Counter: shared drops by its length.
    pub(crate) fn take_from_shared(&self, home: usize) -> Option<Cluster> {
        if self.debug & DBG_NO_GLOBAL != 0 {
            return None;
        }
        match options::shared_mode() {
            SharedMode::Xchg => self.shared.take(home),
            SharedMode::None => None,
            legacy => self.shared.take_legacy(legacy, home),
        }
    }

    /// Like `take_from_shared`, for a caller that will free the objects.
    fn take_to_release(&self) -> Option<Cluster> {
        match options::shared_mode() {
            SharedMode::Xchg => self.shared.take(0),
            SharedMode::None => None,
            legacy => self.shared.take_legacy_to_release(legacy),
        }
    }

    /// Objects in the shared cache (exact at quiescence).
    pub(crate) fn shared_objects(&self) -> usize {
        self.shared.objects()
    }

    /// Returns one object to the backing allocator.
    ///
    /// Counter: allocated drops.
    ///
    /// # Safety
    /// `obj` is an object of this pool that nobody holds.
    pub(crate) unsafe fn release_to_os(&self, home: usize, obj: NonNull<u8>) {
        if self.debug != 0 {
            debug::before_release(self, obj);
        }
        // SAFETY: objects come from `os::obtain_object` with this size and
        // backend; the caller gives it up.
        unsafe { os::release_object(obj, self.alloc_size, self.backend) };
        self.shared.count_allocated(home, -1);
    }

    /// Returns every object of the shared cache to the backing allocator.
    ///
    /// Counters: shared drops to 0 (bar concurrent frees); allocated drops.
    pub fn flush(&self) {
        let release = |c: Cluster| {
            // SAFETY: the cluster left the shared cache: it is ours.
            unsafe { c.for_each(|i| self.release_to_os(0, i.cast())) }
        };
        match options::shared_mode() {
            SharedMode::Xchg => self.shared.take_all(release),
            SharedMode::None => {}
            legacy => self.shared.take_all_legacy(legacy, release),
        }
    }

    /// Releases shared objects while the pool keeps more than `minavail`
    /// idle (cached + shared) objects; those of a pool backed by malloc go
    /// to `later` instead, for the caller to free once it has released the
    /// registry lock (see [`MallocFrees`]).
    pub(crate) fn gc(&self, cached: usize, later: &mut MallocFrees) {
        let minavail = self.minavail.load(Relaxed);
        let mut idle = cached + self.shared_objects();
        while idle > minavail {
            let Some(cluster) = self.take_to_release() else {
                break;
            };
            let mut keep: *mut Item = core::ptr::null_mut();
            let mut kept = 0;
            // SAFETY: the cluster is ours; each object is either released
            // once or relinked into `keep` once.
            unsafe {
                cluster.for_each(|i| {
                    if idle > minavail {
                        self.release_or_defer(i.cast(), later);
                        idle -= 1;
                    } else {
                        (*i.as_ptr()).down = keep;
                        keep = i.as_ptr();
                        kept += 1;
                    }
                })
            };
            if let Some(first) = NonNull::new(keep) {
                self.release_cluster(0, Cluster { first, len: kept });
            }
        }
    }

    /// [`Pool::release_to_os`], except that an object of malloc is only
    /// counted as released and added to `later`.
    ///
    /// Counter: allocated drops.
    ///
    /// # Safety
    /// `obj` is an object of this pool that nobody holds.
    unsafe fn release_or_defer(&self, obj: NonNull<u8>, later: &mut MallocFrees) {
        if self.backend != os::Backend::Malloc {
            // SAFETY: forwarded (caller's contract).
            return unsafe { self.release_to_os(0, obj) };
        }
        if self.debug != 0 {
            debug::before_release(self, obj);
        }
        // SAFETY: the object is ours (caller); a malloc block of at least
        // MIN_OBJECT bytes holds the link in its first word.
        unsafe { obj.as_ptr().cast::<*mut u8>().write(later.0) };
        later.0 = obj.as_ptr();
        self.shared.count_allocated(0, -1);
    }

    /// Counters, given the objects all thread caches hold.
    pub(crate) fn stats(&self, cached: usize) -> Stats {
        let allocated = self.shared.allocated();
        let shared = self.shared_objects();
        Stats {
            size: self.size,
            users: self.users.load(Relaxed),
            allocated,
            // `used` is what is neither cached nor shared: no counter on the
            // hot path, exact at quiescence by construction of the others.
            used: allocated.saturating_sub(cached + shared),
            cached,
            shared,
            failed: self.failed.load(Relaxed),
            minavail: self.minavail.load(Relaxed),
        }
    }
}
