//! The C API: every `extern "C"` function of `include/pools.h`.
//!
//! This layer only checks arguments, converts types and sets `errno`; all
//! logic is in the safe core (`registry`, `pool`). No function here can
//! panic (the core does not, and the release build aborts on a panic rather
//! than unwinding into C).

// C names for C types; and each function's doc comment states its C
// contract (what pointers must be), which cbindgen copies into the header,
// instead of a Rust-only "# Safety" section.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

use crate::head::{Handle, Pool};
use crate::registry::{self, Destroyed};
use crate::{options, os};
use core::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_ulonglong, c_void, CStr};
use core::ptr::{self, NonNull};

pub use crate::head::{POOL_F_EXACT, POOL_F_SHARED, POOL_MAX_SIZE};
pub use crate::options::POOL_DEFAULT_CACHE_SIZE;

/// Counters of one pool, filled by `pool_get_stats`.
///
/// With no call in flight, `allocated == used + cached + shared`.
#[repr(C)]
pub struct pool_stats {
    /// The pool's name (the first creator's, for merged pools); valid until
    /// the pool is destroyed.
    pub name: *const c_char,
    /// Object size in bytes (rounded up to 16 unless POOL_F_EXACT).
    pub size: usize,
    /// Handles given out by pool_create (merged pools count each).
    pub users: c_uint,
    /// Objects obtained from the allocator underneath and not returned.
    pub allocated: c_ulong,
    /// Objects held by the application.
    pub used: c_ulong,
    /// Objects in the per-thread caches of all threads.
    pub cached: c_ulong,
    /// Objects in the shared cache.
    pub shared: c_ulong,
    /// Allocations that returned NULL.
    pub failed: c_ulong,
    /// Idle objects pool_gc keeps.
    pub minavail: c_ulong,
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, on glibc
    // and musl alike.
    unsafe { *libc::__errno_location() = e };
}

/// The live pool behind a handle, or `None` with errno EINVAL.
///
/// # Safety
/// `pool` is null or a handle from pool_create (possibly destroyed).
#[inline]
unsafe fn live<'a>(pool: *const Handle) -> Option<&'a Pool> {
    // SAFETY: forwarded from the caller.
    let p = unsafe { Pool::from_handle(pool) };
    if p.is_none() {
        set_errno(libc::EINVAL);
    }
    p
}

/// Creates a pool of objects of `size` bytes named `name` (copied).
///
/// Sizes are rounded up to a multiple of 16 unless `flags` has POOL_F_EXACT;
/// every object is aligned to 16 bytes. With POOL_F_SHARED, an existing
/// POOL_F_SHARED pool of the same rounded size is returned instead, with one
/// more user.
///
/// Memory: objects up to 32 KiB come from 256 KiB spans mapped with mmap and
/// shared by the pools of one object size; a span goes back to the OS as
/// soon as none of its objects is held by a pool or the application
/// (pool_flush, pool_gc). Objects of 2 MiB or more each get a mapping of
/// their own, aligned to 2 MiB so that transparent huge pages can back it
/// (one page fault per 2 MiB; resident as a whole once touched), unmapped
/// when the object goes back. Objects in between, and every object when
/// the environment says POOL_BACKEND=malloc (to put jemalloc or mimalloc
/// under the pools), come from the libc's malloc. The `uaf` debugging
/// option takes priority over all of these.
///
/// Returns NULL with errno EINVAL for a NULL name, a size of 0 or above
/// POOL_MAX_SIZE, or an unknown flag; NULL with ENOMEM when memory or pool
/// slots (4096 live pools) run out. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn pool_create(
    name: *const c_char,
    size: usize,
    flags: c_uint,
) -> *mut Handle {
    if name.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: a non-null name is a NUL-terminated string (C contract).
    let name = unsafe { CStr::from_ptr(name) };
    match registry::create(name, size, flags) {
        Ok(p) => p.handle.as_ptr(),
        Err(e) => {
            set_errno(e.errno());
            ptr::null_mut()
        }
    }
}

/// Like pool_create, but on failure prints a message naming the pool to
/// stderr and aborts. Used by DECLARE_POOL.
#[no_mangle]
pub unsafe extern "C" fn pool_create_or_abort(
    name: *const c_char,
    size: usize,
    flags: c_uint,
) -> *mut Handle {
    // SAFETY: same contract as pool_create.
    let p = unsafe { pool_create(name, size, flags) };
    if p.is_null() {
        let mut line = crate::line::Line::new();
        let shown = if name.is_null() {
            "(null)"
        } else {
            // SAFETY: a non-null name is a NUL-terminated string.
            unsafe { CStr::from_ptr(name) }.to_str().unwrap_or("?")
        };
        let _ = core::fmt::Write::write_fmt(
            &mut line,
            format_args!(
                "libpools: cannot create pool \"{shown}\" of {size} bytes: {}\n",
                {
                    // SAFETY: strerror returns a NUL-terminated message for any
                    // errno; we abort right after, so its buffer is not reused.
                    unsafe { CStr::from_ptr(libc::strerror(*libc::__errno_location())) }
                        .to_str()
                        .unwrap_or("?")
                }
            ),
        );
        line.write_to(2);
        std::process::abort();
    }
    p
}

/// Returns an object of the pool, or NULL with errno ENOMEM (the pool's
/// `failed` counter grows) when memory runs out even after pool_gc, or when
/// the pool is at its pool_set_limit cap. NULL with EINVAL when `pool` is
/// NULL or not a live pool.
///
/// The object is aligned to 16 bytes; its content is undefined (filled with
/// the poison byte under the `poison` debugging option). Any thread may call
/// it; the object may be freed by any thread.
#[no_mangle]
pub unsafe extern "C" fn pool_alloc(pool: *mut Handle) -> *mut c_void {
    if !pool.is_null() {
        // SAFETY: a non-null `pool` is a handle from pool_create (C
        // contract), live or destroyed: heads are never unmapped.
        if let Some(p) = unsafe { &*pool }.alloc_hit() {
            return p.as_ptr().cast();
        }
    }
    // A tail call: the stub finds our caller's return address on top of
    // the stack.
    // SAFETY: forwarded.
    unsafe { pool_alloc_miss(pool) }
}

/// pool_alloc past the hit path. The caller's return address (on top of
/// the stack at entry, since pool_alloc jumps here) becomes the second
/// argument of `pool_alloc_at`, for the `caller` option: a jump, no frame.
#[cfg_attr(all(target_arch = "x86_64", not(miri)), unsafe(naked))]
unsafe extern "C" fn pool_alloc_miss(pool: *mut Handle) -> *mut c_void {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    core::arch::naked_asm!("mov rsi, [rsp]", "jmp {}", sym pool_alloc_at);
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    // SAFETY: forwarded; no caller address on this target.
    unsafe {
        pool_alloc_at(pool, 0)
    }
}

/// pool_alloc called from `caller`, past the hit path.
unsafe extern "C" fn pool_alloc_at(pool: *mut Handle, caller: usize) -> *mut c_void {
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    let Some(pool) = (unsafe { live(pool) }) else {
        return ptr::null_mut();
    };
    // The slow path may take locks and map memory, which can leave errno
    // set by a call that succeeded: a successful pool_alloc keeps it.
    let saved = errno();
    match pool.alloc_slow(caller) {
        Some(p) => {
            set_errno(saved);
            p.as_ptr().cast()
        }
        None => {
            // Dead: destroyed while this call was under way.
            set_errno(if pool.is_dead() {
                libc::EINVAL
            } else {
                libc::ENOMEM
            });
            ptr::null_mut()
        }
    }
}

/// Like pool_alloc, with the object's bytes set to zero.
#[cfg_attr(all(target_arch = "x86_64", not(miri)), unsafe(naked))]
#[no_mangle]
pub unsafe extern "C" fn pool_zalloc(pool: *mut Handle) -> *mut c_void {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    core::arch::naked_asm!("mov rsi, [rsp]", "jmp {}", sym pool_zalloc_at);
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    // SAFETY: forwarded; no caller address on this target.
    unsafe {
        pool_zalloc_at(pool, 0)
    }
}

/// pool_zalloc called from `caller`.
unsafe extern "C" fn pool_zalloc_at(pool: *mut Handle, caller: usize) -> *mut c_void {
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    let Some(pool) = (unsafe { live(pool) }) else {
        return ptr::null_mut();
    };
    match pool.alloc_from(caller) {
        Some(p) => {
            // SAFETY: an object of `pool.size` bytes, ours.
            unsafe { ptr::write_bytes(p.as_ptr(), 0, pool.size) };
            p.as_ptr().cast()
        }
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// Gives an object back to its pool (to the calling thread's cache).
///
/// `ptr` must come from pool_alloc/pool_zalloc of the same pool and not be
/// used afterwards; any thread may free it. `pool_free(pool, NULL)` does
/// nothing. A NULL or dead `pool`, or a `ptr` not aligned to 16, sets errno
/// EINVAL and leaves the object to the caller (a dead pool's object is
/// reported on stderr). Freeing an object twice aborts with a message while
/// the object is still free (in a thread cache, the shared cache or a span);
/// freeing it into the wrong pool is undefined unless the `tag` or
/// `integrity` debugging option was set when the pool was created (then it
/// aborts with a message).
#[no_mangle]
pub unsafe extern "C" fn pool_free(pool: *mut Handle, ptr: *mut c_void) {
    let Some(obj) = NonNull::new(ptr.cast::<u8>()) else {
        return;
    };
    // Each test ends in a tail call (two different ones, so that the two
    // tests stay two branches).
    if !(obj.as_ptr() as usize).is_multiple_of(os::OBJECT_ALIGN) {
        return set_errno(libc::EINVAL);
    }
    if pool.is_null() {
        // SAFETY: forwarded.
        return unsafe { pool_free_miss(pool, ptr) };
    }
    // SAFETY: a non-null `pool` is a handle from pool_create (C contract);
    // the caller gives `obj` back.
    if !unsafe { (*pool).free_hit(obj) } {
        // SAFETY: forwarded.
        unsafe { pool_free_miss(pool, ptr) }
    }
}

/// pool_free past the hit path (see `pool_alloc_miss`).
#[cfg_attr(all(target_arch = "x86_64", not(miri)), unsafe(naked))]
unsafe extern "C" fn pool_free_miss(pool: *mut Handle, ptr: *mut c_void) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    core::arch::naked_asm!("mov rdx, [rsp]", "jmp {}", sym pool_free_at);
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    // SAFETY: forwarded; no caller address on this target.
    unsafe {
        pool_free_at(pool, ptr, 0)
    }
}

/// pool_free called from `caller`, past the hit path.
unsafe extern "C" fn pool_free_at(pool: *mut Handle, ptr: *mut c_void, caller: usize) {
    let Some(obj) = NonNull::new(ptr.cast::<u8>()) else {
        return;
    };
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    let Some(pool) = (unsafe { live(pool) }) else {
        // SAFETY: as above; a destroyed head stays mapped.
        if !pool.is_null() && unsafe { Pool::is_destroyed_handle(pool) } {
            dead_pool_free(pool, obj);
        }
        return;
    };
    if !(obj.as_ptr() as usize).is_multiple_of(os::OBJECT_ALIGN) {
        set_errno(libc::EINVAL);
        return;
    }
    pool.check_invalid_free(obj);
    // A successful pool_free keeps errno (see pool_alloc_at).
    let saved = errno();
    // SAFETY: the caller gives back an object of this pool (C contract).
    if unsafe { pool.free_slow(obj, caller) } {
        set_errno(saved);
    } else {
        dead_pool_free(pool.handle, obj);
    }
}

/// pool_free into a pool that is dead: EINVAL, and a line on stderr (for
/// the first few), since the object is lost to the caller's bookkeeping.
#[cold]
fn dead_pool_free(pool: *const Handle, obj: NonNull<u8>) {
    use core::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static SHOWN: AtomicU32 = AtomicU32::new(0);
    set_errno(libc::EINVAL);
    // Relaxed: a count of messages.
    if SHOWN.fetch_add(1, Relaxed) >= 8 {
        return;
    }
    let mut line = crate::line::Line::new();
    let _ = core::fmt::Write::write_fmt(
        &mut line,
        format_args!(
            "libpools: pool_free({pool:p}, {obj:p}): the pool was destroyed; the object is left to the caller\n"
        ),
    );
    line.write_to(2);
}

/// Returns every object in the pool's shared cache to the allocator
/// underneath (a span is unmapped once all its objects are back, see
/// pool_create). Objects in thread caches stay. NULL does nothing.
#[no_mangle]
pub unsafe extern "C" fn pool_flush(pool: *mut Handle) {
    if pool.is_null() {
        return;
    }
    // SAFETY: a pool handle (C contract).
    if let Some(pool) = unsafe { live(pool) } {
        pool.flush();
    }
}

/// For every pool, returns shared-cache objects to the allocator until the
/// pool keeps at most `minavail` idle objects, then unmaps the empty spans
/// kept as spares and asks the malloc in use to give free memory back
/// (glibc's malloc_trim, or a purge of a preloaded jemalloc's arenas; see
/// pool_trim_count), unless the environment says POOL_TRIM=0. The argument
/// is unused: pass NULL.
#[no_mangle]
pub extern "C" fn pool_gc(pool: *mut Handle) {
    let _ = pool;
    registry::gc();
}

/// Releases the caller's handle on the pool.
///
/// While the application holds objects of the pool, changes nothing and
/// returns `pool`. Otherwise drops one user and returns NULL; the last user
/// takes back the objects every thread caches, frees them and the pool.
/// `pool_destroy(NULL)` returns NULL; a destroyed handle returns NULL with
/// errno EINVAL (destroyed heads are recycled, so this detection lasts until
/// a new pool reuses the head).
#[no_mangle]
pub unsafe extern "C" fn pool_destroy(pool: *mut Handle) -> *mut c_void {
    if pool.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: a pool handle (C contract).
    let Some(live) = (unsafe { live(pool) }) else {
        return ptr::null_mut();
    };
    // SAFETY: pool heads are never unmapped, so the reference is 'static.
    let live: &'static Pool = unsafe { &*ptr::from_ref(live) };
    match registry::destroy(live) {
        Ok(Destroyed::Released) => ptr::null_mut(),
        Ok(Destroyed::InUse) => pool.cast(),
        Err(e) => {
            set_errno(e.errno());
            ptr::null_mut()
        }
    }
}

/// Fills `*out` with the pool's counters. Returns 0, or -1 with errno
/// EINVAL when either pointer is NULL or the pool is not live.
#[no_mangle]
pub unsafe extern "C" fn pool_get_stats(pool: *const Handle, out: *mut pool_stats) -> c_int {
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    let Some(pool) = (unsafe { live(pool) }) else {
        return -1;
    };
    if out.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    let s = registry::stats(pool);
    let stats = pool_stats {
        name: pool.name().as_ptr(),
        size: s.size,
        users: s.users,
        allocated: s.allocated as c_ulong,
        used: s.used as c_ulong,
        cached: s.cached as c_ulong,
        shared: s.shared as c_ulong,
        failed: s.failed as c_ulong,
        minavail: s.minavail as c_ulong,
    };
    // SAFETY: `out` is non-null and writable (C contract).
    unsafe { out.write(stats) };
    0
}

/// Sets how many idle objects pool_gc leaves in the pool. Returns 0, or -1
/// with errno EINVAL for a NULL or dead pool.
#[no_mangle]
pub unsafe extern "C" fn pool_set_minavail(pool: *mut Handle, minavail: c_ulong) -> c_int {
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    let Some(pool) = (unsafe { live(pool) }) else {
        return -1;
    };
    pool.minavail
        .store(minavail as usize, core::sync::atomic::Ordering::Relaxed);
    0
}

/// Moves every object the calling thread caches to the shared caches.
#[no_mangle]
pub extern "C" fn pool_evict_local_cache() {
    crate::evict_local_cache();
}

/// Sets the per-thread cache budget in bytes, for all threads (default
/// 512 KiB, or POOL_CACHE_SIZE from the environment). Objects larger than
/// an eighth of it skip the thread cache. The calling thread's cache fits
/// the new budget at once; another thread's at its next refill of a cluster
/// (at most one cluster per pool later). Returns 0.
#[no_mangle]
pub extern "C" fn pool_set_cache_size(bytes: usize) -> c_int {
    registry::init();
    crate::set_cache_size(bytes);
    0
}

/// The per-thread cache budget in bytes.
#[no_mangle]
pub extern "C" fn pool_get_cache_size() -> usize {
    options::cache_size()
}

/// Selects the shared cache before the first pool is created: "xchg"
/// (default, self-locked list heads) or "none" (objects overflowing a thread
/// cache go back to the allocator). "dwcas" (the lockless pop that can read
/// freed memory: it can crash, by design), "rwlock" and "locked" are the
/// designs xchg replaced, kept for benchmarks and tests only. Also read from
/// POOL_SHARED_CACHE. Returns 0; -1 with EINVAL for an unknown name, EBUSY
/// once a pool has been created.
#[no_mangle]
pub unsafe extern "C" fn pool_set_shared_cache(name: *const c_char) -> c_int {
    if name.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: a non-null name is a NUL-terminated string (C contract).
    match registry::set_shared_cache(unsafe { CStr::from_ptr(name) }) {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e.errno());
            -1
        }
    }
}

/// Applies a comma-separated list of debugging options, also read once
/// from POOL_DEBUG; HAProxy's `-dM` names. Every option but `fail` is
/// copied into a pool when it is created: set them before creating the
/// pools they are for (POOL_F_SHARED pools with different options never
/// merge). Each has an opposite that clears it.
///
/// - "fail=N" / "fail" / "no-fail": N percent (1 for "fail") of the
///   pool_alloc and pool_zalloc calls return NULL with ENOMEM and count in
///   the pool's `failed`, whether a cache holds objects or not (applies at
///   once, to every pool; under the LD_PRELOAD malloc, to malloc and
///   friends). The draws are one sequence from POOL_FAIL_SEED (or a fixed
///   default): a single-threaded run fails the same calls every time.
/// - "no-merge" / "merge": POOL_F_SHARED pools merge only with a pool of the
///   same name.
/// - "cold-first" / "hot-first": the thread cache hands out its oldest
///   object of the pool first, not its newest.
/// - "integrity" / "no-integrity": objects in the caches are filled with a
///   changing pattern, checked when handed out again; a write after free
///   aborts with the pool name, the address and the first differing offset.
///   A second pool_free of a cached object aborts too. Covers the bytes
///   from offset 32 (the cache links live before), for objects of more
///   than 32 bytes.
/// - "no-global" / "global": no shared cache: what leaves a thread cache
///   goes back to the system.
/// - "no-cache" / "cache": no thread cache: pool_free goes to the shared
///   cache (or, with "no-global", to the system).
/// - "caller" / "no-caller": (layout) the return addresses of the last
///   pool_alloc and pool_free of each object are kept after it and printed
///   by the abort messages.
/// - "tag" / "no-tag": (layout) a word after each object names its pool and
///   whether it is free: pool_free into the wrong pool, a double free, or an
///   overflow that reaches the tag aborts with a message naming the pools
///   and the object's address.
/// - "poison" / "poison=0xNN" / "no-poison": new allocations are filled
///   with the poison byte (default 0x50, 'P').
/// - "uaf" / "no-uaf": (backend) each object in its own mapping between
///   guard pages, unmapped when it goes back to the system. As in HAProxy,
///   "uaf" implies "no-cache,no-global", so that this happens at pool_free
///   and any later access faults, unless "cache" or "global" follows it in
///   the same list ("uaf,cache": a use after the object left the cache
///   faults).
/// - "backup" / "no-backup": (layout) a copy of each freed object is kept
///   after it and compared when the object is handed out again (unless
///   "integrity" does that check): a write after free aborts.
/// - "zero-on-free" / "no-zero-on-free": each freed object is zeroed, all
///   but the 8-byte key word at offset 16 that marks it free (so a double
///   free is still caught): what a use after free reads is gone.
/// - "random-order" / "no-random-order": not a pool flag; a span carved
///   while it is set hands out its objects in a random order (all of them
///   are linked at once: the span becomes resident), under the LD_PRELOAD
///   malloc too.
/// - "help": prints the list on stderr.
///
/// Returns 0, or -1 with EINVAL (changing nothing) for a NULL list or an
/// unknown option. Thread-safe; pools being created concurrently see the
/// old or the new options.
#[no_mangle]
pub unsafe extern "C" fn pool_set_debugging(opts: *const c_char) -> c_int {
    registry::init();
    // SAFETY: a non-null list is a NUL-terminated string (C contract).
    if !opts.is_null() && registry::set_debugging(unsafe { CStr::from_ptr(opts) }.to_bytes()) {
        return 0;
    }
    set_errno(libc::EINVAL);
    -1
}

/// Caps the pool's `allocated` counter at `limit` objects (0: no cap, the
/// default). At the cap, pool_alloc returns NULL with ENOMEM and counts a
/// failure, without running pool_gc. A cap below the current count takes
/// nothing back; it stops new allocations until objects go back to the
/// system. Concurrent allocations never pass the cap together (one of them
/// may fail where the cap had room for exactly one). Returns 0, or -1 with
/// errno EINVAL for a NULL or dead pool. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn pool_set_limit(pool: *mut Handle, limit: c_ulong) -> c_int {
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    let Some(pool) = (unsafe { live(pool) }) else {
        return -1;
    };
    pool.limit
        .store(limit as usize, core::sync::atomic::Ordering::Relaxed);
    0
}

/// Bytes of objects allocated (held by the pools or the application), all
/// pools together.
#[no_mangle]
pub extern "C" fn pool_total_allocated() -> c_ulonglong {
    registry::totals().0
}

/// Bytes of objects the application holds, all pools together.
#[no_mangle]
pub extern "C" fn pool_total_used() -> c_ulonglong {
    registry::totals().1
}

/// pool_dump_sorted order: the pools as they are listed (newest first).
pub const POOL_DUMP_UNSORTED: c_int = 0;
/// pool_dump_sorted order: by name, A to Z (byte order).
pub const POOL_DUMP_BY_NAME: c_int = 1;
/// pool_dump_sorted order: by object size, largest first.
pub const POOL_DUMP_BY_SIZE: c_int = 2;
/// pool_dump_sorted order: by bytes allocated, largest first.
pub const POOL_DUMP_BY_USAGE: c_int = 3;

/// Writes one line per pool and a "Total:" line to the file descriptor `fd`
/// (HAProxy's "show pools"):
///
/// ```text
///   - Pool buffer (16384 bytes) : 3 allocated (49152 bytes), 1 used, 2 cached, 0 shared, 0 failures, 1 users, minavail 0 [SHARED]
/// ```
///
/// then ", limit N" when pool_set_limit set one, " [SHARED]" for
/// POOL_F_SHARED pools and " [DEBUG tag,...]" for pools created with
/// debugging options. Writes with write(2) and allocates no memory with
/// malloc. Thread-safe; errors writing to `fd` are ignored.
#[no_mangle]
pub extern "C" fn pool_dump(fd: c_int) {
    registry::dump(fd);
}

/// Like pool_dump, with the pool lines in the order `how` (POOL_DUMP_BY_NAME,
/// POOL_DUMP_BY_SIZE, POOL_DUMP_BY_USAGE or POOL_DUMP_UNSORTED) and at most
/// `max` of them (0: all); the "Total:" line still covers every pool.
/// Returns 0, or -1 with errno EINVAL (writing nothing) for an unknown `how`
/// or a negative `max`. Thread-safe.
#[no_mangle]
pub extern "C" fn pool_dump_sorted(fd: c_int, how: c_int, max: c_int) -> c_int {
    let Some(order) = dump_order(how) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    let Ok(max) = usize::try_from(max) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    registry::dump_sorted(fd, order, max);
    0
}

#[cfg(all(test, not(loom)))]
mod tests;

/// Switches memory profiling on (`on` non-zero) or off, as POOL_PROFILE=1
/// does from the start. While it is on, every pool (those that exist and
/// those created later) records, per call site (the return address of the
/// pool_alloc, pool_zalloc or pool_free call) and per pool, the allocation
/// and free calls and their bytes; under the LD_PRELOAD malloc, per call
/// site of malloc and friends. Profiled pools take the debugging path
/// (slower); switching profiling off stops the recording but leaves the
/// pools on that path. Counts are kept in fixed per-thread tables (calls
/// that find no room are counted as such) until the process ends.
/// Returns 0, or -1 with ENOMEM when the tables cannot be mapped.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn pool_set_profiling(on: c_int) -> c_int {
    if registry::set_profiling(on != 0) {
        0
    } else {
        set_errno(libc::ENOMEM);
        -1
    }
}

/// Writes the memory profile to `fd`: a header, then the `max` call sites
/// (0: all) with the most bytes (allocated or freed there), one line each:
///
/// ```text
///        1000 allocs        64000 bytes      1000 frees        64000 bytes  pool=buffer at 0x55d0c1a2b3c4 handle_request+0x34 (server)
/// ```
///
/// (the symbol and offset as the dynamic loader knows them: functions of
/// an executable need `-rdynamic`), then a "Total:" line with the calls
/// that did not fit the tables. Also printed at exit by POOL_STATS=1 when
/// profiling was on. Writes with write(2), allocates no memory with malloc.
/// Returns 0, or -1 with errno EINVAL for a negative `max`. Thread-safe.
#[no_mangle]
pub extern "C" fn pool_dump_profile(fd: c_int, max: c_int) -> c_int {
    let Ok(max) = usize::try_from(max) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    registry::dump_profile(fd, max);
    0
}

/// pool_dump_filtered flag: one `key=value` line per pool instead of the
/// pool_dump sentences:
///
/// ```text
/// pool name=buffer aliases= size=16384 allocated=3 allocated_bytes=49152 used=1 cached=2 shared=0 failed=0 users=1 minavail=0 limit=0 shared_flag=1 debug=
/// total pools=1 allocated_bytes=49152 used_bytes=16384 shared_cache=xchg thread_cache_bytes=524288
/// ```
///
/// Values never hold a space: bytes of names other than printable ASCII,
/// and `=`, `,` and `%`, are written `%XX`; `aliases` and `debug` are
/// comma lists.
pub const POOL_DUMP_F_KV: c_uint = 1;
// The flag word goes to the registry as it is.
const _: () = assert!(POOL_DUMP_F_KV == registry::DUMP_KV);

/// Like pool_dump_sorted, with only the pools whose name, or one of the
/// names they were merged under, starts with `prefix` (NULL or "": every
/// pool), like HAProxy's "show pools match"; the total line covers the
/// pools that match. `flags`: 0, or POOL_DUMP_F_KV for the machine-readable
/// form. Returns 0, or -1 with errno EINVAL (writing nothing) for an
/// unknown `how` or flag, or a negative `max`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn pool_dump_filtered(
    fd: c_int,
    how: c_int,
    max: c_int,
    prefix: *const c_char,
    flags: c_uint,
) -> c_int {
    let Some(order) = dump_order(how) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    let (Ok(max), 0) = (usize::try_from(max), flags & !POOL_DUMP_F_KV) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    let prefix = if prefix.is_null() {
        &[][..]
    } else {
        // SAFETY: a non-null prefix is a NUL-terminated string (C contract).
        unsafe { CStr::from_ptr(prefix) }.to_bytes()
    };
    registry::dump_filtered(fd, order, max, prefix, flags);
    0
}

/// The times pool_gc asked the allocator underneath to give free memory
/// back to the system: malloc_trim under glibc (or the LD_PRELOAD malloc),
/// a purge of every arena through mallctl under a preloaded jemalloc,
/// nothing under musl. POOL_TRIM=0 in the environment turns the trim off
/// (a malloc_trim of a large fragmented heap can stall a program for
/// long). Thread-safe.
#[no_mangle]
pub extern "C" fn pool_trim_count() -> c_ulong {
    registry::trim_count() as c_ulong
}

/// The object size of `pool` in bytes (what pool_get_stats reports as
/// `size`: the requested size rounded up to 16 unless POOL_F_EXACT), read
/// without taking any lock. Returns 0 with errno EINVAL for a NULL or dead
/// pool. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn pool_size(pool: *const Handle) -> usize {
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    match unsafe { live(pool) } {
        Some(pool) => pool.size,
        None => 0,
    }
}

/// The cap pool_set_limit set on the pool's `allocated` counter (0: no
/// cap). Returns 0 with errno EINVAL for a NULL or dead pool. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn pool_get_limit(pool: *const Handle) -> c_ulong {
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    match unsafe { live(pool) } {
        // Relaxed: a setting, read on its own.
        Some(pool) => pool.limit.load(core::sync::atomic::Ordering::Relaxed) as c_ulong,
        None => 0,
    }
}

/// Writes what pool_dump_sorted(fd, how, max) would write into `buf`
/// instead, the way snprintf does: at most `len - 1` bytes of it followed
/// by a NUL (nothing when `len` is 0, and then `buf` may be NULL). Returns
/// the length of the whole dump, NUL not counted: the dump was cut when the
/// result is `len` or more. HAProxy's "show pools" prints it.
///
/// Returns -1 with errno EINVAL (writing nothing) for a NULL `buf` with a
/// non-zero `len`, an unknown `how` or a negative `max`. Allocates no memory
/// with malloc (the sorted orders map one page table, as pool_dump_sorted
/// does). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn pool_dump_to_buffer(
    buf: *mut c_char,
    len: usize,
    how: c_int,
    max: c_int,
) -> c_long {
    let (Some(order), Ok(max)) = (dump_order(how), usize::try_from(max)) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    let out: &mut [u8] = if len == 0 {
        &mut []
    } else if buf.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    } else {
        // SAFETY: the caller gives `len` writable bytes at `buf` (C
        // contract), not touched by anyone else during the call.
        unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) }
    };
    registry::dump_sorted_to_buffer(out, order, max) as c_long
}

/// The dump order a `POOL_DUMP_*` value names.
fn dump_order(how: c_int) -> Option<registry::DumpOrder> {
    Some(match how {
        POOL_DUMP_UNSORTED => registry::DumpOrder::Unsorted,
        POOL_DUMP_BY_NAME => registry::DumpOrder::Name,
        POOL_DUMP_BY_SIZE => registry::DumpOrder::Size,
        POOL_DUMP_BY_USAGE => registry::DumpOrder::Usage,
        _ => return None,
    })
}
