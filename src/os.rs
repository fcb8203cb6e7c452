//! The system underneath: the libc allocator (`posix_memalign`/`free`, or
//! those of a malloc preloaded underneath) and anonymous mappings of zeroed
//! pages. No other module calls `malloc`, `posix_memalign` or `free`;
//! besides this module, `backing` (guarded and huge-page objects) and
//! `span` (its spans, with `mmap`, `munmap` and `madvise`) map memory.

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

pub(crate) fn page() -> usize {
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

/// A hook the span layer (`span::reserve`) calls after each fresh span it
/// maps or takes from its batch (not for a spare span), under the lock of
/// the tag that takes it: it must not wait for a lock of the library (it
/// may `SpinLock::try_lock` one and give up), since the fork handlers take
/// the preload's own locks before the tags'. The preload's large cache
/// unmaps cached blocks there, so that a program's small blocks reuse the
/// memory its large ones freed (`malloc/src/large.rs`). Here, in the floor,
/// so that the span layer calls up through it without importing the
/// preload.
pub type FreshSpanHook = extern "C" fn();

static FRESH_SPAN_HOOK: core::sync::atomic::AtomicPtr<()> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Installs the hook called after each fresh span. Call it from a
/// constructor, before any span is mapped.
pub fn on_fresh_span(hook: FreshSpanHook) {
    // Release: a thread that acquires the pointer may call the hook.
    FRESH_SPAN_HOOK.store(hook as *mut (), core::sync::atomic::Ordering::Release);
}

/// Calls the hook of [`on_fresh_span`], if one is installed.
pub(crate) fn fresh_span() {
    // Acquire: pairs with the Release in `on_fresh_span`.
    let hook = FRESH_SPAN_HOOK.load(core::sync::atomic::Ordering::Acquire);
    if !hook.is_null() {
        // SAFETY: stored from a `FreshSpanHook` by `on_fresh_span`; fn
        // pointers and data pointers have one size and representation here.
        let hook: FreshSpanHook = unsafe { core::mem::transmute::<*mut (), FreshSpanHook>(hook) };
        hook();
    }
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
}
