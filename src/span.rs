//! Spans: the backing allocator of the LD_PRELOAD malloc's size-class pools
//! (`os::Backend::Span`), and its mappings for requests above the largest
//! class. Nothing here calls `malloc`.
//!
//! A span is a [`SPAN`]-byte mapping aligned to its size. Its first bytes are
//! a [`SpanHeader`] (magic, tag, object size); objects follow, carved in
//! order by a bump pointer and recycled through a free list per tag when a
//! pool gives them back. So the span of any object is found by masking its
//! address, with no header in front of each object.
//!
//! A large mapping starts at a `SPAN`-aligned address with a
//! [`LargeHeader`]; the caller's block follows at the requested alignment.
//!
//! Before any header is read, the **region map** says whether the
//! `SPAN`-sized granule of an address is ours at all: one byte per granule
//! of the 47-bit user address space (64 MiB of reserved, lazily backed
//! zero pages). So a pointer that no span or large mapping owns is rejected
//! without reading memory that may be unmapped.

use crate::os;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8};
use crossbeam_utils::Backoff;

/// log2 of the span size and of the region map's granule.
pub(crate) const SPAN_SHIFT: u32 = 21;
/// Bytes per span (2 MiB), and the alignment of every mapping of ours.
pub(crate) const SPAN: usize = 1 << SPAN_SHIFT;
/// User addresses on x86-64 Linux (without 5-level opt-in) fit in 47 bits.
const ADDR_BITS: u32 = 47;
const GRANULES: usize = 1 << (ADDR_BITS - SPAN_SHIFT);

/// Most tags (size classes) spans serve.
pub(crate) const MAX_TAGS: usize = 64;

const SPAN_MAGIC: u64 = 0x7370_616e_706f_6f6c; // "spanpool"
const LARGE_MAGIC: u64 = 0x6c61_7267_706f_6f6c; // "largpool"

/// Region map values.
const FOREIGN: u8 = 0;
const KIND_SPAN: u8 = 1;
const KIND_LARGE: u8 = 2;
/// A later granule of a large mapping: its header is in an earlier one.
const KIND_LARGE_CONT: u8 = 3;

/// The start of every span.
#[repr(C)]
struct SpanHeader {
    magic: u64,
    tag: u32,
    /// Bytes per object (the pool's `obj_size`).
    obj_size: u32,
    /// Offset of the first object.
    data: u32,
    /// `u64::MAX / obj_size + 1`: `off * div <= div - 1` (wrapping) holds
    /// exactly when `obj_size` divides `off` (Lemire's divisibility test).
    div: u64,
}

/// The start of every large mapping.
#[repr(C)]
struct LargeHeader {
    magic: u64,
    /// Bytes mapped from the header on.
    map_len: usize,
    /// The caller's block, and its usable size.
    user: *mut u8,
    usable: usize,
}

/// Who owns an address, from [`owner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// An object of a span of this tag (the start of an object slot).
    Span { tag: u32 },
    /// The block of a large mapping, with its usable size.
    Large { usable: usize },
    /// Not a block we handed out: no mapping of ours, or not at the start
    /// of an object or block.
    Foreign,
}

// ---- region map ------------------------------------------------------------

static MAP: AtomicPtr<AtomicU8> = AtomicPtr::new(ptr::null_mut());

/// The region map, created on first use; `None` if it cannot be mapped.
fn region_map() -> Option<&'static [AtomicU8]> {
    // Acquire: pairs with the Release CAS that published the mapping.
    let mut m = MAP.load(Acquire);
    if m.is_null() {
        let fresh = map_reserve(GRANULES)?.cast::<AtomicU8>().as_ptr();
        // AcqRel on success: publish the fresh (zeroed) mapping; Acquire on
        // failure: take the winner's.
        match MAP.compare_exchange(ptr::null_mut(), fresh, Release, Acquire) {
            Ok(_) => m = fresh,
            Err(won) => {
                // SAFETY: our mapping was never published.
                unsafe { os::unmap(NonNull::new_unchecked(fresh.cast()), GRANULES) };
                m = won;
            }
        }
    }
    // SAFETY: a live mapping of GRANULES zero-initialised bytes, never
    // unmapped; AtomicU8 has the layout of u8.
    Some(unsafe { core::slice::from_raw_parts(m, GRANULES) })
}

/// The region map if it exists (a lookup never creates it).
fn region_map_if_any() -> Option<&'static [AtomicU8]> {
    // Acquire: as in `region_map`.
    let m = MAP.load(Acquire);
    // SAFETY: as in `region_map`.
    (!m.is_null()).then(|| unsafe { core::slice::from_raw_parts(m, GRANULES) })
}

/// Reserves `len` bytes of zero pages backed only when written.
fn map_reserve(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then(|| NonNull::new(p.cast()))?
}

/// Marks the granules of `[base, base + len)` with `kind` (the first) and
/// `rest` (the others).
fn mark(map: &[AtomicU8], base: usize, len: usize, kind: u8, rest: u8) {
    let first = base >> SPAN_SHIFT;
    let last = (base + len - 1) >> SPAN_SHIFT;
    for (g, entry) in map.iter().enumerate().take(last + 1).skip(first) {
        // Release: a reader that acquires the kind sees the header written
        // before it.
        entry.store(if g == first { kind } else { rest }, Release);
    }
}

/// Maps `len` bytes at an address aligned to `align` (a power of two, at
/// least SPAN), trimming the excess.
fn map_aligned(len: usize, align: usize) -> Option<NonNull<u8>> {
    let raw = os::map_zeroed(len.checked_add(align)?)?;
    let addr = raw.as_ptr() as usize;
    let base = addr.next_multiple_of(align);
    let head = base - addr;
    let tail = align - head;
    // SAFETY: the trimmed pieces lie inside the fresh mapping and are not
    // used; `head` and `tail` are multiples of the page size.
    unsafe {
        if head > 0 {
            libc::munmap(raw.as_ptr().cast(), head);
        }
        if tail > 0 {
            libc::munmap(raw.as_ptr().add(head + len).cast(), tail);
        }
        Some(NonNull::new_unchecked(raw.as_ptr().add(head)))
    }
}

// ---- spans -------------------------------------------------------------------

/// A lock that can be taken in a `pthread_atfork` prepare handler and
/// released in the parent and the child (a std mutex guard cannot).
struct SpinLock(AtomicBool);

impl SpinLock {
    fn lock(&self) {
        let backoff = Backoff::new();
        // Acquire: see what the previous holder wrote under the lock.
        while self
            .0
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            backoff.snooze();
        }
    }

    fn unlock(&self) {
        // Release: hand our writes to the next holder.
        self.0.store(false, Release);
    }
}

/// Carving state of one tag, under its lock.
struct TagState {
    lock: SpinLock,
    inner: core::cell::UnsafeCell<TagInner>,
}

struct TagInner {
    /// The span being carved (null before the first) and its next offset.
    span: *mut u8,
    next: usize,
    /// Objects given back, linked through their first word.
    free: *mut u8,
}

// SAFETY: `inner` is only touched under `lock`.
unsafe impl Sync for TagState {}

static TAGS: [TagState; MAX_TAGS] = [const {
    TagState {
        lock: SpinLock(AtomicBool::new(false)),
        inner: core::cell::UnsafeCell::new(TagInner {
            span: ptr::null_mut(),
            next: 0,
            free: ptr::null_mut(),
        }),
    }
}; MAX_TAGS];

/// Offset of the first object of a span of `obj_size`-byte objects: past
/// the header, and for a power-of-two size up to a page, aligned to the size
/// so that every object is (what `posix_memalign` relies on).
fn data_offset(obj_size: usize) -> usize {
    if obj_size.is_power_of_two() && obj_size <= 4096 {
        obj_size.max(128)
    } else {
        128
    }
}

/// One object of `obj_size` bytes from the spans of `tag`, or `None` when no
/// span can be mapped. Every call for one tag must pass the same size.
pub(crate) fn obtain(tag: u32, obj_size: usize) -> Option<NonNull<u8>> {
    let t = TAGS.get(tag as usize)?;
    debug_assert!(obj_size % os::OBJECT_ALIGN == 0 && obj_size <= SPAN / 8);
    t.lock.lock();
    // SAFETY: we hold the tag's lock.
    let st = unsafe { &mut *t.inner.get() };
    let p = obtain_locked(st, tag, obj_size);
    t.lock.unlock();
    p
}

fn obtain_locked(st: &mut TagInner, tag: u32, obj_size: usize) -> Option<NonNull<u8>> {
    if let Some(p) = NonNull::new(st.free) {
        // SAFETY: a free object holds the next one in its first word.
        st.free = unsafe { p.as_ptr().cast::<*mut u8>().read() };
        return Some(p);
    }
    if st.span.is_null() || st.next + obj_size > SPAN {
        st.span = new_span(tag, obj_size)?.as_ptr();
        st.next = data_offset(obj_size);
    }
    // SAFETY: `next + obj_size <= SPAN`: inside the span.
    let p = unsafe { st.span.add(st.next) };
    st.next += obj_size;
    NonNull::new(p)
}

fn new_span(tag: u32, obj_size: usize) -> Option<NonNull<u8>> {
    let map = region_map()?;
    let base = map_aligned(SPAN, SPAN)?;
    // SAFETY: a fresh, writable, SPAN-aligned mapping of SPAN bytes.
    unsafe {
        base.as_ptr().cast::<SpanHeader>().write(SpanHeader {
            magic: SPAN_MAGIC,
            tag,
            obj_size: obj_size as u32,
            data: data_offset(obj_size) as u32,
            div: u64::MAX / obj_size as u64 + 1,
        })
    };
    mark(map, base.as_ptr() as usize, SPAN, KIND_SPAN, KIND_SPAN);
    Some(base)
}

/// Takes back an object of [`obtain`], for reuse by the same tag.
///
/// # Safety
/// `p` came from `obtain(tag, _)` and is not used any more.
pub(crate) unsafe fn release(tag: u32, p: NonNull<u8>) {
    let t = &TAGS[tag as usize];
    t.lock.lock();
    // SAFETY: we hold the tag's lock; the object is ours (caller).
    unsafe {
        let st = &mut *t.inner.get();
        p.as_ptr().cast::<*mut u8>().write(st.free);
        st.free = p.as_ptr();
    }
    t.lock.unlock();
}

// ---- large mappings -----------------------------------------------------------

/// A block of `size` bytes aligned to `align` (a power of two) in a mapping
/// of its own, zeroed; `None` when it cannot be mapped or the size overflows.
pub fn large_obtain(size: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two());
    let map = region_map()?;
    let off = size_of::<LargeHeader>().next_multiple_of(align.max(16));
    // At least one byte past `off`, so the block lies inside the mapping.
    let len = off
        .checked_add(size.max(1))?
        .checked_next_multiple_of(4096)?;
    let base = map_aligned(len, align.max(SPAN))?;
    // SAFETY: `off + size <= len`: inside the fresh mapping.
    let user = unsafe { base.as_ptr().add(off) };
    // SAFETY: the header lies at the start of the fresh writable mapping.
    unsafe {
        base.as_ptr().cast::<LargeHeader>().write(LargeHeader {
            magic: LARGE_MAGIC,
            map_len: len,
            user,
            usable: len - off,
        })
    };
    mark(
        map,
        base.as_ptr() as usize,
        len,
        KIND_LARGE,
        KIND_LARGE_CONT,
    );
    NonNull::new(user)
}

/// Where a block of `large_obtain(size, align)` with `align <= 16` starts in
/// its mapping: its mapping is `large_offset() + usable` bytes from a
/// [`large_align`]-aligned base, so a caller that asks for `len -
/// large_offset()` bytes (`len` a multiple of 4096) gets a mapping of
/// exactly `len` bytes. (Functions, not constants: cbindgen would copy
/// constants into the C header.)
#[inline]
pub const fn large_offset() -> usize {
    size_of::<LargeHeader>().next_multiple_of(16)
}

/// Every large mapping starts at a multiple of this (the span size).
#[inline]
pub const fn large_align() -> usize {
    SPAN
}

/// Resizes the large block `p` to at least `size` bytes without copying:
/// shrinks its mapping in place, grows it in place when the addresses after
/// it are free, or else moves its pages with `mremap` to a fresh
/// `SPAN`-aligned range. Returns the block's (possibly new) address, whose
/// contents up to `min(old usable, size)` are the old ones and whose usable
/// size [`owner`] reports; `None` (the block untouched, still at `p`) when
/// the size overflows or the kernel refuses. The block keeps its offset in
/// the mapping; after a move only the 16-byte alignment is kept.
///
/// # Safety
/// `p` is a live block of [`large_obtain`] (as [`owner`] says) that the
/// caller owns: no other thread uses or frees it meanwhile.
pub unsafe fn large_resize(p: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
    let map = region_map_if_any()?;
    let base = large_base(map, p.as_ptr() as usize)?;
    let h = base.cast::<LargeHeader>();
    // SAFETY: a large mapping's header is at its base; the block is the
    // caller's, so nobody changes the header meanwhile.
    let (old_len, user) = unsafe { ((*h).map_len, (*h).user) };
    let off = user as usize - base as usize;
    let new_len = off
        .checked_add(size.max(1))?
        .checked_next_multiple_of(4096)?;
    let b = base as usize;
    // The new base, and whether its granules must be marked (after the
    // header is rewritten, so that a reader acquiring the kind sees it).
    let (new_base, to_mark) = if new_len == old_len {
        (base, false)
    } else if new_len < old_len {
        // Unmark the granules that no longer hold any of the mapping first:
        // once unmapped, their addresses may be mapped again by anyone.
        let keep_last = (b + new_len - 1) >> SPAN_SHIFT;
        let old_last = (b + old_len - 1) >> SPAN_SHIFT;
        if old_last > keep_last {
            let from = (keep_last + 1) << SPAN_SHIFT;
            mark(map, from, b + old_len - from, FOREIGN, FOREIGN);
        }
        // SAFETY: shrinking our own mapping in place (no MAYMOVE): the
        // pages cut off belong to this block, which nobody else uses.
        let r = unsafe { libc::mremap(base.cast(), old_len, new_len, 0) };
        if r != base.cast() {
            mark(map, b, old_len, KIND_LARGE, KIND_LARGE_CONT);
            return None;
        }
        (base, false)
    } else {
        // SAFETY: growing our own mapping in place (no MAYMOVE): the kernel
        // only extends it over addresses nobody has mapped.
        let r = unsafe { libc::mremap(base.cast(), old_len, new_len, 0) };
        if r == base.cast() {
            (base, true)
        } else {
            // A SPAN-aligned range of the new length, for the header lookup.
            let dest = map_aligned(new_len, SPAN)?;
            // Unmark the old range first: once moved, its addresses may be
            // mapped again by anyone.
            mark(map, b, old_len, FOREIGN, FOREIGN);
            // SAFETY: moves the pages of our own mapping (nobody else uses
            // the block) over `dest`, a fresh mapping of ours of `new_len`
            // bytes, which MREMAP_FIXED replaces.
            let r = unsafe {
                libc::mremap(
                    base.cast(),
                    old_len,
                    new_len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    dest.as_ptr().cast::<libc::c_void>(),
                )
            };
            if r != dest.as_ptr().cast() {
                // SAFETY: `dest` is still our fresh, unused mapping.
                unsafe { os::unmap(dest, new_len) };
                mark(map, b, old_len, KIND_LARGE, KIND_LARGE_CONT);
                return None;
            }
            (dest.as_ptr(), true)
        }
    };
    // SAFETY: the header moved with the mapping's first page; `off +
    // size <= new_len`: the block lies inside the mapping.
    let user = unsafe {
        let h = new_base.cast::<LargeHeader>();
        (*h).map_len = new_len;
        (*h).user = new_base.add(off);
        (*h).usable = new_len - off;
        (*h).user
    };
    if to_mark {
        mark(map, new_base as usize, new_len, KIND_LARGE, KIND_LARGE_CONT);
    }
    NonNull::new(user)
}

/// Unmaps a block of [`large_obtain`].
///
/// # Safety
/// `p` came from `large_obtain` (as [`owner`] says) and is not used any more.
pub unsafe fn large_release(p: NonNull<u8>) {
    let Some(map) = region_map_if_any() else {
        return;
    };
    let Some(base) = large_base(map, p.as_ptr() as usize) else {
        return;
    };
    // SAFETY: a large mapping's header is at its base (caller's contract).
    let len = unsafe { (*base.cast::<LargeHeader>()).map_len };
    // Unmark first: once unmapped, the range may be mapped again by anyone.
    mark(map, base as usize, len, FOREIGN, FOREIGN);
    // SAFETY: the whole mapping is this block's, which nobody uses now.
    unsafe { os::unmap(NonNull::new_unchecked(base), len) };
}

/// The base of the large mapping whose granules cover `addr`.
fn large_base(map: &[AtomicU8], addr: usize) -> Option<*mut u8> {
    let mut g = addr >> SPAN_SHIFT;
    loop {
        // Acquire: pairs with `mark`, so the header is visible.
        match map[g].load(Acquire) {
            KIND_LARGE => return Some(ptr::with_exposed_provenance_mut(g << SPAN_SHIFT)),
            KIND_LARGE_CONT if g > 0 => g -= 1,
            _ => return None,
        }
    }
}

// ---- lookup --------------------------------------------------------------------

/// Who owns `p`: a span object, a large block, or neither. Reads a header
/// only in a granule the region map says is ours, so it never touches
/// memory that may be unmapped.
pub fn owner(p: *const u8) -> Owner {
    let addr = p as usize;
    if addr >> ADDR_BITS != 0 || addr % os::OBJECT_ALIGN != 0 {
        return Owner::Foreign;
    }
    let Some(map) = region_map_if_any() else {
        return Owner::Foreign;
    };
    // Acquire: pairs with `mark`'s Release, so the header is visible.
    match map[addr >> SPAN_SHIFT].load(Acquire) {
        KIND_SPAN => {
            let base = addr & !(SPAN - 1);
            // SAFETY: the map says a span starts at `base`: mapped, with a
            // header written before the span was marked.
            let h = unsafe { &*ptr::with_exposed_provenance::<SpanHeader>(base) };
            let off = (addr - base) as u64;
            let data = u64::from(h.data);
            let rel = off.wrapping_sub(data);
            if h.magic != SPAN_MAGIC
                || off < data
                || rel + u64::from(h.obj_size) > SPAN as u64
                || rel.wrapping_mul(h.div) > h.div - 1
            {
                return Owner::Foreign;
            }
            Owner::Span { tag: h.tag }
        }
        KIND_LARGE | KIND_LARGE_CONT => {
            let Some(base) = large_base(map, addr) else {
                return Owner::Foreign;
            };
            // SAFETY: the map says a large mapping starts at `base`.
            let h = unsafe { &*base.cast::<LargeHeader>() };
            if h.magic == LARGE_MAGIC && h.user as usize == addr {
                Owner::Large { usable: h.usable }
            } else {
                Owner::Foreign
            }
        }
        _ => Owner::Foreign,
    }
}

// ---- fork ------------------------------------------------------------------------

/// Takes every tag's lock, so that no span state is mid-change at `fork()`.
pub(crate) fn fork_prepare() {
    TAGS.iter().for_each(|t| t.lock.lock());
}

/// Releases what [`fork_prepare`] took (in the parent and in the child).
pub(crate) fn fork_release() {
    TAGS.iter().for_each(|t| t.lock.unlock());
}

#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn span_objects_are_found_by_their_address() {
        let tag = MAX_TAGS as u32 - 1;
        let objs: Vec<_> = (0..3000).map(|_| obtain(tag, 1040).unwrap()).collect();
        for &o in &objs {
            assert_eq!(owner(o.as_ptr()), Owner::Span { tag });
            // Inside an object, not at its start: not a block we gave out.
            assert_eq!(owner(o.as_ptr().wrapping_add(16)), Owner::Foreign);
        }
        for o in objs {
            // SAFETY: each object is given back once.
            unsafe { release(tag, o) };
        }
        let again = obtain(tag, 1040).unwrap();
        assert_eq!(owner(again.as_ptr()), Owner::Span { tag });
    }

    #[test]
    fn power_of_two_objects_are_aligned_to_their_size() {
        let tag = MAX_TAGS as u32 - 2;
        for _ in 0..600 {
            let o = obtain(tag, 4096).unwrap();
            assert_eq!(o.as_ptr() as usize % 4096, 0);
        }
    }

    #[test]
    fn large_blocks_are_found_and_unmapped() {
        for (size, align) in [(40_000usize, 16usize), (5 << 20, 64), (100, 8 << 20)] {
            let p = large_obtain(size, align).unwrap();
            assert_eq!(p.as_ptr() as usize % align, 0);
            match owner(p.as_ptr()) {
                Owner::Large { usable } => assert!(usable >= size),
                o => panic!("{o:?}"),
            }
            assert_eq!(owner(p.as_ptr().wrapping_add(4096)), Owner::Foreign);
            // SAFETY: `size` writable bytes, released once.
            unsafe {
                p.as_ptr().write_bytes(1, size);
                large_release(p);
            }
            assert_eq!(owner(p.as_ptr()), Owner::Foreign);
        }
    }

    #[test]
    fn large_blocks_resize_keeping_their_contents() {
        let mut p = large_obtain(100_000, 16).unwrap();
        let fill = |p: NonNull<u8>, n: usize| {
            // SAFETY: `n` writable bytes of a live block.
            unsafe { (0..n).for_each(|i| p.as_ptr().add(i).write(i as u8 ^ (i >> 12) as u8)) }
        };
        let check = |p: NonNull<u8>, n: usize| {
            // SAFETY: `n` readable bytes of a live block.
            (0..n).all(|i| unsafe { p.as_ptr().add(i).read() } == i as u8 ^ (i >> 12) as u8)
        };
        fill(p, 100_000);
        let mut kept = 100_000;
        // Grow past several granules (in place or moved), then shrink.
        for size in [3 << 20, 9 << 20, 5 << 20, 50_000, 7 << 20] {
            // SAFETY: a live large block of ours, resized by its owner.
            p = unsafe { large_resize(p, size) }.unwrap();
            kept = kept.min(size);
            assert!(check(p, kept), "contents lost at {size}");
            match owner(p.as_ptr()) {
                Owner::Large { usable } => assert!(usable >= size && usable < size + 8192),
                o => panic!("{o:?}"),
            }
            fill(p, size);
            kept = size;
        }
        // SAFETY: released once.
        unsafe { large_release(p) };
        assert_eq!(owner(p.as_ptr()), Owner::Foreign);
    }

    #[test]
    fn foreign_pointers_are_rejected() {
        let x = Box::new([0u64; 4]);
        assert_eq!(owner(ptr::from_ref(&*x).cast()), Owner::Foreign);
        assert_eq!(owner(ptr::null()), Owner::Foreign);
        assert_eq!(
            owner(ptr::with_exposed_provenance(usize::MAX & !15)),
            Owner::Foreign
        );
    }
}
