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

use crate::pool::Pool;
use crate::registry::{self, Destroyed};
use crate::{options, os};
use core::ffi::{c_char, c_int, c_uint, c_ulong, c_ulonglong, c_void, CStr};
use core::ptr::{self, NonNull};

pub use crate::options::POOL_DEFAULT_CACHE_SIZE;
pub use crate::pool::{POOL_F_EXACT, POOL_F_SHARED, POOL_MAX_SIZE};

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
unsafe fn live<'a>(pool: *const Pool) -> Option<&'a Pool> {
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
/// Memory: objects up to 32 KiB come from 2 MiB spans mapped with mmap and
/// shared by the pools of one object size; a span goes back to the OS as
/// soon as none of its objects is held by a pool or the application
/// (pool_flush, pool_gc). Larger objects, and every object when the
/// environment says POOL_BACKEND=malloc (to put jemalloc or mimalloc under
/// the pools), come from the libc's malloc. The `uaf` debugging option takes
/// priority over both.
///
/// Returns NULL with errno EINVAL for a NULL name, a size of 0 or above
/// POOL_MAX_SIZE, or an unknown flag; NULL with ENOMEM when memory or pool
/// slots (4096 live pools) run out. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn pool_create(name: *const c_char, size: usize, flags: c_uint) -> *mut Pool {
    if name.is_null() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    // SAFETY: a non-null name is a NUL-terminated string (C contract).
    let name = unsafe { CStr::from_ptr(name) };
    match registry::create(name, size, flags) {
        Ok(p) => ptr::from_ref(p).cast_mut(),
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
) -> *mut Pool {
    // SAFETY: same contract as pool_create.
    let p = unsafe { pool_create(name, size, flags) };
    if p.is_null() {
        let mut line = registry::Line::new();
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
/// `failed` counter grows) when memory runs out even after pool_gc.
/// NULL with EINVAL when `pool` is NULL or not a live pool.
///
/// The object is aligned to 16 bytes; its content is undefined. Any thread
/// may call it; the object may be freed by any thread.
#[no_mangle]
pub unsafe extern "C" fn pool_alloc(pool: *mut Pool) -> *mut c_void {
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    let Some(pool) = (unsafe { live(pool) }) else {
        return ptr::null_mut();
    };
    match pool.alloc() {
        Some(p) => p.as_ptr().cast(),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// Like pool_alloc, with the object's bytes set to zero.
#[no_mangle]
pub unsafe extern "C" fn pool_zalloc(pool: *mut Pool) -> *mut c_void {
    // SAFETY: same contract as pool_alloc.
    let p = unsafe { pool_alloc(pool) };
    if !p.is_null() {
        // SAFETY: a non-NULL result is an object of `pool.size` bytes.
        unsafe { ptr::write_bytes(p.cast::<u8>(), 0, (*pool).size) };
    }
    p
}

/// Gives an object back to its pool (to the calling thread's cache).
///
/// `ptr` must come from pool_alloc/pool_zalloc of the same pool and not be
/// used afterwards; any thread may free it. `pool_free(pool, NULL)` does
/// nothing. A NULL or dead `pool`, or a `ptr` not aligned to 16, sets errno
/// EINVAL and leaves the object to the caller.
#[no_mangle]
pub unsafe extern "C" fn pool_free(pool: *mut Pool, ptr: *mut c_void) {
    let Some(obj) = NonNull::new(ptr.cast::<u8>()) else {
        return;
    };
    // SAFETY: `pool` is NULL or a pool handle (C contract).
    let Some(pool) = (unsafe { live(pool) }) else {
        return;
    };
    if obj.as_ptr() as usize % os::OBJECT_ALIGN != 0 {
        set_errno(libc::EINVAL);
        return;
    }
    // SAFETY: the caller gives back an object of this pool (C contract).
    unsafe { pool.free(obj) };
}

/// Returns every object in the pool's shared cache to the allocator
/// underneath (a span is unmapped once all its objects are back, see
/// pool_create). Objects in thread caches stay. NULL does nothing.
#[no_mangle]
pub unsafe extern "C" fn pool_flush(pool: *mut Pool) {
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
/// kept as spares and asks the libc to trim (malloc_trim, where the malloc
/// in use has it). The argument is unused: pass NULL.
#[no_mangle]
pub extern "C" fn pool_gc(pool: *mut Pool) {
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
pub unsafe extern "C" fn pool_destroy(pool: *mut Pool) -> *mut c_void {
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
pub unsafe extern "C" fn pool_get_stats(pool: *const Pool, out: *mut pool_stats) -> c_int {
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
pub unsafe extern "C" fn pool_set_minavail(pool: *mut Pool, minavail: c_ulong) -> c_int {
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
/// an eighth of it skip the thread cache. Returns 0.
#[no_mangle]
pub extern "C" fn pool_set_cache_size(bytes: usize) -> c_int {
    registry::init();
    options::set_cache_size(bytes);
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

/// Applies a comma-separated list of debugging options, also read from
/// POOL_DEBUG: "fail=N" makes N percent of the allocations from the backing
/// allocator fail ("no-fail" stops it); "uaf" gives each object of the pools
/// created afterwards its own mapping between guard pages, unmapped when the
/// object goes back, so a later access faults ("no-uaf" stops it); "help"
/// prints the list on stderr. Returns 0, or -1 with EINVAL (changing
/// nothing) for a NULL list or an unknown option.
#[no_mangle]
pub unsafe extern "C" fn pool_set_debugging(opts: *const c_char) -> c_int {
    registry::init();
    // SAFETY: a non-null list is a NUL-terminated string (C contract).
    if !opts.is_null() && options::set_debugging(unsafe { CStr::from_ptr(opts) }.to_bytes()) {
        return 0;
    }
    set_errno(libc::EINVAL);
    -1
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

/// Writes one line per pool (name, size, counters, users) and a "Total:"
/// line to the file descriptor `fd`.
#[no_mangle]
pub extern "C" fn pool_dump(fd: c_int) {
    registry::dump(fd);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn errno() -> c_int {
        // SAFETY: reading this thread's errno.
        unsafe { *libc::__errno_location() }
    }

    #[test]
    fn errors_set_errno() {
        // SAFETY: every call gets NULL, a live handle or a C string.
        unsafe {
            set_errno(0);
            assert!(pool_create(ptr::null(), 16, 0).is_null());
            assert_eq!(errno(), libc::EINVAL);
            set_errno(0);
            assert!(pool_alloc(ptr::null_mut()).is_null());
            assert_eq!(errno(), libc::EINVAL);
            let mut s = core::mem::zeroed::<pool_stats>();
            assert_eq!(pool_get_stats(ptr::null(), &mut s), -1);
            let p = pool_create(c"ffi".as_ptr(), 24, 0);
            assert!(!p.is_null());
            set_errno(0);
            assert_eq!(pool_get_stats(p, ptr::null_mut()), -1);
            assert_eq!(errno(), libc::EINVAL);
            pool_free(p, ptr::null_mut());
            pool_flush(ptr::null_mut());
            assert!(pool_destroy(ptr::null_mut()).is_null());
            let o = pool_zalloc(p);
            assert!(core::slice::from_raw_parts(o.cast::<u8>(), 32)
                .iter()
                .all(|&b| b == 0));
            set_errno(0);
            pool_free(p, o.cast::<u8>().add(1).cast());
            assert_eq!(errno(), libc::EINVAL, "misaligned pointer refused");
            assert_eq!(pool_destroy(p), p.cast(), "in use");
            pool_free(p, o);
            assert_eq!(pool_get_stats(p, &mut s), 0);
            assert_eq!((s.size, s.used, s.cached), (32, 0, 1));
            assert_eq!(CStr::from_ptr(s.name), c"ffi");
            assert!(pool_destroy(p).is_null());
            set_errno(0);
            assert!(pool_destroy(p).is_null());
            assert_eq!(errno(), libc::EINVAL, "second destroy");
            assert!(pool_alloc(p).is_null());
            assert_eq!(pool_set_shared_cache(c"xchg".as_ptr()), -1);
            assert_eq!(errno(), libc::EBUSY);
        }
    }
}
