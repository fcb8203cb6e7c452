//! One pool: its object size, flags and counters, and the alloc/free path
//! through thread cache, shared cache and backing allocator.

use crate::legacy_cache::LegacyCache;
use crate::options::SharedMode;
use crate::shared_cache::{Cluster, Item, SharedCache};
use crate::thread_cache::{ThreadCache, MIN_OBJECT};
use crate::{options, os, registry};
use core::cell::Cell;
use core::ffi::CStr;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicU32, AtomicUsize};

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

/// A pool of objects of one size: the opaque handle pool_create returns.
//
// Heads live in memory from the backing allocator and are recycled, never
// released, so a stale handle still reads a DEAD magic (until its head is
// reused by a new pool).
pub struct Pool {
    magic: AtomicU32,
    /// Index of this pool in every thread cache's table.
    pub(crate) slot: usize,
    /// Object size as the caller sees it (rounded unless POOL_F_EXACT).
    pub(crate) size: usize,
    /// Bytes obtained per object: `size`, at least `MIN_OBJECT`.
    pub(crate) obj_size: usize,
    pub(crate) flags: u32,
    /// Handles given out by `pool_create` (merging adds one).
    pub(crate) users: AtomicU32,
    /// Idle objects `pool_gc` leaves in place.
    pub(crate) minavail: AtomicUsize,
    /// Allocations that returned NULL.
    pub(crate) failed: AtomicUsize,
    pub(crate) shared: SharedCache,
    /// The shared cache when a legacy variant is selected (`options`).
    legacy: LegacyCache,
    /// Where objects come from; fixed at creation.
    pub(crate) backend: os::Backend,
    /// The caller's name, copied; owned by the registry.
    pub(crate) name: Cell<Option<NonNull<libc::c_char>>>,
    /// The registry's list of pools, or of free heads (under its lock).
    pub(crate) reg_next: Cell<*mut Pool>,
}

// SAFETY: the `Cell` fields (`name`, `reg_next`) are only written under the
// registry lock, while the pool is not live (name) or only by the registry
// (list links); everything else is atomic or immutable after creation.
unsafe impl Sync for Pool {}
// SAFETY: as above; a Pool holds no thread-bound state.
unsafe impl Send for Pool {}

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

impl Pool {
    /// A live, empty pool in slot `slot`, its objects from `backend`.
    pub(crate) fn new(slot: usize, size: usize, flags: u32, backend: os::Backend) -> Pool {
        Pool {
            magic: AtomicU32::new(LIVE),
            slot,
            size,
            obj_size: size.max(MIN_OBJECT),
            flags,
            users: AtomicU32::new(1),
            minavail: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            shared: SharedCache::new(),
            legacy: LegacyCache::new(),
            backend,
            name: Cell::new(None),
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

    /// Marks the head destroyed, so later calls with it fail with EINVAL.
    pub(crate) fn kill(&self) {
        self.magic.store(DEAD, Relaxed);
    }

    /// Marks a recycled head live again.
    pub(crate) fn revive(&self) {
        self.magic.store(LIVE, Relaxed);
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
    #[inline]
    pub fn alloc(&self) -> Option<NonNull<u8>> {
        let p = match ThreadCache::current() {
            Some(tc) => {
                let held = tc.enter();
                held.take(self)
                    .or_else(|| self.refill(&held))
                    .or_else(|| self.alloc_from_os(tc.home))
            }
            None => self.take_shared(0).or_else(|| self.alloc_from_os(0)),
        };
        p.or_else(|| self.alloc_after_gc())
    }

    #[cold]
    fn alloc_after_gc(&self) -> Option<NonNull<u8>> {
        registry::gc();
        let p = self.alloc_from_os(0);
        if p.is_none() {
            self.failed.fetch_add(1, Relaxed);
        }
        p
    }

    /// Takes a cluster from the shared cache: returns one object and keeps
    /// the rest in the thread cache.
    #[cold]
    fn refill(&self, held: &crate::thread_cache::Held<'_>) -> Option<NonNull<u8>> {
        let cluster = self.take_from_shared(held.home)?;
        let first = cluster.first;
        // SAFETY: `first` is the head of a cluster we own.
        let rest = unsafe { (*first.as_ptr()).down };
        if let Some(rest) = NonNull::new(rest) {
            let rest = Cluster {
                first: rest,
                len: cluster.len - 1,
            };
            // SAFETY: the rest of the cluster is ours and of this pool.
            unsafe { held.put_cluster(self, rest) };
        }
        Some(first.cast())
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
        let p = os::obtain_object(self.obj_size, self.backend)?;
        self.shared.count_allocated(home, 1);
        Some(p)
    }

    /// Takes back an object: into this thread's cache, or straight into the
    /// shared cache when it is too large to be worth caching per thread.
    ///
    /// Counters: used drops; cached or shared grows (or allocated drops).
    ///
    /// # Safety
    /// `obj` came from `alloc` of this pool and is not used any more.
    #[inline]
    pub unsafe fn free(&self, obj: NonNull<u8>) {
        let budget = options::cache_size();
        let tc = ThreadCache::current();
        if let Some(tc) = tc.filter(|_| self.obj_size <= budget / 8) {
            let held = tc.enter();
            // SAFETY: the caller gives `obj` up; it is of this pool.
            unsafe { held.put(self, obj, budget) };
            return;
        }
        let item = obj.cast::<Item>();
        // SAFETY: the object is ours; a lone object is a cluster of one.
        unsafe { (*item.as_ptr()).down = core::ptr::null_mut() };
        self.release_cluster(
            tc.map_or(0, |tc| tc.home),
            Cluster {
                first: item,
                len: 1,
            },
        );
    }

    /// Gives a cluster to the shared cache or, when it is switched off, back
    /// to the backing allocator.
    ///
    /// Counters: shared grows (or allocated drops).
    pub(crate) fn release_cluster(&self, home: usize, cluster: Cluster) {
        match options::shared_mode() {
            SharedMode::Xchg => self.shared.put(home, cluster),
            SharedMode::None => {
                // SAFETY: the cluster is ours; each object is released once.
                unsafe { cluster.for_each(|i| self.release_to_os(home, i.cast())) };
            }
            legacy => self.legacy.put(legacy, cluster),
        }
    }

    /// A cluster from the shared cache, starting at bucket `home`.
    ///
    /// Counter: shared drops by its length.
    fn take_from_shared(&self, home: usize) -> Option<Cluster> {
        match options::shared_mode() {
            SharedMode::Xchg => self.shared.take(home),
            SharedMode::None => None,
            legacy => self.legacy.take(legacy),
        }
    }

    /// Like `take_from_shared`, for a caller that will free the objects.
    fn take_to_release(&self) -> Option<Cluster> {
        match options::shared_mode() {
            SharedMode::Xchg => self.shared.take(0),
            SharedMode::None => None,
            legacy => self.legacy.take_to_release(legacy),
        }
    }

    /// Objects in the shared cache (exact at quiescence).
    fn shared_objects(&self) -> usize {
        self.shared.objects() + self.legacy.objects()
    }

    /// Returns one object to the backing allocator.
    ///
    /// Counter: allocated drops.
    ///
    /// # Safety
    /// `obj` is an object of this pool that nobody holds.
    pub(crate) unsafe fn release_to_os(&self, home: usize, obj: NonNull<u8>) {
        // SAFETY: objects come from `os::obtain_object` with this size and
        // backend; the caller gives it up.
        unsafe { os::release_object(obj, self.obj_size, self.backend) };
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
            legacy => self.legacy.take_all(legacy, release),
        }
    }

    /// Releases shared objects while the pool keeps more than `minavail`
    /// idle (cached + shared) objects.
    pub(crate) fn gc(&self, cached: usize) {
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
                        self.release_to_os(0, i.cast());
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
