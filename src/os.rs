//! The system underneath: the libc allocator (`posix_memalign`/`free`, or
//! those of a malloc preloaded underneath) and anonymous mappings of zeroed
//! pages. No other module calls `malloc`, `posix_memalign` or `free`;
//! besides this module, `backing` (guarded and huge-page objects) and
//! `span` (its spans, with `mmap`, `munmap` and `madvise`) map memory.

use core::ptr::{self, NonNull};
use core::sync::atomic::AtomicUsize;
use core::sync::atomic::Ordering::Relaxed;
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
    let p = unsafe { mmap(0, len, RW, 0) };
    NonNull::new(p?.cast())
}

/// Unmaps memory from [`map_zeroed`] or [`map_aligned`] (a whole mapping or
/// part of one). Its addresses go back to the placement, unless `uaf` is
/// on: a block mapped next would take them, and an access through the
/// freed pointer would then read it instead of faulting.
///
/// # Safety
/// `p` and `len` are those of (part of) a mapping of ours no longer used.
pub(crate) unsafe fn unmap(p: NonNull<u8>, len: usize) {
    // SAFETY: by the caller's contract the range is ours and dead.
    if unsafe { munmap(p.as_ptr(), len) } && !crate::options::uaf_anywhere() {
        PLACEMENT.released(p.as_ptr().addr(), len);
    }
}

/// Drops the pages of `[p, p + len)` (page-aligned, in an anonymous
/// private mapping or the anonymous part of the bss), which read as zeros
/// afterwards and cost nothing until touched again; `false` if the kernel
/// refused (locked pages), the contents then unchanged.
///
/// # Safety
/// Nobody uses the range's contents any more.
pub(crate) unsafe fn discard(p: NonNull<u8>, len: usize) -> bool {
    if cfg!(miri) {
        return false;
    }
    hook::count();
    // SAFETY: the caller's contract.
    unsafe { libc::madvise(p.as_ptr().cast(), len, libc::MADV_DONTNEED) == 0 }
}

/// Readable and writable pages.
pub(crate) const RW: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;

/// `mmap` of an anonymous private mapping of `len` bytes with `prot` and
/// the extra `flags`, at `addr` (0: the kernel's choice; with
/// `MAP_FIXED_NOREPLACE`, exactly there or nowhere); `None` when it fails
/// (errno says why). Every mapping of ours is made here, so that the tests
/// can count the calls ([`hook::calls`]).
///
/// # Safety
/// With `MAP_FIXED` in `flags`, the range at `addr` is ours to replace.
pub(crate) unsafe fn mmap(
    addr: usize,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
) -> Option<*mut u8> {
    hook::count();
    let flags = hook::filter(flags);
    // SAFETY: an anonymous mapping; a fixed one only replaces our own
    // range (caller); a NOREPLACE one replaces nothing.
    let p = unsafe {
        libc::mmap(
            ptr::with_exposed_provenance_mut(addr),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}

/// `munmap`, counted as [`mmap`] is.
///
/// # Safety
/// The range is ours and nobody uses it.
pub(crate) unsafe fn munmap(p: *mut u8, len: usize) -> bool {
    hook::count();
    // SAFETY: the caller's contract.
    unsafe { libc::munmap(p.cast(), len) == 0 }
}

/// `mprotect`, counted as [`mmap`] is.
///
/// # Safety
/// The range is ours, and nobody uses the pages that `prot` takes away.
pub(crate) unsafe fn mprotect(p: *mut u8, len: usize, prot: libc::c_int) -> bool {
    hook::count();
    // SAFETY: the caller's contract.
    unsafe { libc::mprotect(p.cast(), len, prot) == 0 }
}

/// Bytes between the lowest address the placement computes from (that of
/// one of our statics, rounded down to it) and the area where it places
/// mappings: the kernel gives the mappings it places (libraries loaded
/// later, thread stacks, files) the highest free range below its base,
/// above ours, until this gap is full.
const PLACE_GAP: usize = 1 << 30;
/// Bytes of address space the placement hands out, downward from the top
/// of its area (one leaf of the region map when the mappings are spans).
/// Past it, mappings are the kernel's choice, over-mapped and trimmed.
const PLACE_WINDOW: usize = 16 << 30;
/// No placement below this address: the low 4 GiB are what programs that
/// map at fixed addresses (emulators, `MAP_32BIT` users) expect free.
const PLACE_FLOOR: usize = 1 << 32;

/// Where aligned mappings go ([`map_aligned`]): a range placed below the
/// last one with `MAP_FIXED_NOREPLACE` is aligned by construction, so it
/// takes one `mmap`, where the kernel's choice needs an over-map and two
/// trimming `munmap`s. Consecutive ranges are neighbours, one kernel
/// mapping (VMA) when they have the same protection.
pub(crate) struct Placement {
    /// The bottom of the lowest range handed out so far (0 before the
    /// first): the next one ends at or below it.
    next: AtomicUsize,
    /// The top of the area (0: computed from the address of
    /// [`PLACEMENT`]).
    top: usize,
}

/// The process's placement.
pub(crate) static PLACEMENT: Placement = Placement::new(0);

impl Placement {
    /// A placement whose area ends at `top` (0: below the library's own
    /// statics).
    pub(crate) const fn new(top: usize) -> Placement {
        Placement {
            next: AtomicUsize::new(0),
            top,
        }
    }

    /// The top of the area, or 0 when it has none.
    fn top(&self) -> usize {
        if self.top != 0 {
            return self.top;
        }
        let own = ptr::from_ref(self).addr() & !(PLACE_GAP - 1);
        own.checked_sub(PLACE_GAP)
            .filter(|&t| t >= PLACE_FLOOR + PLACE_WINDOW)
            .unwrap_or(0)
    }

    /// `len` bytes at a placed address `start`, `start + lead` a multiple
    /// of `align`, with `prot`: `Ok` with the mapping, `Err(true)` when the
    /// kernel has no memory for it (no use trying elsewhere), `Err(false)`
    /// when it could not be placed (the area is used up, or its next range
    /// is taken: the area then moves [`PLACE_GAP`] lower).
    fn place(
        &self,
        len: usize,
        align: usize,
        lead: usize,
        prot: libc::c_int,
    ) -> Result<NonNull<u8>, bool> {
        let top = self.top();
        if top == 0 || cfg!(miri) {
            return Err(false);
        }
        let bottom = top - PLACE_WINDOW;
        let below = |next: usize| -> Option<usize> {
            let end = if next == 0 { top } else { next };
            let base = end.checked_sub(len - lead)? & !(align - 1);
            base.checked_sub(lead).filter(|&s| s >= bottom)
        };
        // Claims the range before mapping it, so that two threads place
        // theirs apart. Relaxed: `next` is only where to try; the kernel
        // says whether a range is free.
        let next = self
            .next
            .fetch_update(Relaxed, Relaxed, below)
            .map_err(|_| false)?;
        let start = below(next).ok_or(false)?;
        // SAFETY: errno is this thread's.
        let errno = unsafe { *libc::__errno_location() };
        // SAFETY: NOREPLACE maps only where nothing is mapped.
        let p = unsafe { mmap(start, len, prot, libc::MAP_FIXED_NOREPLACE) };
        let failure = match p {
            Some(p) if p.addr() == start => return NonNull::new(p).ok_or(false),
            Some(p) => {
                // A kernel before 4.17 took the address as a hint (the
                // range was taken): not ours to keep unless aligned.
                if (p.addr() + lead).is_multiple_of(align) {
                    return NonNull::new(p).ok_or(false);
                }
                // SAFETY: the fresh mapping is ours and unused.
                unsafe { munmap(p, len) };
                false
            }
            // SAFETY: errno is this thread's.
            None => (unsafe { *libc::__errno_location() }) != libc::EEXIST,
        };
        if failure {
            // No memory: the range goes back if nothing was placed below.
            let _ = self.next.compare_exchange(start, next, Relaxed, Relaxed);
        } else {
            // Taken by someone else: the area continues lower.
            self.next
                .fetch_min(start.saturating_sub(PLACE_GAP).max(bottom), Relaxed);
            // SAFETY: as above; the caller maps elsewhere.
            unsafe { *libc::__errno_location() = errno };
        }
        Err(failure)
    }

    /// Gives back the range `[start, start + len)` being unmapped when it is
    /// the lowest placed one, so that a mapping made and unmapped in turn
    /// reuses its addresses.
    pub(crate) fn released(&self, start: usize, len: usize) {
        // Relaxed: as in `place`.
        let _ = self
            .next
            .compare_exchange(start, start + len, Relaxed, Relaxed);
    }

    /// [`map_aligned`] in this placement's area.
    pub(crate) fn map(
        &self,
        len: usize,
        align: usize,
        lead: usize,
        prot: libc::c_int,
    ) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two() && lead < len);
        match self.place(len, align, lead, prot) {
            Ok(p) => Some(p),
            Err(true) => None,
            Err(false) => map_trimmed(len, align, lead, prot),
        }
    }
}

/// Maps `len` bytes (a multiple of the page size) with `prot`, at an
/// address `start` such that `start + lead` is a multiple of `align` (a
/// power of two, at least the page size), or `None`. One `mmap` in the
/// common case ([`Placement`]); otherwise the kernel's choice, over-mapped
/// and trimmed.
pub(crate) fn map_aligned(
    len: usize,
    align: usize,
    lead: usize,
    prot: libc::c_int,
) -> Option<NonNull<u8>> {
    PLACEMENT.map(len, align, lead, prot)
}

/// The top of the area where [`map_aligned`] places mappings (they lie
/// below it, within [`PLACE_WINDOW`] bytes), or 0 when there is none.
pub(crate) fn placement_top() -> usize {
    PLACEMENT.top()
}

/// [`map_aligned`] where the kernel chooses: `align` more bytes (less a
/// page) mapped, the excess on both sides unmapped (three calls).
pub(crate) fn map_trimmed(
    len: usize,
    align: usize,
    lead: usize,
    prot: libc::c_int,
) -> Option<NonNull<u8>> {
    let total = len.checked_add(align - page())?;
    // SAFETY: an anonymous mapping where the kernel chooses.
    let raw = unsafe { mmap(0, total, prot, 0) }?;
    let addr = raw.addr();
    let start = (addr + lead).next_multiple_of(align) - lead;
    let (head, tail) = (start - addr, addr + total - (start + len));
    // SAFETY: the trimmed pieces lie inside the fresh mapping and are not
    // used; `head` and `tail` are multiples of the page size.
    unsafe {
        if head > 0 {
            munmap(raw, head);
        }
        if tail > 0 {
            munmap(raw.add(head + len), tail);
        }
        Some(NonNull::new_unchecked(raw.add(head)))
    }
}

/// Counts of the mapping calls of the calling thread, for the tests; and a
/// switch that makes `mmap` ignore `MAP_FIXED_NOREPLACE` as a kernel before
/// 4.17 does (the address becomes a hint). Nothing outside the tests.
#[cfg(test)]
pub(crate) mod hook {
    use core::cell::Cell;

    std::thread_local! {
        static CALLS: Cell<usize> = const { Cell::new(0) };
        static OLD_KERNEL: Cell<bool> = const { Cell::new(false) };
    }

    pub(super) fn count() {
        CALLS.with(|c| c.set(c.get() + 1));
    }

    pub(super) fn filter(flags: libc::c_int) -> libc::c_int {
        if OLD_KERNEL.with(Cell::get) {
            flags & !libc::MAP_FIXED_NOREPLACE
        } else {
            flags
        }
    }

    /// `mmap`, `munmap` and `mprotect` calls this thread has made.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn calls() -> usize {
        CALLS.with(Cell::get)
    }

    /// Makes this thread's `mmap` treat `MAP_FIXED_NOREPLACE` as a hint.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn old_kernel(on: bool) {
        OLD_KERNEL.with(|o| o.set(on));
    }
}

/// Outside the tests, the hook does nothing.
#[cfg(not(test))]
mod hook {
    #[inline(always)]
    pub(super) fn count() {}

    #[inline(always)]
    pub(super) fn filter(flags: libc::c_int) -> libc::c_int {
        flags
    }
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

/// Runs `f` in a forked child, where no other test thread maps or unmaps
/// memory meanwhile; the test fails if `f` panics there. A panic reports
/// and leaves at once: the default hook may wait for a lock that another
/// thread of the parent held at the fork.
#[cfg(all(test, not(loom)))]
pub(crate) fn in_child(f: impl FnOnce()) {
    // SAFETY: the child runs `f` and leaves by _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        std::panic::set_hook(Box::new(|info| {
            let msg = format!("test child: {info}\n");
            // SAFETY: writing a buffer to fd 2, then leaving.
            unsafe {
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(1);
            }
        }));
        f();
        // SAFETY: ends the child without the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: status {status:#x}"
    );
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

    const MIB: usize = 1 << 20;
    const SPAN: usize = 256 * 1024;

    /// Runs `f` in a forked child (see [`in_child`]) on a placement of its
    /// own, whose area is free addresses: a range the kernel chose,
    /// unmapped again.
    fn in_child_with_area(f: fn(&Placement)) {
        in_child(|| {
            let len = 256 * MIB;
            let raw = map_zeroed(len).expect("address space");
            // SAFETY: our fresh, unused mapping.
            unsafe { munmap(raw.as_ptr(), len) };
            let top = (raw.as_ptr().addr() + len) & !(SPAN - 1);
            f(&Placement::new(top));
        });
    }

    /// Maps `len` bytes aligned to SPAN in `area`: the mapping and the
    /// mapping calls it took.
    fn map_counted(area: &Placement, len: usize, lead: usize, prot: libc::c_int) -> (usize, usize) {
        let before = hook::calls();
        let p = area.map(len, SPAN, lead, prot).expect("mapping");
        let start = p.as_ptr().addr();
        assert_eq!((start + lead) % SPAN, 0, "aligned");
        (start, hook::calls() - before)
    }

    /// Maps `[start, start + len)`, inaccessible, as someone else's
    /// mapping where a placement would go next.
    fn take(start: usize, len: usize) {
        // SAFETY: NOREPLACE maps only free addresses.
        let got = unsafe { mmap(start, len, libc::PROT_NONE, libc::MAP_FIXED_NOREPLACE) };
        assert_eq!(got.map(<*mut u8>::addr), Some(start));
    }

    /// Whether `[start, start + len)` is mapped as `prot` (a write
    /// probe for RW: the pages are ours).
    fn writable(start: usize, len: usize) {
        // SAFETY: the caller's fresh RW mapping.
        unsafe { ptr::with_exposed_provenance_mut::<u8>(start).write_bytes(0x5a, len) };
    }

    #[test]
    #[cfg_attr(miri, ignore = "fork")]
    fn consecutive_aligned_mappings_take_one_call_each() {
        in_child_with_area(|area| {
            let (a, na) = map_counted(area, 16 * SPAN, 0, RW);
            let (b, nb) = map_counted(area, 16 * SPAN, 0, RW);
            let (c, nc) = map_counted(area, SPAN, 0, RW);
            assert_eq!((na, nb, nc), (1, 1, 1), "one mmap each");
            assert_eq!(b + 16 * SPAN, a, "the second right below the first");
            assert_eq!(c + SPAN, b);
            writable(a, 16 * SPAN);
            writable(c, SPAN);
            // A guarded large mapping: PROT_NONE, its base after the guard.
            let (g, ng) = map_counted(area, 3 * 4096 + 2 * 4096, 4096, libc::PROT_NONE);
            assert_eq!(ng, 1);
            assert!(g + 5 * 4096 <= c);
            // Unmapping the lowest gives its addresses back to the next.
            for _ in 0..3 {
                // As `unmap` does with the process's placement.
                area.released(g, 5 * 4096);
                // SAFETY: ours, unused.
                unsafe { munmap(ptr::with_exposed_provenance_mut(g), 5 * 4096) };
                let (again, n) = map_counted(area, 3 * 4096 + 2 * 4096, 4096, libc::PROT_NONE);
                assert_eq!((again, n), (g, 1), "reused");
            }
        });
    }

    #[test]
    #[cfg_attr(miri, ignore = "fork")]
    fn a_taken_range_falls_back_to_the_kernels_choice() {
        in_child_with_area(|area| {
            let (a, _) = map_counted(area, 4 * SPAN, 0, RW);
            // Someone else's mapping where the next range would go.
            let blocker = a - 4 * SPAN;
            take(blocker, 4 * SPAN);
            // SAFETY: errno is this thread's.
            unsafe { *libc::__errno_location() = 0 };
            let (b, nb) = map_counted(area, 4 * SPAN, 0, RW);
            assert!(nb > 1, "the placed mmap failed, the kernel chose");
            assert!(
                b + 4 * SPAN <= blocker || b >= blocker + 4 * SPAN,
                "clear of the blocker"
            );
            writable(b, 4 * SPAN);
            // SAFETY: as above.
            assert_eq!(unsafe { *libc::__errno_location() }, 0, "errno kept");
            // The area moved below: the next range is placed again.
            let (_, nc) = map_counted(area, 4 * SPAN, 0, RW);
            assert!(nc >= 1);
        });
    }

    #[test]
    #[cfg_attr(miri, ignore = "fork")]
    fn an_ignored_hint_is_checked() {
        in_child_with_area(|area| {
            // A kernel that takes NOREPLACE as a hint: on free addresses
            // the hint is followed, one call.
            hook::old_kernel(true);
            let (a, na) = map_counted(area, 4 * SPAN, 0, RW);
            assert_eq!(na, 1);
            // The next range taken: the kernel returns another range, which
            // is kept only if aligned.
            let blocker = a - 4 * SPAN;
            hook::old_kernel(false);
            take(blocker, 4 * SPAN);
            hook::old_kernel(true);
            for _ in 0..4 {
                let (b, _) = map_counted(area, 4 * SPAN, 0, RW);
                assert!(b + 4 * SPAN <= blocker || b >= blocker + 4 * SPAN);
                writable(b, 4 * SPAN);
            }
            hook::old_kernel(false);
        });
    }

    #[test]
    #[cfg_attr(miri, ignore = "fork")]
    fn no_memory_is_not_retried_elsewhere() {
        in_child_with_area(|area| {
            // More than the address space can hold: one failed call.
            let before = hook::calls();
            assert!(area.map(1 << 46, SPAN, 0, RW).is_none());
            assert_eq!(hook::calls() - before, 1);
            // The claim went back: the next range is right below the top.
            let (a, _) = map_counted(area, SPAN, 0, RW);
            assert_eq!(a + SPAN, area.top());
        });
    }
}
