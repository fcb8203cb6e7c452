//! The backing allocators: where a pool's objects come from and go back to.
//!
//! [`obtain_object`] and [`release_object`] dispatch on a pool's [`Backend`]:
//! the system allocator (`os`), a guarded mapping per object, the spans of
//! `span`, or a mapping per huge object. This module also draws the
//! `fail=N` failures and trims the allocator underneath ([`trim`]).

use crate::os::{self, map_zeroed, page, unmap, OBJECT_ALIGN};
use core::ptr::{self, NonNull};
use once_cell::sync::OnceCell;

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
    /// One mapping per object, aligned to a huge page, unmapped when the
    /// object goes back: pools of objects of at least [`HUGE_PAGE`] bytes
    /// (see [`obtain_huge`]).
    Huge,
}

/// The size and alignment of a transparent huge page on x86-64 and
/// aarch64 with 4 KiB pages.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// One object of `size` bytes, aligned to `OBJECT_ALIGN`, or `None` when the
/// backend has no memory, for the thread whose home is `home` (spans carve
/// each thread's new objects apart from the others', see `span::obtain`).
/// (`fail=N` draws at the top of the pool's alloc path, `Pool::alloc_debug`,
/// not here.)
pub(crate) fn obtain_object(size: usize, backend: Backend, home: usize) -> Option<NonNull<u8>> {
    crate::counters::count(crate::counters::Event::Obtained);
    match backend {
        Backend::Malloc => os::obtain(size, OBJECT_ALIGN),
        Backend::Guarded => obtain_guarded(size),
        Backend::Span(tag) => crate::span::obtain(tag, size, home),
        Backend::Huge => obtain_huge(size),
    }
}

/// Up to `out.len()` objects of `size` bytes from `backend` (all in one
/// hold of the lock, for spans), for the thread whose home is `home`;
/// returns how many were written to `out`.
pub(crate) fn obtain_objects(
    size: usize,
    backend: Backend,
    home: usize,
    out: &mut [*mut u8],
) -> usize {
    if let Backend::Span(tag) = backend {
        let n = crate::span::obtain_batch(tag, size, home, out);
        for _ in 0..n {
            crate::counters::count(crate::counters::Event::Obtained);
        }
        return n;
    }
    out.iter_mut()
        .map_while(|slot| obtain_object(size, backend, home).map(|p| *slot = p.as_ptr()))
        .count()
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
        Backend::Malloc => unsafe { os::release(p) },
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
        // SAFETY: a Huge object starts its own mapping of `size` bytes
        // rounded up to a page (caller), which nobody uses any more.
        Backend::Huge => unsafe { unmap(p, size.next_multiple_of(page())) },
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

/// An object of `size >= HUGE_PAGE` bytes in a mapping of its own that
/// starts at a `HUGE_PAGE` boundary, with the kernel asked to back each
/// whole huge page of it with one (`MADV_HUGEPAGE`, which does nothing
/// where transparent huge pages are off): the first write into such a
/// range is one page fault instead of 512, and it is then resident as a
/// whole. What lies past the last whole huge page stays in small pages.
/// The alignment costs one `munmap` or two (the slack around the object in
/// a mapping one huge page longer).
fn obtain_huge(size: usize) -> Option<NonNull<u8>> {
    debug_assert!(size >= HUGE_PAGE);
    let len = size.next_multiple_of(page());
    let base = map_zeroed(len + HUGE_PAGE)?;
    let head = base.as_ptr().addr().next_multiple_of(HUGE_PAGE) - base.as_ptr().addr();
    // SAFETY: `head < HUGE_PAGE`, so `[base + head, base + head + len)`
    // lies inside the fresh mapping of `len + HUGE_PAGE` bytes; the `head`
    // bytes before it and the `HUGE_PAGE - head` after it are ours and
    // unused. madvise only advises.
    unsafe {
        let p = base.as_ptr().add(head);
        if head > 0 {
            unmap(base, head);
        }
        unmap(NonNull::new_unchecked(p.add(len)), HUGE_PAGE - head);
        libc::madvise(p.cast(), len, libc::MADV_HUGEPAGE);
        Some(NonNull::new_unchecked(p))
    }
}

type TrimFn = unsafe extern "C" fn(libc::size_t) -> libc::c_int;
type MallctlFn = unsafe extern "C" fn(
    *const libc::c_char,
    *mut libc::c_void,
    *mut libc::size_t,
    *mut libc::c_void,
    libc::size_t,
) -> libc::c_int;

/// How the allocator underneath is asked to give free memory back. (On
/// musl and under Miri nothing is: no variant is ever made there.)
#[derive(Clone, Copy)]
#[cfg_attr(not(all(target_env = "gnu", not(miri))), allow(dead_code))]
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
    if crate::options::trim_enabled() {
        if let Some(t) = *TRIMMER.get_or_init(find_trimmer) {
            run_trimmer(t);
        }
    }
}

/// [`trim`] for a `pool_gc` inside an allocation that failed: it trims only
/// with an entry point found before. The lookup's `dlsym` would replace the
/// dynamic loader's pending error, and the allocation may be `dlerror`'s
/// own, which then frees its result a second time.
pub(crate) fn trim_if_found() {
    if crate::options::trim_enabled() {
        if let Some(Some(t)) = TRIMMER.get() {
            run_trimmer(*t);
        }
    }
}

/// Makes `malloc_trim` the trim of the allocator underneath, with no
/// lookup: the LD_PRELOAD malloc's own, from its constructor.
pub(crate) fn set_malloc_trim(f: TrimFn) {
    let _ = TRIMMER.set(Some(Trimmer::MallocTrim(f)));
}

/// The allocator's trim entry point, once looked up (or set).
static TRIMMER: OnceCell<Option<Trimmer>> = OnceCell::new();

fn run_trimmer(t: Trimmer) {
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

    /// Whether the pages at `offsets` of an object of `size` bytes are
    /// unmapped right after its release (mincore fails with ENOMEM where
    /// nothing is mapped). Another test's thread may map the same
    /// addresses in between, so a page found mapped is asked about again,
    /// for a new object, up to five times: only objects that are never
    /// unmapped fail.
    fn unmapped_after_release(size: usize, backend: Backend, offsets: &[usize]) -> bool {
        (0..5).any(|_| {
            let p = obtain_object(size, backend, 0).expect("memory");
            // SAFETY: `p` has `size` writable bytes and is released once.
            unsafe {
                p.as_ptr().write_bytes(0x5a, size);
                release_object(p, size, backend);
            }
            offsets.iter().all(|&at| {
                let mut v = [0u8; 1];
                // SAFETY: mincore only inspects the address range.
                let rc = unsafe { libc::mincore(p.as_ptr().add(at).cast(), 1, v.as_mut_ptr()) };
                let err = std::io::Error::last_os_error().raw_os_error();
                (rc, err) == (-1, Some(libc::ENOMEM))
            })
        })
    }

    #[test]
    #[cfg_attr(miri, ignore = "mprotect and mincore")]
    fn guarded_objects_are_writable_and_unmapped_on_release() {
        for size in [1usize, 4096, 4097, 1 << 21] {
            let p = obtain_object(size, Backend::Guarded, 0).expect("memory");
            assert_eq!(p.as_ptr() as usize % page(), 0);
            // SAFETY: `p` is a Guarded object of `size` bytes, released once.
            unsafe { release_object(p, size, Backend::Guarded) };
            assert!(
                unmapped_after_release(size, Backend::Guarded, &[0]),
                "size {size}: the object's page is still mapped"
            );
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "mmap and mincore")]
    fn huge_objects_start_a_huge_page_and_are_unmapped_on_release() {
        for size in [HUGE_PAGE, HUGE_PAGE + 32, 3 * HUGE_PAGE] {
            let objs: Vec<_> = (0..3)
                .map(|_| obtain_object(size, Backend::Huge, 0).expect("memory"))
                .collect();
            for &p in &objs {
                assert_eq!(p.as_ptr() as usize % HUGE_PAGE, 0, "size {size}");
                // SAFETY: `p` has `size` writable bytes.
                unsafe { p.as_ptr().write_bytes(0x5a, size) };
            }
            for p in objs {
                // SAFETY: `p` is a Huge object of `size` bytes, released once.
                unsafe { release_object(p, size, Backend::Huge) };
            }
            // The first and the last page.
            let last = (size - 1) / page() * page();
            assert!(
                unmapped_after_release(size, Backend::Huge, &[0, last]),
                "size {size}: a page is still mapped"
            );
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
    fn trim_can_be_called() {
        trim();
        trim();
    }
}
