//! The backing allocators: where objects come from and go back to.
//!
//! [`obtain_object`] and [`release_object`] dispatch on a pool's [`Backend`]:
//! `posix_memalign`/`free` of the libc (or of a malloc preloaded underneath),
//! a guarded mapping per object, or the spans of `span`; they also inject
//! the `fail=N` failures. This module also maps the zeroed pages of the
//! core's own tables ([`map_zeroed`]) and trims the allocator underneath
//! ([`trim`]). No other module calls `malloc`, `posix_memalign` or `free`.
//! Besides this module, only `span` maps memory (its spans and large
//! blocks, with `mmap`, `munmap` and `mremap`).

use core::ptr::{self, NonNull};
use once_cell::sync::OnceCell;

/// Every object is aligned to at least this many bytes.
pub(crate) const OBJECT_ALIGN: usize = 16;

/// Obtains `size` bytes aligned to `align` (a power of two, at least
/// `OBJECT_ALIGN`) from the libc allocator, or `None` when it has none.
pub(crate) fn obtain(size: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two() && align >= OBJECT_ALIGN);
    let mut p: *mut libc::c_void = ptr::null_mut();
    // SAFETY: `p` is a valid out-pointer; `align` is a power of two and a
    // multiple of `size_of::<*mut c_void>()` as posix_memalign requires.
    let rc = unsafe { libc::posix_memalign(&mut p, align, size) };
    if rc != 0 {
        return None;
    }
    NonNull::new(p.cast())
}

/// Gives back memory obtained from [`obtain`].
///
/// # Safety
/// `p` came from [`obtain`] and is not used afterwards.
pub(crate) unsafe fn release(p: NonNull<u8>) {
    // SAFETY: by the caller's contract `p` is a live posix_memalign block.
    unsafe { libc::free(p.as_ptr().cast()) }
}

/// Where a pool's objects come from, fixed when the pool is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `posix_memalign` and `free` of the libc (or of a preloaded malloc).
    Malloc,
    /// One mapping per object between two inaccessible guard pages,
    /// unmapped when the object goes back: any later use faults at once
    /// (the `uaf` debugging option, and the race tests' backing allocator).
    Guarded,
    /// Objects carved from the mmap'd spans of this tag (`span`): the
    /// LD_PRELOAD malloc's size classes, whose objects `free` finds by
    /// address, and by default the pools of objects up to
    /// `registry::SPAN_POOL_MAX` bytes (one tag per object size). A span is
    /// unmapped when its last object comes back.
    Span(u32),
}

/// One object of `size` bytes, aligned to `OBJECT_ALIGN`, or `None` when the
/// backend has no memory. (`fail=N` draws at the top of the pool's alloc
/// path, `Pool::alloc_debug`, not here.)
pub(crate) fn obtain_object(size: usize, backend: Backend) -> Option<NonNull<u8>> {
    crate::counters::count(crate::counters::Event::Obtained);
    match backend {
        Backend::Malloc => obtain(size, OBJECT_ALIGN),
        Backend::Guarded => obtain_guarded(size),
        Backend::Span(tag) => crate::span::obtain(tag, size),
    }
}

/// Gives back an object from [`obtain_object`].
///
/// # Safety
/// `p` came from `obtain_object(size, backend)` with these `size` and
/// `backend`, and is not used afterwards.
pub(crate) unsafe fn release_object(p: NonNull<u8>, size: usize, backend: Backend) {
    crate::counters::count(crate::counters::Event::Released);
    match backend {
        // SAFETY: a Malloc object is a posix_memalign block (caller).
        Backend::Malloc => unsafe { release(p) },
        // SAFETY: a Guarded object starts one page into its own mapping of
        // `guarded_len(size)` bytes (caller), which nobody uses any more.
        Backend::Guarded => unsafe {
            unmap(
                NonNull::new_unchecked(p.as_ptr().sub(page())),
                guarded_len(size),
            )
        },
        // SAFETY: a Span object came from the spans of this tag (caller).
        Backend::Span(tag) => unsafe { crate::span::release(tag, p) },
    }
}

/// Whether this allocation is one of the `fail=N` percent to refuse: the
/// next draw of one sequence for the whole process, which starts from
/// `POOL_FAIL_SEED`, so that a single-threaded run with the same seed
/// fails the same calls.
#[inline]
pub(crate) fn injected_failure() -> bool {
    let rate = crate::options::fail_rate();
    rate != 0 && roll() % 100 < rate
}

/// Draws so far, for [`roll`].
static DRAWS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// A pseudo-random number: a Weyl sequence from the seed, mixed. Relaxed:
/// each draw takes its own step of the sequence; any interleaving of the
/// increments gives a usable sequence.
#[cold]
fn roll() -> u32 {
    let n = DRAWS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    let mut x = crate::options::fail_seed().wrapping_add(n.wrapping_mul(0x9e37_79b9));
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

fn page() -> usize {
    static PAGE: OnceCell<usize> = OnceCell::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize)
}

/// The CPU the calling thread runs on (0 when the system does not say).
/// A hint only: the thread may move at any time. It names the shared-cache
/// bucket of the objects that skip the thread caches (`Pool::alloc_slow`,
/// `Pool::free_object`), so that what one CPU freed last is what it takes
/// next, still in its caches.
pub(crate) fn current_cpu() -> usize {
    if cfg!(miri) {
        // Miri has no sched_getcpu; any bucket is correct.
        return 0;
    }
    // SAFETY: sched_getcpu has no preconditions (glibc reads rseq's cpu_id
    // or the vDSO, musl the vDSO or the system call).
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0)
}

/// A guard page, the object's pages, a guard page.
fn guarded_len(size: usize) -> usize {
    size.next_multiple_of(page()) + 2 * page()
}

fn obtain_guarded(size: usize) -> Option<NonNull<u8>> {
    let len = guarded_len(size);
    let base = map_zeroed(len)?;
    // SAFETY: both guard pages lie inside the fresh mapping; the object
    // starts one page in (page-aligned, so aligned to OBJECT_ALIGN).
    unsafe {
        let first = base.as_ptr();
        let last = first.add(len - page());
        if libc::mprotect(first.cast(), page(), libc::PROT_NONE) != 0
            || libc::mprotect(last.cast(), page(), libc::PROT_NONE) != 0
        {
            unmap(base, len);
            return None;
        }
        Some(NonNull::new_unchecked(first.add(page())))
    }
}

/// Maps `len` bytes of zeroed, private memory (pages are only backed when
/// first touched), or `None`.
pub(crate) fn map_zeroed(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p.cast())
}

/// Unmaps memory from [`map_zeroed`].
///
/// # Safety
/// `p` and `len` are those of one [`map_zeroed`] mapping no longer used.
pub(crate) unsafe fn unmap(p: NonNull<u8>, len: usize) {
    // SAFETY: by the caller's contract the whole mapping is ours and dead.
    unsafe { libc::munmap(p.as_ptr().cast(), len) };
}

type TrimFn = unsafe extern "C" fn(libc::size_t) -> libc::c_int;
type MallctlFn = unsafe extern "C" fn(
    *const libc::c_char,
    *mut libc::c_void,
    *mut libc::size_t,
    *mut libc::c_void,
    libc::size_t,
) -> libc::c_int;

/// How the allocator underneath is asked to give free memory back.
#[derive(Clone, Copy)]
enum Trimmer {
    /// glibc's (or the LD_PRELOAD malloc's) `malloc_trim`.
    MallocTrim(TrimFn),
    /// jemalloc's `mallctl("arena.<MALLCTL_ARENAS_ALL>.purge")`.
    JemallocPurge(MallctlFn),
}

/// Trims done by [`trim`] (the allocator underneath was asked to return
/// memory), for `pool_trim_count`. Relaxed: a statistic.
static TRIMS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The number of trims done so far.
pub(crate) fn trims() -> usize {
    TRIMS.load(core::sync::atomic::Ordering::Relaxed)
}

/// Asks the allocator underneath to give free memory back to the OS, unless
/// `POOL_TRIM=0`.
///
/// The allocator's entry point is looked up at run time, and used only when
/// it belongs to the same object as the `malloc` in use: glibc has
/// `malloc_trim`, musl has nothing (its allocator returns large chunks on
/// `free` by itself), and a preloaded jemalloc replaces `malloc` but not
/// glibc's `malloc_trim`, which would then trim an arena nobody uses:
/// there its arenas are purged through `mallctl`, as HAProxy does.
pub(crate) fn trim() {
    static TRIMMER: OnceCell<Option<Trimmer>> = OnceCell::new();
    if !crate::options::trim_enabled() {
        return;
    }
    let Some(t) = *TRIMMER.get_or_init(find_trimmer) else {
        return;
    };
    match t {
        // SAFETY: `trim` is the libc's malloc_trim, found by its name.
        Trimmer::MallocTrim(trim) => unsafe {
            trim(0);
        },
        // SAFETY: jemalloc's mallctl, found by its name; a purge command
        // reads and writes no argument (all null / 0). The name is a
        // NUL-terminated literal; 4096 is MALLCTL_ARENAS_ALL.
        Trimmer::JemallocPurge(mallctl) => unsafe {
            mallctl(
                c"arena.4096.purge".as_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            );
        },
    }
    TRIMS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// The loaded symbol `name`, if it is defined by the object that defines
/// the `malloc` in use.
#[cfg(all(target_env = "gnu", not(miri)))]
fn beside_malloc(name: &core::ffi::CStr) -> Option<*mut libc::c_void> {
    // SAFETY: dlsym and dladdr only read the loaded objects' symbol tables;
    // the names are NUL-terminated and `info` is a valid out-pointer.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        let malloc = libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr());
        if f.is_null() || malloc.is_null() {
            return None;
        }
        let mut a: libc::Dl_info = core::mem::zeroed();
        let mut b: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr(f, &mut a) == 0 || libc::dladdr(malloc, &mut b) == 0 {
            return None;
        }
        (a.dli_fbase == b.dli_fbase).then_some(f)
    }
}

#[cfg(all(target_env = "gnu", not(miri)))]
fn find_trimmer() -> Option<Trimmer> {
    if let Some(f) = beside_malloc(c"malloc_trim") {
        // SAFETY: the C malloc_trim: `int malloc_trim(size_t)`.
        return Some(Trimmer::MallocTrim(unsafe {
            core::mem::transmute::<*mut libc::c_void, TrimFn>(f)
        }));
    }
    // A failed lookup formats its message with malloc: done once, at the
    // first pool_gc, not at start-up.
    let f = beside_malloc(c"mallctl")?;
    // SAFETY: jemalloc's `int mallctl(const char *, void *, size_t *,
    // void *, size_t)`.
    Some(Trimmer::JemallocPurge(unsafe {
        core::mem::transmute::<*mut libc::c_void, MallctlFn>(f)
    }))
}

/// musl (and Miri) have no `malloc_trim`: musl's allocator returns large
/// chunks to the OS on `free` by itself.
#[cfg(not(all(target_env = "gnu", not(miri))))]
fn find_trimmer() -> Option<Trimmer> {
    None
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn obtain_is_aligned_and_writable() {
        for size in [1usize, 17, 4096, 1 << 21] {
            let p = obtain(size, OBJECT_ALIGN).expect("memory");
            assert_eq!(p.as_ptr() as usize % OBJECT_ALIGN, 0);
            // SAFETY: `p` has `size` writable bytes and is released once.
            unsafe {
                p.as_ptr().write_bytes(0xa5, size);
                release(p);
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "mprotect and mincore")]
    fn guarded_objects_are_writable_and_unmapped_on_release() {
        for size in [1usize, 4096, 4097, 1 << 21] {
            let p = obtain_object(size, Backend::Guarded).expect("memory");
            assert_eq!(p.as_ptr() as usize % page(), 0);
            // SAFETY: `p` has `size` writable bytes and is released once.
            unsafe {
                p.as_ptr().write_bytes(0x5a, size);
                release_object(p, size, Backend::Guarded);
            }
            // The pages are gone: mincore says ENOMEM for an unmapped range.
            let mut v = [0u8; 1];
            // SAFETY: mincore only inspects the address range.
            let rc = unsafe { libc::mincore(p.as_ptr().cast(), 1, v.as_mut_ptr()) };
            assert_eq!(rc, -1, "the object's page is still mapped");
        }
    }

    #[test]
    fn rolls_spread_over_percentiles() {
        let mut hits = [0u32; 10];
        for _ in 0..10_000 {
            hits[(roll() % 100 / 10) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (800..1200).contains(&h)), "{hits:?}");
    }

    #[test]
    fn mapping_is_zeroed() {
        let len = 3 * 4096;
        let p = map_zeroed(len).expect("mapping");
        // SAFETY: the mapping has `len` readable bytes and is unmapped once.
        unsafe {
            let s = core::slice::from_raw_parts(p.as_ptr(), len);
            assert!(s.iter().all(|&b| b == 0));
            unmap(p, len);
        }
    }

    #[test]
    fn trim_can_be_called() {
        trim();
        trim();
    }
}
