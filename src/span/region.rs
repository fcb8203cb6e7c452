//! The region map: for every `SPAN`-sized granule of the address space,
//! whether a span or a large mapping of ours covers it (and a span's tag),
//! so that `owner` answers for any pointer without reading memory that may
//! be unmapped (see the parent module).

use super::*;

/// log2 of the granules one leaf of the region map covers: 2^16 entries
/// (128 KiB of reserved zero pages) for 2^(16 + SPAN_SHIFT) bytes of
/// address space, more than a process's mappings usually spread over.
pub(super) const LEAF_BITS: u32 = 16;
pub(super) const LEAF_GRANULES: usize = 1 << LEAF_BITS;
pub(super) const LEAF_BYTES: usize = LEAF_GRANULES * size_of::<u16>();
/// Bits of an address above a leaf's range.
pub(super) const LEAF_SHIFT: u32 = SPAN_SHIFT + LEAF_BITS;
pub(super) const ROOTS: usize = GRANULES / LEAF_GRANULES;

/// The region map: a root of leaf pointers (static, so a lookup needs no
/// mapping and no pointer to the map), and leaves of two bytes per granule
/// reserved when a span or large mapping first lands in their range and
/// never unmapped. A lookup loads the root entry, then the granule's entry:
/// as many dependent loads as a flat map behind a pointer, without
/// reserving the whole address space's map up front (128 MiB of address
/// space, more than a modest `ulimit -v` allows).
pub(super) static ROOTS_MAP: [AtomicPtr<AtomicU16>; ROOTS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; ROOTS];

/// The leaf of [`first_leaf_root`], in the bss: a process whose mappings
/// land in its range maps none (only the pages it marks are backed, as for a mapped
/// leaf).
#[repr(C, align(4096))]
pub(super) struct Leaf(pub(super) [AtomicU16; LEAF_GRANULES]);

// Out of the preload's ordered bss (malloc/build.rs), as meta's first
// chunks.
#[link_section = ".bss.pools_first"]
pub(super) static FIRST_LEAF: Leaf = Leaf([const { AtomicU16::new(0) }; LEAF_GRANULES]);

/// The root entry whose leaf is [`FIRST_LEAF`]: that of the top of the
/// area where `os::map_aligned` places mappings, where spans and large
/// mappings land in the common case (none when there is no such area).
pub(super) fn first_leaf_root() -> usize {
    os::placement_top().wrapping_sub(1) >> LEAF_SHIFT
}
/// The entry of granule `g` (`g < GRANULES`), if its leaf exists.
#[inline(always)]
pub(super) fn entry(g: usize) -> Option<&'static AtomicU16> {
    debug_assert!(g < GRANULES);
    // SAFETY: `g < GRANULES`, so its root index is below ROOTS.
    let root = unsafe { ROOTS_MAP.get_unchecked(g >> LEAF_BITS) };
    // Acquire: pairs with the Release CAS that published the leaf.
    let leaf = root.load(Acquire);
    if leaf.is_null() {
        return None;
    }
    // SAFETY: a published leaf is a live mapping (or the static leaf) of
    // LEAF_GRANULES zero-initialised u16s, never unmapped; AtomicU16 has
    // u16's layout.
    Some(unsafe { &*leaf.add(g & (LEAF_GRANULES - 1)) })
}

/// Makes sure the leaves covering `[base, base + len)` exist; `false` if
/// one could not be mapped (the range cannot be marked).
pub(super) fn cover(base: usize, len: usize) -> bool {
    let (first, last) = (base >> LEAF_SHIFT, (base + len - 1) >> LEAF_SHIFT);
    if last >= ROOTS {
        return false;
    }
    // Acquire: as in `entry`.
    (first..=last).all(|index| !ROOTS_MAP[index].load(Acquire).is_null() || add_leaf(index))
}

/// Publishes a leaf for root entry `index` (unless another thread did
/// first): the static leaf for the range where mappings are placed, a
/// mapped one elsewhere; `false` if none could be mapped.
#[cold]
fn add_leaf(index: usize) -> bool {
    let is_static = index == first_leaf_root();
    let fresh = if is_static {
        FIRST_LEAF.0.as_ptr().cast_mut()
    } else {
        match map_reserve(LEAF_BYTES) {
            Some(fresh) => fresh.cast::<AtomicU16>().as_ptr(),
            None => return false,
        }
    };
    // Release on success: publishes the fresh (zeroed) leaf; Relaxed on
    // failure: the winner's leaf is read through `entry`'s Acquire.
    if ROOTS_MAP[index]
        .compare_exchange(ptr::null_mut(), fresh, Release, Relaxed)
        .is_err()
        && !is_static
    {
        // SAFETY: our leaf was never published (a static one lost to
        // itself: only this root's entry takes it).
        unsafe { os::unmap(NonNull::new_unchecked(fresh.cast()), LEAF_BYTES) };
    }
    true
}

/// Reserves `len` bytes of zero pages backed only when written.
pub(super) fn map_reserve(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    NonNull::new(unsafe { os::mmap(0, len, os::RW, libc::MAP_NORESERVE) }?)
}

/// Marks the granules of `[base, base + len)` with `kind` (the first) and
/// `rest` (the others). Their leaves exist: [`cover`] said so before the
/// range was marked the first time, and leaves are never unmapped.
pub(super) fn mark(base: usize, len: usize, kind: u16, rest: u16) {
    let first = base >> SPAN_SHIFT;
    let last = (base + len - 1) >> SPAN_SHIFT;
    for g in first..=last {
        let e = entry(g);
        debug_assert!(e.is_some() || kind == FOREIGN, "granule {g} not covered");
        if let Some(e) = e {
            // Release: a reader that acquires the kind sees the header
            // written before it.
            e.store(if g == first { kind } else { rest }, Release);
        }
    }
}

/// Maps `len` bytes at an address aligned to `align` (a power of two, at
/// least SPAN): one `mmap` in the common case (`os::map_aligned`).
pub(super) fn map_aligned(len: usize, align: usize) -> Option<NonNull<u8>> {
    os::map_aligned(len, align, 0, os::RW)
}

/// Bytes of the inaccessible guard page on each side of a large mapping.
pub(super) const GUARD: usize = 4096;

/// Maps `len` bytes (a multiple of the page size) at an address aligned to
/// `align` (a power of two, at least SPAN), between two inaccessible guard
/// pages, [`GUARD`] bytes each (`PROT_NONE`: a linear overflow or underflow
/// out of the mapping faults). The whole range is mapped `PROT_NONE`,
/// placed as spans are (`os::map_aligned`: one `mmap` in the common case),
/// the middle made writable.
pub(super) fn map_guarded(len: usize, align: usize) -> Option<NonNull<u8>> {
    let total = len.checked_add(2 * GUARD)?;
    let raw = os::map_aligned(total, align, GUARD, libc::PROT_NONE)?;
    // SAFETY: the middle of the fresh mapping, which nobody else uses; the
    // whole of it on failure.
    unsafe {
        let base = raw.as_ptr().add(GUARD);
        if !os::mprotect(base, len, os::RW) {
            os::unmap(raw, total);
            return None;
        }
        Some(NonNull::new_unchecked(base))
    }
}

/// Unmaps a mapping of [`map_guarded`] (`len` bytes at `base`) with its
/// guard pages.
///
/// # Safety
/// The mapping is ours and nobody uses it any more.
pub(super) unsafe fn unmap_guarded(base: *mut u8, len: usize) {
    // SAFETY: the range is the mapping and its two guards (caller), never
    // null (the first guard is below `base`).
    unsafe {
        os::unmap(
            NonNull::new_unchecked(base.wrapping_sub(GUARD)),
            len + 2 * GUARD,
        )
    };
}

/// Unmaps only the two guard pages of a mapping of [`map_guarded`] (`len`
/// bytes at `base`), not the range between them: for a mapping whose pages
/// `mremap` moved away (or may have unmapped), where the range between the
/// guards is no longer ours and another thread's `mmap` may have been given
/// addresses in it since.
///
/// # Safety
/// The guard pages are ours and nobody uses them.
pub(super) unsafe fn unmap_guards(base: *mut u8, len: usize) {
    // SAFETY: the page before `base` and the page at `base + len` are the
    // mapping's guards (caller), each a range of its own.
    unsafe {
        os::munmap(base.wrapping_sub(GUARD), GUARD);
        os::munmap(base.wrapping_add(len), GUARD);
    }
}

/// Who owns `p`: a span object, a large block, or neither. Reads a header
/// only in a granule the region map says is ours, so it never touches
/// memory that may be unmapped.
#[inline]
pub fn owner(p: *const u8) -> Owner {
    match span_object(p) {
        Some(tag) => Owner::Span {
            tag: u32::from(tag),
        },
        None => other_owner(p as usize),
    }
}

/// The tag of the span object that starts at `p`, or `None` when `p` is
/// not the start of a span object (a large block, a pointer inside or past
/// an object, or nothing of ours). The LD_PRELOAD malloc's every `free` of
/// a small block asks this first, inline: it reads no memory but the
/// region map and its tag's [`Geometry`], and calls nothing.
#[inline(always)]
pub fn span_object(p: *const u8) -> Option<u8> {
    let addr = p as usize;
    let v = map_value(addr)?;
    if v & KIND_SPAN == 0 {
        return None;
    }
    // The low byte is the tag (MAX_TAGS is 256: no bounds check).
    let tag = usize::from(v) & 0xff;
    let g = &GEOMETRY[tag];
    // Relaxed: stored before the span was marked (see `map_value`).
    let (data, last, div) = (
        g.data.load(Relaxed),
        g.last.load(Relaxed),
        g.div.load(Relaxed),
    );
    // Offset from the first object: it wraps for an address in the header.
    let rel = ((addr & (SPAN - 1)) as u64).wrapping_sub(u64::from(data));
    // The start of an object: no further than the last one, and a multiple
    // of the size (so also aligned).
    (rel <= u64::from(last) && rel.wrapping_mul(div) < div).then_some(tag as u8)
}

/// The region map's value for the granule of `addr`, `None` if no leaf
/// covers it.
#[inline(always)]
fn map_value(addr: usize) -> Option<u16> {
    // The root entry's index is also the test of the address's range.
    let root = ROOTS_MAP.get(addr >> LEAF_SHIFT)?;
    // Acquire: as in `entry`.
    let leaf = root.load(Acquire);
    if leaf.is_null() {
        return None;
    }
    // SAFETY: as in `entry`.
    let e = unsafe { &*leaf.add((addr >> SPAN_SHIFT) & (LEAF_GRANULES - 1)) };
    // Acquire: pairs with `mark`'s Release, so the tag's geometry (or the
    // large mapping's header) is visible.
    Some(e.load(Acquire))
}

/// [`owner`] of an address that is not the start of a span object.
#[cold]
#[inline(never)]
fn other_owner(addr: usize) -> Owner {
    match map_value(addr) {
        Some(v) if v & KIND_SPAN == 0 => large_owner(v, addr),
        _ => Owner::Foreign,
    }
}

/// [`owner`] for an address whose granule holds no span (map value `v`).
#[cold]
#[inline(never)]
pub(super) fn large_owner(v: u16, addr: usize) -> Owner {
    if !(v == KIND_LARGE || v == KIND_LARGE_CONT) || !addr.is_multiple_of(os::OBJECT_ALIGN) {
        return Owner::Foreign;
    }
    // Counted while it reads a header: a thread that frees the block at the
    // same time (this lookup is then of a pointer the caller does not own,
    // which is reported) waits before unmapping it (`wait_header_readers`).
    HEADER_READERS.fetch_add(1, Relaxed);
    // SeqCst: either the unmapping thread's load after its own fence sees
    // our count, or our loads of the map after this fence see its unmark.
    fence(SeqCst);
    let owner = match large_base(addr) {
        Some(base) => {
            // SAFETY: the map says a large mapping starts at `base`, and it
            // stays mapped while we are counted (see above).
            let h = unsafe { &*base.cast::<LargeHeader>() };
            if h.magic == seal(h.map_len, h.user, h.usable) && h.user as usize == addr {
                Owner::Large { usable: h.usable }
            } else {
                Owner::Foreign
            }
        }
        None => Owner::Foreign,
    };
    // Release: our reads of the header happen before the unmapping thread's
    // Acquire load that sees the count drop.
    HEADER_READERS.fetch_sub(1, Release);
    owner
}

/// Whether `p` lies in a large mapping whose header has been written over
/// (its seal does not match its fields): for the message of a rejected
/// `free`. Reads the header as [`large_owner`] does.
#[cold]
pub fn large_header_corrupt(p: *const u8) -> bool {
    let addr = p as usize;
    // Relaxed and SeqCst: as in `large_owner`.
    HEADER_READERS.fetch_add(1, Relaxed);
    fence(SeqCst);
    let corrupt = large_base(addr).is_some_and(|base| {
        // SAFETY: the map says a large mapping starts at `base`, and it
        // stays mapped while we are counted.
        let h = unsafe { &*base.cast::<LargeHeader>() };
        h.magic != seal(h.map_len, h.user, h.usable)
    });
    // Release: as in `large_owner`.
    HEADER_READERS.fetch_sub(1, Release);
    corrupt
}

/// Lookups reading a large mapping's header now ([`large_owner`]).
pub(super) static HEADER_READERS: AtomicUsize = AtomicUsize::new(0);

/// Called after unmarking a large mapping and before unmapping (or moving)
/// it: waits until no lookup that may have seen it marked still reads its
/// header. A lookup counts itself for a few loads only.
pub(super) fn wait_header_readers() {
    // SeqCst: pairs with the fence in `large_owner` (see there).
    fence(SeqCst);
    let backoff = Backoff::new();
    // Acquire: see the Release in `large_owner`.
    while HEADER_READERS.load(Acquire) != 0 {
        backoff.snooze();
    }
}
