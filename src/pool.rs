//! One pool's alloc and free: the path of an object through the thread
//! cache, the shared cache and the backing allocator, the debugging path,
//! and `pool_gc`'s release of what a pool keeps idle. The pool's data and
//! the paths out of the caches are in `head`.

use crate::backing::{self, Backend};
use crate::debug;
use crate::head::{self, clear_key, Handle, Pool};
use crate::options::{DBG_COLD_FIRST, DBG_FAIL, DBG_NO_CACHE, DBG_PROFILE};
use crate::os;
use crate::shared_cache::{Cluster, Item};
use crate::thread_cache::{self, Taken, ThreadCache};
use core::ptr::NonNull;
use core::sync::atomic::fence;
use core::sync::atomic::Ordering::{Relaxed, SeqCst};

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
                backing::release_object(obj, 0, Backend::Malloc);
            }
        }
    }
}

impl Handle {
    /// The hit path of [`Pool::alloc`] through the pool's handle: `None`
    /// sends the caller to the slow path (see `thread_cache`).
    #[inline(always)]
    pub fn alloc_hit(&self) -> Option<NonNull<u8>> {
        thread_cache::alloc_hit(self)
    }

    /// The hit path of [`Pool::free`] through the pool's handle: false if
    /// the object must take the slow path.
    ///
    /// # Safety
    /// As for [`Pool::free`] on the handle's pool, with `obj` aligned.
    #[inline(always)]
    pub(crate) unsafe fn free_hit(&self, obj: NonNull<u8>) -> bool {
        // SAFETY: forwarded.
        unsafe { thread_cache::free_hit(self, obj) }
    }
}

impl Pool {
    /// One object: the newest in this thread's cache, else a cluster from
    /// the shared cache, else a new one. On failure, runs `pool_gc` and
    /// tries once more, then counts a failure.
    ///
    /// Counters: cached or shared drop, or allocated grows; used grows.
    #[inline(always)]
    pub fn alloc(&self) -> Option<NonNull<u8>> {
        self.alloc_from(0)
    }

    /// The hit path of [`Pool::alloc`] alone (see `thread_cache`): `None`
    /// sends the caller to [`Pool::alloc`].
    #[inline(always)]
    pub fn alloc_hit(&self) -> Option<NonNull<u8>> {
        thread_cache::alloc_hit(self.handle)
    }

    /// [`Pool::alloc`] for a call made from the return address `caller`
    /// (kept by the `caller` debugging option).
    #[inline(always)]
    pub fn alloc_from(&self, caller: usize) -> Option<NonNull<u8>> {
        thread_cache::alloc_hit(self.handle).or_else(|| self.alloc_slow(caller))
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
            Some(tc) => match tc.take(self) {
                Taken::Object(p) => Some(p),
                // `take` looked in the shared cache already.
                Taken::SharedEmpty => self.alloc_from_os(tc.home),
                // Objects too large for the thread cache come from the
                // shared cache here, from this CPU's bucket first, where
                // `free_object` put what this CPU freed last (LIFO: the
                // object still in its caches).
                Taken::NotServed => self
                    .take_shared(os::current_cpu())
                    .or_else(|| self.alloc_from_os(tc.home)),
            },
            None => self.take_shared(0).or_else(|| self.alloc_from_os(0)),
        };
        let p = p.or_else(|| self.alloc_after_gc())?;
        // SAFETY: an object of this pool, ours to hand out.
        unsafe { clear_key(p.as_ptr()) };
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
        head::gc_all_pools();
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
        let rest = unsafe { Item::down(first.as_ptr()) };
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
        let p = backing::obtain_object(self.alloc_size, self.backend, home)?;
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
        let p = backing::obtain_object(self.alloc_size, self.backend, home);
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
        if live & DBG_FAIL != 0 && backing::injected_failure() {
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
            Some(tc) => tc.take(self).object(),
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
        unsafe { clear_key(base.as_ptr()) };
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
        if !unsafe { thread_cache::free_hit(self.handle, obj) } {
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
            head::set_key(self, base);
            Item::set_down(item.as_ptr(), core::ptr::null_mut());
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

    /// Aborts, naming the pointer and the pool, if the caller's block
    /// `user` of a pool on spans is not the start of an object of its
    /// tag's spans (an invalid free: inside an object, past one, or not
    /// ours), by the region map. For the C API's `pool_free` past its hit
    /// path (the LD_PRELOAD malloc looks every pointer up already).
    pub(crate) fn check_invalid_free(&self, user: NonNull<u8>) {
        if let Backend::Span(tag) = self.backend {
            let base = user.as_ptr().wrapping_sub(self.layout.user);
            if crate::span::owner(base) != (crate::span::Owner::Span { tag }) {
                // The message adds the parts in front back: give it the base.
                debug::invalid_free(self, NonNull::new(base).unwrap_or(user));
            }
        }
    }

    /// Aborts if `obj` carries this pool's key (a double free).
    ///
    /// # Safety
    /// `obj` is an object of this pool whose key word was initialised.
    #[inline]
    unsafe fn check_not_free(&self, obj: NonNull<u8>) {
        // SAFETY: per the contract.
        if unsafe { head::has_key(self, obj) } {
            debug::double_free(self, obj);
        }
    }

    /// Aborts, naming the object and the pool, if the caller's block `obj`
    /// is free (its object carries the pool's key): for a caller that keeps
    /// a block without freeing it, as the LD_PRELOAD malloc's `realloc` in
    /// place does, so that a `realloc` after `free` is caught as a double
    /// free. Pools whose objects carry debugging parts in front are left to
    /// their own checks on free.
    ///
    /// # Safety
    /// `obj` is the start of an object of this pool, live or free, whose
    /// key word was initialised (every object handed out at least once).
    pub unsafe fn abort_if_free(&self, obj: NonNull<u8>) {
        if self.layout.user == 0 {
            // SAFETY: per the contract.
            unsafe { self.check_not_free(obj) };
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
            head::set_key(self, obj);
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
        unsafe { Item::set_down(item.as_ptr(), core::ptr::null_mut()) };
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
                        Item::set_down(i.as_ptr(), keep);
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
        if self.backend != Backend::Malloc {
            // SAFETY: forwarded (caller's contract).
            return unsafe { self.release_to_os(0, obj) };
        }
        self.before_release(obj);
        // SAFETY: the object is ours (caller); a malloc block of at least
        // MIN_OBJECT bytes holds the link in its first word.
        unsafe { obj.as_ptr().cast::<*mut u8>().write(later.0) };
        later.0 = obj.as_ptr();
        self.shared.count_allocated(0, -1);
    }
}
