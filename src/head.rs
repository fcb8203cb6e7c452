//! The pool head: a pool's data (sizes, flags, key, counters, shared
//! cache, backend), its lifecycle, what a free object of it carries, and
//! the paths by which objects leave the caches (to the shared cache or the
//! backing allocator). Everything above the shared cache that handles a
//! pool's objects knows this type; the alloc and free orchestration is in
//! `pool`, the list of pools in `registry`.

use crate::backing::{self, Backend};
use crate::checkers;
use crate::lifecycle::{Lifecycle, Unpinned};
use crate::options::{
    self, SharedMode, DBG_ASAN, DBG_BACKUP, DBG_CALLER, DBG_MEMCHECK, DBG_NO_GLOBAL, DBG_RUNTIME,
    DBG_TAG,
};
use crate::shared_cache::{Cluster, SharedCache};
use crate::{os, span};
use core::cell::Cell;
use core::ffi::CStr;
use core::mem::size_of;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::{Relaxed, Release};
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};

/// May be merged with another shareable pool of the same rounded size.
pub const POOL_F_SHARED: u32 = 1;
/// Do not round the object size up to a multiple of 16.
pub const POOL_F_EXACT: u32 = 2;
/// Every flag bit `pool_create` knows.
pub(crate) const KNOWN_FLAGS: u32 = POOL_F_SHARED | POOL_F_EXACT;

/// Largest object size a pool serves.
pub const POOL_MAX_SIZE: usize = 1 << 30;

/// Where a free object holds its pool's key: after the two links the shared
/// cache keeps at its start (`Item`), so that every free state keeps it.
pub(crate) const KEY_OFFSET: usize = 2 * size_of::<usize>();

/// Where a free object whose pages were given back (see
/// `thread_cache::evict`) holds [`DISCARDED`]: after the key, inside
/// [`MIN_OBJECT`], which no free state uses otherwise.
const DISCARD_OFFSET: usize = KEY_OFFSET + 8;
const DISCARDED: u64 = 0x6469_7363_6172_6465; // "discarde"
const _: () = assert!(DISCARD_OFFSET + 8 <= MIN_OBJECT);

/// Marks `obj`, a free object whose pages past its first [`MIN_OBJECT`]
/// bytes are being given back.
///
/// # Safety
/// `obj` is a free object (of at least MIN_OBJECT bytes) that the caller
/// owns.
pub(crate) unsafe fn mark_discarded(obj: *mut u8) {
    // SAFETY: inside the object's first MIN_OBJECT bytes, which are ours.
    unsafe { obj.add(DISCARD_OFFSET).cast::<u64>().write(DISCARDED) };
}

/// Whether the free object `obj` carries the mark of [`mark_discarded`]
/// (or, by chance, bytes that a user left there and read the same).
///
/// # Safety
/// `obj` is a free object (of at least MIN_OBJECT bytes) that the caller
/// owns.
unsafe fn was_discarded(obj: *mut u8) -> bool {
    // SAFETY: inside the object's first MIN_OBJECT bytes, which are ours.
    unsafe { obj.add(DISCARD_OFFSET).cast::<u64>().read() == DISCARDED }
}

/// How many times a pool's objects may be taken again after giving their
/// pages back before the pool keeps its pages: so a pool in use pays at
/// most this many turns of fresh pages for it.
const KEEP_PAGES_AFTER: u32 = 16;

/// Fresh spans (1 MiB of heap) through which a pool took nothing past its
/// thread caches before `Pool::release_if_idle` gives its objects back.
/// With one, a program that grows in phases (python's workload of
/// `bench/malloc-bench.sh`) gave back classes it was about to use again:
/// 6 % more page faults (BENCHMARKS.md, issue #19).
const IDLE_SPANS: usize = 4;

/// Smallest object: the shared cache's two links and the key.
pub(crate) const MIN_OBJECT: usize = (KEY_OFFSET + 8).next_multiple_of(os::OBJECT_ALIGN);

const WORD: usize = core::mem::size_of::<usize>();
/// Bytes before the caller's bytes under valgrind: room for the cache links.
const PREFIX: usize = MIN_OBJECT;

/// The flags that change where the caller's bytes are or add words around
/// them (see [`Layout`]).
pub(crate) const LAYOUT_FLAGS: u32 = DBG_TAG | DBG_CALLER | DBG_BACKUP | DBG_MEMCHECK;

/// Where the parts of a debugging pool's object are, from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The caller's bytes.
    pub(crate) user: usize,
    /// The tag word (with `tag`).
    pub(crate) tag: usize,
    /// The last alloc and free call sites (with `caller`).
    pub(crate) caller: usize,
    /// The copy of the freed object (with `backup`).
    pub(crate) backup: usize,
    /// Bytes obtained per object.
    pub(crate) total: usize,
}

impl Layout {
    /// The layout of an object of `size` bytes under the flags `debug`.
    /// Without layout flags, exactly what a plain pool uses.
    pub(crate) fn new(size: usize, debug: u32) -> Layout {
        let user = if debug & DBG_MEMCHECK != 0 { PREFIX } else { 0 };
        let area = (user + size).max(MIN_OBJECT);
        if debug & (DBG_TAG | DBG_CALLER | DBG_BACKUP) == 0 {
            return Layout {
                user,
                tag: area,
                caller: area,
                backup: area,
                total: area,
            };
        }
        let tag = area.next_multiple_of(WORD);
        let caller = tag + if debug & DBG_TAG != 0 { WORD } else { 0 };
        let backup = caller + if debug & DBG_CALLER != 0 { 2 * WORD } else { 0 };
        let total = backup
            + if debug & DBG_BACKUP != 0 {
                size.next_multiple_of(WORD)
            } else {
                0
            };
        Layout {
            user,
            tag,
            caller,
            backup,
            total,
        }
    }

    /// The word-aligned bytes the integrity pattern and the backup check
    /// cover: the caller's bytes past the cache links.
    pub(crate) fn checked(&self, size: usize) -> core::ops::Range<usize> {
        let start = MIN_OBJECT.max(self.user);
        let end = ((self.user + size) / WORD * WORD).max(start);
        start..end
    }
}

/// A pool of objects of one size: the opaque handle pool_create returns.
//
// The part of a pool the hit path reads. Handles are an array in slot
// order, `HANDLES`, laid out like the entries of a thread cache's table, so
// that a thread finds a pool's entry as the handle's address plus a
// per-thread number, with no load from the pool (`thread_cache`). A handle
// names the same head for ever (a head keeps its slot), and is never
// unmapped.
pub struct Handle {
    /// What the hit path compares with a thread-cache entry's key: the
    /// pool's `key` while it is live and has no debugging flags, `key | 1`
    /// otherwise, which no entry holds (see `thread_cache`).
    pub(crate) stamp: AtomicU64,
    /// The head, from its first life on; null before.
    pool: AtomicPtr<Pool>,
}

impl Handle {
    /// The head a handle names, live or not; `None` for NULL, a misaligned
    /// pointer, or a handle no pool has had.
    ///
    /// # Safety
    /// `h` is null or points to readable memory of a `Handle`.
    #[inline]
    pub(crate) unsafe fn head<'a>(h: *const Handle) -> Option<&'a Pool> {
        if h.is_null() || !h.is_aligned() {
            return None;
        }
        // SAFETY: non-null and aligned, readable by the caller's contract;
        // a head is never unmapped. Relaxed: as in `Pool::from_handle`.
        unsafe { (*h).pool.load(Relaxed).as_ref() }
    }

    /// The slot of this handle, if it is one of [`HANDLES`].
    pub(crate) fn slot(&self) -> Option<usize> {
        let off = ptr::from_ref(self).addr().wrapping_sub(first_handle_addr());
        (off.is_multiple_of(HANDLE_STRIDE) && off / HANDLE_STRIDE < MAX_POOLS)
            .then_some(off / HANDLE_STRIDE)
    }

    /// The C pointer of this handle.
    pub fn as_ptr(&self) -> *mut Handle {
        ptr::from_ref(self).cast_mut()
    }
}

/// A handle and the zero words around it.
#[repr(C, align(64))]
struct HandleRow {
    /// Never written: zero, no pool's stamp. A thread with no cache reads it
    /// as the key of the pool's entry (its bias is `tls::NO_CACHE`).
    no_entry: core::cell::UnsafeCell<u64>,
    handle: Handle,
    /// Never written: zero, so that every byte of the row is initialised
    /// (the row is what such a thread takes for the entry).
    rest: core::cell::UnsafeCell<[u64; 5]>,
}

/// Bytes from one handle to the next.
pub(crate) const HANDLE_STRIDE: usize = size_of::<HandleRow>();

const _: () = assert!(HANDLE_STRIDE == 64);
const _: () = assert!(
    core::mem::offset_of!(HandleRow, handle) - core::mem::offset_of!(HandleRow, no_entry)
        == crate::tls::NO_CACHE.wrapping_neg()
);

/// Every handle, by slot: zero (`.bss`) until a pool takes it.
struct Handles([HandleRow; MAX_POOLS]);
// SAFETY: the handles' fields are atomics; `no_entry` is never written.
unsafe impl Sync for Handles {}
static HANDLES: Handles = Handles(
    [const {
        HandleRow {
            no_entry: core::cell::UnsafeCell::new(0),
            handle: Handle {
                stamp: AtomicU64::new(0),
                pool: AtomicPtr::new(ptr::null_mut()),
            },
            rest: core::cell::UnsafeCell::new([0; 5]),
        }
    }; MAX_POOLS],
);

/// The handle of slot `slot`. The array's address is exposed: the hit path
/// makes the address of an entry from a handle's (which, in a thread
/// without a cache, is the handle's row).
pub(crate) fn handle_of_slot(slot: usize) -> &'static Handle {
    let _ = ptr::from_ref(&HANDLES).expose_provenance();
    &HANDLES.0[slot].handle
}

/// The address of slot 0's handle: a thread whose table of entries (one per
/// slot, `HANDLE_STRIDE` bytes apart) is at `t` has the bias `t` minus this.
pub(crate) fn first_handle_addr() -> usize {
    ptr::from_ref(&HANDLES.0[0].handle).addr()
}

/// Most pools alive at once (after merging); `pool_create` fails beyond.
#[cfg(not(miri))]
pub(crate) const MAX_POOLS: usize = 4096;
/// Under Miri fewer: every `&ThreadCache` is retagged over its whole table
/// (Stacked Borrows tracks each byte); the tests use few slots.
#[cfg(miri)]
pub(crate) const MAX_POOLS: usize = 256;

/// `magic` of a live pool; anything else is a destroyed or foreign head.
const LIVE: u32 = 0x706f_6f6c; // "pool"
const DEAD: u32 = 0x6465_6164; // "dead"
/// `magic` of a dead head on the registry's free list.
const FREE: u32 = 0x6672_6565; // "free"

/// A pool of objects of one size, behind its [`Handle`].
//
// Heads live in metadata memory and are recycled, never released, so a
// stale handle still reads a DEAD magic until its head is reused, which the
// registry does only once no object and no thread-cache entry of the dead
// pool is left.
pub struct Pool {
    /// The handle `pool_create` gives out for this head (the same through
    /// all its lives: a head keeps its slot).
    pub(crate) handle: &'static Handle,
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
    /// alloc and free to the debug path (and sets bit 0 of the handle's `stamp`, which
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
    /// Times objects of this pool whose pages were given back were taken
    /// from the shared cache again (see [`Pool::keeps_pages`]). Relaxed: a
    /// count for a heuristic.
    reused_discarded: AtomicU32,
    /// The count of fresh spans (`span::fresh_spans`) when a thread last
    /// took an object of this pool from the shared cache or the backing
    /// allocator, or when the pool was made (see [`Pool::release_if_idle`]).
    /// Relaxed: a hint.
    active: AtomicUsize,
    /// The shared cache's buckets, whichever variant runs over them.
    pub(crate) shared: SharedCache,
    /// Where objects come from; fixed at creation.
    pub(crate) backend: Backend,
    /// The caller's name, copied and owned by the registry, or (when
    /// `name_owned` is false) a string that lives as long as the process.
    pub(crate) name: Cell<Option<NonNull<libc::c_char>>>,
    /// Whether `name` is the registry's copy, to free at destroy.
    pub(crate) name_owned: Cell<bool>,
    /// The other names the pool was merged under, comma-separated (for
    /// `pool_dump`); owned by the registry, written under its lock.
    pub(crate) also: Cell<Option<NonNull<libc::c_char>>>,
    /// The registry's list of pools, or of free heads (under its lock).
    pub(crate) reg_next: Cell<*mut Pool>,
}

// SAFETY: the `Cell` fields (`name`, `name_owned`, `also`, `reg_next`) are only written under the
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

impl Pool {
    /// Writes a live, empty pool into `dst`: in slot `slot` (its handle
    /// `handle_of_slot(slot)`), its objects from `backend`, with the
    /// debugging flags `debug` (`poison` the poison byte). Field by field,
    /// where the head lives: a head is about a kilobyte, most of it the
    /// shared cache's padded buckets, and building it on the stack to copy
    /// it in cost a pool's creation as much again.
    ///
    /// # Safety
    /// `dst` is valid for writes of a `Pool` and aligned; its old value (a
    /// dead head's, or none) is not dropped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn init(
        dst: NonNull<Pool>,
        slot: usize,
        size: usize,
        flags: u32,
        backend: Backend,
        debug: u32,
        poison: u8,
        key: u64,
    ) {
        let layout = Layout::new(size, debug);
        debug_assert!(layout.total >= size.max(MIN_OBJECT));
        debug_assert!(key != 0 && key & 1 == 0);
        let p = dst.as_ptr();
        // SAFETY: each write is to a field of `*p`, valid for writes
        // (caller); together they initialise every field.
        unsafe {
            (&raw mut (*p).handle).write(handle_of_slot(slot));
            (&raw mut (*p).magic).write(AtomicU32::new(LIVE));
            (&raw mut (*p).key).write(key);
            (&raw mut (*p).life).write(Lifecycle::new());
            (&raw mut (*p).slot).write(slot);
            (&raw mut (*p).size).write(size);
            (&raw mut (*p).obj_size).write(size.max(MIN_OBJECT));
            (&raw mut (*p).alloc_size).write(layout.total);
            (&raw mut (*p).flags).write(flags);
            (&raw mut (*p).debug).write(debug);
            (&raw mut (*p).debug_live).write(AtomicU32::new(debug | options::runtime_debug()));
            (&raw mut (*p).layout).write(layout);
            (&raw mut (*p).poison).write(poison);
            (&raw mut (*p).limit).write(AtomicUsize::new(0));
            (&raw mut (*p).pattern).write(AtomicUsize::new(0));
            (&raw mut (*p).users).write(AtomicU32::new(1));
            (&raw mut (*p).minavail).write(AtomicUsize::new(0));
            (&raw mut (*p).failed).write(AtomicUsize::new(0));
            (&raw mut (*p).reused_discarded).write(AtomicU32::new(0));
            (&raw mut (*p).active).write(AtomicUsize::new(span::fresh_spans()));
            SharedCache::init(&raw mut (*p).shared);
            (&raw mut (*p).backend).write(backend);
            (&raw mut (*p).name).write(Cell::new(None));
            (&raw mut (*p).name_owned).write(Cell::new(false));
            (&raw mut (*p).also).write(Cell::new(None));
            (&raw mut (*p).reg_next).write(Cell::new(ptr::null_mut()));
        }
    }

    /// The pool behind a C handle, if it is a live pool.
    ///
    /// # Safety
    /// `h` is null or points to readable memory of a `Handle` (one from
    /// `pool_create`, live or destroyed: handles are never unmapped).
    #[inline]
    pub(crate) unsafe fn from_handle<'a>(h: *const Handle) -> Option<&'a Pool> {
        // SAFETY: forwarded.
        let pool = unsafe { Handle::head(h) }?;
        // Relaxed: the handle reached the caller through whatever
        // synchronisation published it; magic is only a misuse check.
        (pool.magic.load(Relaxed) == LIVE).then_some(pool)
    }

    /// Whether a handle that is not live is a destroyed pool (rather than a
    /// recycled head or something else), for the message of a free into it.
    ///
    /// # Safety
    /// As for [`Pool::from_handle`].
    pub(crate) unsafe fn is_destroyed_handle(h: *const Handle) -> bool {
        // SAFETY: per the contract.
        unsafe { Handle::head(h) }.is_some_and(|p| p.magic.load(Relaxed) == DEAD)
    }

    /// Marks the head destroyed, so later calls with it fail with EINVAL
    /// and no thread binds an entry to it any more (see `lifecycle`).
    pub(crate) fn kill(&self) {
        // Relaxed: the hit path's and the handle check's hints; the
        // handshake with the thread caches is the lifecycle word.
        self.handle.stamp.store(self.key | 1, Relaxed);
        self.magic.store(DEAD, Relaxed);
        self.life.kill();
        // Relaxed: a hint (see `destroys`).
        DESTROYS.fetch_add(1, Relaxed);
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
        self.handle.stamp.fetch_or(1, Relaxed);
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
            if let Some(up) = UPCALLS.get() {
                (up.recycle)(self);
            }
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

    /// Marks a recycled head (or a new one) live, and its handle: the
    /// handle names this head, and its stamp is this life's key (with bit
    /// 0 set if the pool has debugging options).
    pub(crate) fn revive(&self) {
        self.life.revive();
        // Relaxed: the handle reaches a caller through whatever publishes
        // it, after this; a stale handle's call racing with the reuse of
        // its head is the caller's bug (as for `magic`).
        self.handle
            .pool
            .store(ptr::from_ref(self).cast_mut(), Relaxed);
        let debug = self.debug_live.load(Relaxed) != 0;
        self.handle
            .stamp
            .store(if debug { self.key | 1 } else { self.key }, Relaxed);
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

    /// Gives a cluster that leaves a thread cache (or a free) to the shared
    /// cache, or to the system if the pool died. A thread cache that puts
    /// into a dying pool pins it (see `lifecycle`), so whatever it puts after
    /// the destroyer's flush is flushed when its last pin goes.
    pub(crate) fn release_from_cache(&self, home: usize, cluster: Cluster) {
        if self.is_dead() {
            // SAFETY: the cluster is ours.
            unsafe { self.release_cluster_to_os(home, cluster) };
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
            // SAFETY: the cluster is ours.
            unsafe { self.release_cluster_to_os(home, cluster) };
            return;
        }
        match options::shared_mode() {
            SharedMode::Xchg => self.shared.put(home, cluster),
            // SAFETY: the cluster is ours.
            SharedMode::None => unsafe { self.release_cluster_to_os(home, cluster) },
            legacy => self.shared.put_legacy(legacy, home, cluster),
        }
    }

    /// Whether a thread cache that misses takes several new objects of this
    /// pool at once: the LD_PRELOAD malloc's class pools do (the spans of a
    /// reserved tag), unless they have a limit (then each allocation is
    /// counted against it, see `Pool::alloc_slow`) or debugging options
    /// (whose checks at hand-out, such as `integrity`, expect every cached
    /// object to have been prepared by a free). A pool made by
    /// `pool_create` gets one object per miss, as HAProxy's do, so that its
    /// `allocated` counts what the program took.
    pub(crate) fn refills_in_batches(&self) -> bool {
        // Relaxed: settings; a call racing with pool_set_limit or with a
        // debugging bit switched on may see either value (objects already
        // cached stay valid for the bits switched on later, `fail` and
        // `profile`, which do not look at objects).
        matches!(self.backend, Backend::Span(tag) if (tag as usize) < span::RESERVED_TAGS)
            && self.limit.load(Relaxed) == 0
            && self.debug_live.load(Relaxed) == 0
    }

    /// Up to `out.len()` new objects from the backing allocator, counted as
    /// allocated in bucket `home`; returns how many were written to `out`.
    ///
    /// Counter: allocated grows by that many.
    pub(crate) fn obtain_new(&self, home: usize, out: &mut [*mut u8]) -> usize {
        self.note_active();
        let n = backing::obtain_objects(self.alloc_size, self.backend, home, out);
        self.shared.count_allocated(home, n as isize);
        n
    }

    /// A cluster from the shared cache, starting at bucket `home`.
    ///
    /// Counter: shared drops by its length.
    pub(crate) fn take_from_shared(&self, home: usize) -> Option<Cluster> {
        if self.debug & DBG_NO_GLOBAL != 0 {
            return None;
        }
        self.note_active();
        let c = match options::shared_mode() {
            SharedMode::Xchg => self.shared.take(home),
            SharedMode::None => None,
            legacy => self.shared.take_legacy(legacy, home),
        }?;
        // An evicted cluster's objects lose their pages together, so its
        // first tells (its line is the one the taker reads next).
        // SAFETY: the cluster's objects are free objects, now ours, whose
        // mark word is initialised (`may_discard`).
        if self.may_discard() && unsafe { was_discarded(c.first.as_ptr().cast()) } {
            self.reused_discarded.fetch_add(1, Relaxed);
        }
        Some(c)
    }

    /// Records that a thread takes objects of this pool past its thread
    /// cache now (see `active`).
    #[inline]
    fn note_active(&self) {
        let now = span::fresh_spans();
        // Stored only when it changes, so that the threads refilling a
        // pool do not write its line at each refill.
        if self.active.load(Relaxed) != now {
            self.active.store(now, Relaxed);
        }
    }

    /// Gives the shared cache's objects back to the backing allocator, and
    /// the spare span of the pool's tag to the system, if no thread took an
    /// object of this pool from the shared cache or the backing allocator
    /// through the last [`IDLE_SPANS`] fresh spans: while the heap grows, a
    /// size the program stopped using keeps no memory but what thread
    /// caches hold. For the LD_PRELOAD malloc's classes, whose idle
    /// objects a single heap would have reused for other sizes; a pool
    /// made by `pool_create` keeps its objects until `pool_gc`, as
    /// HAProxy's do.
    pub fn release_if_idle(&self) {
        // Relaxed: a hint; a take racing with this one misses the shared
        // cache and makes new objects. The variants of the shared cache
        // that `POOL_SHARED_CACHE` selects for comparison keep their
        // objects (see `flush`).
        if !self.is_idle()
            || options::shared_mode() != SharedMode::Xchg
            || self.shared_objects() == 0
        {
            return;
        }
        // SAFETY: the cluster left the shared cache: it is ours.
        self.shared
            .take_all(|c| unsafe { self.release_cluster_to_os(0, c) });
        if let Backend::Span(tag) = self.backend {
            span::trim_tag(tag);
        }
    }

    /// Whether no thread took an object of this pool from the shared cache
    /// or the backing allocator through the last [`IDLE_SPANS`] fresh
    /// spans. Relaxed: a hint.
    pub(crate) fn is_idle(&self) -> bool {
        self.active.load(Relaxed) + IDLE_SPANS < span::fresh_spans()
    }

    /// Whether this pool's free objects may give their pages back (see
    /// `thread_cache::evict`): two pages or more, no debugging options
    /// (`debug_live` read Relaxed: a hint; what matters, the layout, was
    /// fixed at creation), and memory the backing allocator hands out
    /// initialised (mappings, zero when new), so that the mark word of
    /// any free object can be read: not `malloc`'s.
    pub(crate) fn may_discard(&self) -> bool {
        self.alloc_size >= 2 * os::page()
            && self.debug_live.load(Relaxed) == 0
            && self.backend != Backend::Malloc
    }

    /// Whether this pool's objects keep their pages when they leave a
    /// thread cache: objects that lost them were used again
    /// [`KEEP_PAGES_AFTER`] times (see `thread_cache::evict`).
    pub(crate) fn keeps_pages(&self) -> bool {
        self.reused_discarded.load(Relaxed) >= KEEP_PAGES_AFTER
    }

    /// Like `take_from_shared`, for a caller that will free the objects.
    pub(crate) fn take_to_release(&self) -> Option<Cluster> {
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

    /// An idle object about to go back to the backing allocator: its bytes
    /// become ordinary memory again for ASan (a later mapping at this
    /// address must not inherit the poison).
    #[inline]
    pub(crate) fn before_release(&self, base: NonNull<u8>) {
        if self.debug & DBG_ASAN != 0 {
            checkers::asan_unpoison(base.as_ptr().wrapping_add(self.layout.user), self.size);
        }
    }

    /// Returns one object to the backing allocator.
    ///
    /// Counter: allocated drops.
    ///
    /// # Safety
    /// `obj` is an object of this pool that nobody holds.
    pub(crate) unsafe fn release_to_os(&self, home: usize, obj: NonNull<u8>) {
        self.before_release(obj);
        // SAFETY: objects come from `backing::obtain_object` with this size and
        // backend; the caller gives it up.
        unsafe { backing::release_object(obj, self.alloc_size, self.backend) };
        self.shared.count_allocated(home, -1);
    }

    /// Returns every object of `cluster` to the backing allocator.
    ///
    /// Counter: allocated drops by its length.
    ///
    /// # Safety
    /// The cluster is the caller's: in no cache, nobody holds its objects.
    unsafe fn release_cluster_to_os(&self, home: usize, cluster: Cluster) {
        // SAFETY: per the contract, each object is released once.
        unsafe { cluster.for_each(|i| self.release_to_os(home, i.cast())) }
    }

    /// Returns every object of the shared cache to the backing allocator.
    ///
    /// Counters: shared drops to 0 (bar concurrent frees); allocated drops.
    pub fn flush(&self) {
        // SAFETY: the cluster left the shared cache: it is ours.
        let release = |c: Cluster| unsafe { self.release_cluster_to_os(0, c) };
        match options::shared_mode() {
            SharedMode::Xchg => self.shared.take_all(release),
            SharedMode::None => {}
            legacy => self.shared.take_all_legacy(legacy, release),
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

// ---- the key of a free object -------------------------------------------

/// Clears the key word of an object being handed out (see `thread_cache`).
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

// ---- what the layers below the registry ask of it -------------------------

/// Pools destroyed so far: a thread cache that sees it change empties its
/// entries of dead pools (see `thread_cache`).
static DESTROYS: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn destroys() -> usize {
    // Relaxed: a hint to sweep; the sweep itself checks each pool.
    DESTROYS.load(Relaxed)
}

/// The three calls that go up from the layers below the registry to it,
/// through this one table, which the registry installs when it initialises
/// (before any pool exists, so before any of them can be needed).
pub(crate) struct Upcalls {
    /// `pool_gc`: an allocation that found no memory frees what the other
    /// pools keep idle before it fails (without a new lookup of the
    /// allocator's trim: see `backing::trim_if_found`).
    pub(crate) gc: fn(),
    /// The last pin of a dead pool is gone: its head may be recycled.
    pub(crate) recycle: fn(&Pool),
    /// The live pool whose head is at this address (for the message of a
    /// debugging check that found an object of another pool).
    pub(crate) pool_at: fn(usize) -> Option<&'static Pool>,
}

static UPCALLS: once_cell::sync::OnceCell<Upcalls> = once_cell::sync::OnceCell::new();

/// Installs the registry's calls (once; later calls change nothing).
pub(crate) fn install_upcalls(up: Upcalls) {
    let _ = UPCALLS.set(up);
}

/// Runs `pool_gc` (see [`Upcalls::gc`]).
pub(crate) fn gc_all_pools() {
    if let Some(up) = UPCALLS.get() {
        (up.gc)();
    }
}

/// The live pool whose head is at `addr` (see [`Upcalls::pool_at`]).
pub(crate) fn pool_at(addr: usize) -> Option<&'static Pool> {
    UPCALLS.get().and_then(|up| (up.pool_at)(addr))
}
