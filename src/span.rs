//! Spans: the backing allocator of the LD_PRELOAD malloc's size-class pools
//! and of libpools' own pools of small objects (`backing::Backend::Span`), and
//! the mappings for requests above the largest malloc class. Nothing here
//! calls `malloc`.
//!
//! A span is a [`SPAN`]-byte mapping aligned to its size. Its first bytes are
//! a [`SpanHeader`] (the span's own free list and count of live objects);
//! objects follow, carved in order by a bump pointer and recycled through the
//! span's free list. So the span of any object is found by masking its
//! address, with no header in front of each object; its tag (its object
//! size) is in the region map.
//!
//! A *tag* is one object size: the malloc's classes reserve theirs by number
//! ([`reserve`]), other pools get one per object size on demand
//! ([`tag_for_size`]). Each tag has a spinlock (the slow path: objects reach
//! spans only when the thread and shared caches miss or overflow), a list of
//! its spans with room, and at most one empty spare span. A span whose last
//! live object comes back is unmarked and unmapped, unless it becomes the
//! spare; [`trim`] (from `pool_gc`) unmaps the spares.
//!
//! A large mapping starts at a `SPAN`-aligned address with a
//! [`LargeHeader`]; the caller's block follows at the requested alignment.
//!
//! Before any header is read, the **region map** says whether the
//! `SPAN`-sized granule of an address is ours at all: two bytes per granule,
//! in leaves of 128 KiB (each covering 16 GiB of addresses) reserved when a
//! mapping of ours first lands in their range, under a static root. So a
//! pointer that no span or large mapping owns is rejected without reading
//! memory that may be unmapped. Spans and large mappings are unmarked before
//! they are unmapped (and a lookup reading a large mapping's header is
//! waited for). A span's entry also holds its tag, so [`owner`] (on every
//! `free` of the LD_PRELOAD malloc) reads no span header: headers sit at
//! `SPAN`-aligned addresses, which all compete for the same few sets of the
//! CPU caches, and reading them missed often enough to be the largest cost
//! of `free` in the larson benchmark.
//!
//! Sizes are chosen for small address spaces (`ulimit -v`, containers): a
//! span is 256 KiB (a short process touches a few dozen classes, one span
//! each at least), spans are mapped 16 at a time (4 MiB) or one at a time
//! when that fails, and nothing is reserved up front but what is used.

use crate::sync::SpinLock;
use crate::{links, options, os};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use core::sync::atomic::{fence, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicUsize};
use crossbeam_utils::Backoff;

/// log2 of the span size and of the region map's granule.
pub(crate) const SPAN_SHIFT: u32 = 18;
/// Bytes per span (256 KiB), and the alignment of every mapping of ours.
pub(crate) const SPAN: usize = 1 << SPAN_SHIFT;
/// User addresses on x86-64 Linux (without 5-level opt-in) fit in 47 bits.
const ADDR_BITS: u32 = 47;
const GRANULES: usize = 1 << (ADDR_BITS - SPAN_SHIFT);

/// Most tags (object sizes) spans serve.
pub(crate) const MAX_TAGS: usize = 256;
/// Tags below this are numbered by their user ([`reserve`]: the LD_PRELOAD
/// malloc's size classes); the others are bound by size ([`tag_for_size`]).
pub(crate) const RESERVED_TAGS: usize = 64;

const LARGE_MAGIC: u64 = 0x6c61_7267_706f_6f6c; // "largpool"

/// Region map values.
const FOREIGN: u16 = 0;
const KIND_LARGE: u16 = 2;
/// A later granule of a large mapping: its header is in an earlier one.
const KIND_LARGE_CONT: u16 = 3;
/// A span: this bit, or'ed with the span's tag.
const KIND_SPAN: u16 = 0x100;
const _: () = assert!(MAX_TAGS == 0x100);

/// The start of every span. Everything but `state` is written once, before
/// the span is marked in the region map.
#[repr(C)]
struct SpanHeader {
    /// Offset of the first object.
    data: u32,
    /// Objects the span holds: `(SPAN - data) / obj_size`.
    capacity: u32,
    /// Under the tag's lock only.
    state: UnsafeCell<SpanState>,
}

/// The part of a span header that changes, under its tag's lock.
struct SpanState {
    /// Objects given back, linked through their first word (protected:
    /// see `links`; every link is checked when its object is popped).
    free: *mut u8,
    /// Offset of the next object never handed out.
    bump: usize,
    /// Objects handed out and not released.
    live: usize,
    /// Links in the tag's list of spans with room, and whether it is in.
    prev: *mut SpanHeader,
    next: *mut SpanHeader,
    listed: bool,
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

/// The first word of a large mapping's header: [`LARGE_MAGIC`] mixed with
/// the other fields, so that a write over any of them (an underflow out of
/// the block) is seen when the block is freed or resized.
#[inline]
fn seal(map_len: usize, user: *mut u8, usable: usize) -> u64 {
    LARGE_MAGIC ^ map_len as u64 ^ (user as u64).rotate_left(21) ^ (usable as u64).rotate_left(42)
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

/// log2 of the granules one leaf of the region map covers: 2^16 entries
/// (128 KiB of reserved zero pages) for 2^(16 + SPAN_SHIFT) bytes of
/// address space, more than a process's mappings usually spread over.
const LEAF_BITS: u32 = 16;
const LEAF_GRANULES: usize = 1 << LEAF_BITS;
const LEAF_BYTES: usize = LEAF_GRANULES * size_of::<u16>();
/// Bits of an address above a leaf's range.
const LEAF_SHIFT: u32 = SPAN_SHIFT + LEAF_BITS;
const ROOTS: usize = GRANULES / LEAF_GRANULES;

/// The region map: a root of leaf pointers (static, so a lookup needs no
/// mapping and no pointer to the map), and leaves of two bytes per granule
/// reserved when a span or large mapping first lands in their range and
/// never unmapped. A lookup loads the root entry, then the granule's entry:
/// as many dependent loads as a flat map behind a pointer, without
/// reserving the whole address space's map up front (128 MiB of address
/// space, more than a modest `ulimit -v` allows).
static ROOTS_MAP: [AtomicPtr<AtomicU16>; ROOTS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; ROOTS];

/// The entry of granule `g` (`g < GRANULES`), if its leaf exists.
#[inline(always)]
fn entry(g: usize) -> Option<&'static AtomicU16> {
    debug_assert!(g < GRANULES);
    // SAFETY: `g < GRANULES`, so its root index is below ROOTS.
    let root = unsafe { ROOTS_MAP.get_unchecked(g >> LEAF_BITS) };
    // Acquire: pairs with the Release CAS that published the leaf.
    let leaf = root.load(Acquire);
    if leaf.is_null() {
        return None;
    }
    // SAFETY: a published leaf is a live mapping of LEAF_GRANULES
    // zero-initialised u16s, never unmapped; AtomicU16 has u16's layout.
    Some(unsafe { &*leaf.add(g & (LEAF_GRANULES - 1)) })
}

/// Makes sure the leaves covering `[base, base + len)` exist; `false` if
/// one could not be mapped (the range cannot be marked).
fn cover(base: usize, len: usize) -> bool {
    let (first, last) = (base >> LEAF_SHIFT, (base + len - 1) >> LEAF_SHIFT);
    if last >= ROOTS {
        return false;
    }
    for root in &ROOTS_MAP[first..=last] {
        // Acquire: as in `entry`.
        if !root.load(Acquire).is_null() {
            continue;
        }
        let Some(fresh) = map_reserve(LEAF_BYTES) else {
            return false;
        };
        let fresh = fresh.cast::<AtomicU16>().as_ptr();
        // Release on success: publishes the fresh (zeroed) leaf; Relaxed on
        // failure: the winner's leaf is read through `entry`'s Acquire.
        if root
            .compare_exchange(ptr::null_mut(), fresh, Release, Relaxed)
            .is_err()
        {
            // SAFETY: our leaf was never published.
            unsafe { os::unmap(NonNull::new_unchecked(fresh.cast()), LEAF_BYTES) };
        }
    }
    true
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
/// `rest` (the others). Their leaves exist: [`cover`] said so before the
/// range was marked the first time, and leaves are never unmapped.
fn mark(base: usize, len: usize, kind: u16, rest: u16) {
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

/// Bytes of the inaccessible guard page on each side of a large mapping.
const GUARD: usize = 4096;

/// Maps `len` bytes (a multiple of the page size) at an address aligned to
/// `align` (a power of two, at least SPAN), between two inaccessible guard
/// pages, [`GUARD`] bytes each (`PROT_NONE`: a linear overflow or underflow
/// out of the mapping faults). The whole range is reserved `PROT_NONE`, the
/// middle made writable, the excess trimmed.
fn map_guarded(len: usize, align: usize) -> Option<NonNull<u8>> {
    let total = len.checked_add(align)?.checked_add(GUARD)?;
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing touches no existing memory.
    let raw = unsafe {
        libc::mmap(
            ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let addr = raw as usize;
    // At least GUARD bytes below the base, and (GUARD being a page and all
    // of these multiples of it) GUARD bytes above its end, inside `raw`.
    let base = (addr + GUARD).next_multiple_of(align);
    let (lo, hi, end) = (base - GUARD, base + len + GUARD, addr + total);
    // SAFETY: every range below lies inside the fresh mapping, which nobody
    // else uses; all are multiples of the page size.
    unsafe {
        if libc::mprotect(
            ptr::with_exposed_provenance_mut(base),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        ) != 0
        {
            libc::munmap(raw, total);
            return None;
        }
        if lo > addr {
            libc::munmap(raw, lo - addr);
        }
        if end > hi {
            libc::munmap(ptr::with_exposed_provenance_mut(hi), end - hi);
        }
    }
    NonNull::new(ptr::with_exposed_provenance_mut(base))
}

/// Unmaps a mapping of [`map_guarded`] (`len` bytes at `base`) with its
/// guard pages.
///
/// # Safety
/// The mapping is ours and nobody uses it any more.
unsafe fn unmap_guarded(base: *mut u8, len: usize) {
    // SAFETY: the range is the mapping and its two guards (caller).
    unsafe { libc::munmap(base.wrapping_sub(GUARD).cast(), len + 2 * GUARD) };
}

// ---- spans -------------------------------------------------------------------

/// State of one tag, under its lock.
struct TagState {
    lock: SpinLock,
    inner: UnsafeCell<TagInner>,
}

struct TagInner {
    /// Spans with room and at least one live object, linked through their
    /// `SpanState::prev`/`next`. `obtain` takes from the first; a span that
    /// regains room (its first free after being full) is pushed in front.
    avail: *mut SpanHeader,
    /// An empty span kept mapped so that a tag oscillating around a span
    /// boundary does not map and unmap at every turn; [`trim`] drops it.
    spare: *mut SpanHeader,
    /// Spans mapped (the spare included) and objects handed out.
    spans: usize,
    live: usize,
}

// SAFETY: `inner` is only touched under `lock`.
unsafe impl Sync for TagState {}

static TAGS: [TagState; MAX_TAGS] = [const {
    TagState {
        lock: SpinLock::new(),
        inner: UnsafeCell::new(TagInner {
            avail: ptr::null_mut(),
            spare: ptr::null_mut(),
            spans: 0,
            live: 0,
        }),
    }
}; MAX_TAGS];

/// Object size of each tag (a multiple of `OBJECT_ALIGN`), 0 while unbound.
/// A tag is bound once and keeps its size for the life of the process.
//
// Relaxed on every access: each entry is one word written once (0 to its
// size); readers need only that value (coherence of one location), and a
// caller of `obtain` learnt its tag through whatever published the pool,
// which happens after the binding.
static SIZES: [AtomicU32; MAX_TAGS] = [const { AtomicU32::new(0) }; MAX_TAGS];

/// What [`owner`] needs of a tag's spans, so that it reads no span header:
/// where objects start and how large they are, and `u64::MAX / size + 1`
/// to test whether `size` divides an offset without a division (`off * div
/// <= div - 1`, wrapping, holds exactly then: Lemire's divisibility test).
/// Written by `new_span` under the tag's lock, before it marks the span
/// (always the same values for a tag), and read by `owner` after it
/// acquired the mark.
struct Geometry {
    /// `data << 32 | size`.
    data_size: AtomicU64,
    div: AtomicU64,
}

static GEOMETRY: [Geometry; MAX_TAGS] = [const {
    Geometry {
        data_size: AtomicU64::new(0),
        div: AtomicU64::new(0),
    }
}; MAX_TAGS];

/// The object size spans use for objects of `obj_size` bytes: a multiple of
/// `OBJECT_ALIGN`, or `None` beyond `SPAN / 8` (or 0).
fn stride(obj_size: usize) -> Option<u32> {
    let s = obj_size.checked_next_multiple_of(os::OBJECT_ALIGN)?;
    (s != 0 && s <= SPAN / 8).then_some(s as u32)
}

/// Binds `tag`, one of the first [`RESERVED_TAGS`] (numbered by their user:
/// the LD_PRELOAD malloc's size classes), to objects of `obj_size` bytes.
/// `false` if the tag is out of that range, the size unsupported, or the tag
/// bound to another size.
pub(crate) fn reserve(tag: u32, obj_size: usize) -> bool {
    let Some(size) = stride(obj_size) else {
        return false;
    };
    let Some(slot) = SIZES[..RESERVED_TAGS].get(tag as usize) else {
        return false;
    };
    // Relaxed: see SIZES.
    match slot.compare_exchange(0, size, Relaxed, Relaxed) {
        Ok(_) => true,
        Err(bound) => bound == size,
    }
}

/// The tag serving objects of `obj_size` bytes, shared by every caller with
/// the same rounded size and bound on first use, from the tags above
/// [`RESERVED_TAGS`]. `None` when every tag is bound to other sizes or the
/// size is above `SPAN / 8`.
pub(crate) fn tag_for_size(obj_size: usize) -> Option<u32> {
    let size = stride(obj_size)?;
    // Tags are bound in index order and never unbound, so a size already
    // bound is met before the first unbound tag; two threads binding the
    // same size race on that first tag's CAS and the loser sees the
    // winner's size.
    for (tag, slot) in SIZES.iter().enumerate().skip(RESERVED_TAGS) {
        // Relaxed: see SIZES.
        match slot.compare_exchange(0, size, Relaxed, Relaxed) {
            Ok(_) => return Some(tag as u32),
            Err(bound) if bound == size => return Some(tag as u32),
            Err(_) => {}
        }
    }
    None
}

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

const _: () = assert!(size_of::<SpanHeader>() <= 128);

/// The mutable state of span `s`.
///
/// # Safety
/// `s` is a mapped span of the tag whose lock the caller holds, and no other
/// reference to its state is alive.
unsafe fn state<'a>(s: *mut SpanHeader) -> &'a mut SpanState {
    // SAFETY: the state is only touched under the tag's lock (caller).
    unsafe { &mut *(*s).state.get() }
}

/// Puts span `s` first in its tag's list of spans with room.
///
/// # Safety
/// Under the tag's lock; `s` is a mapped span of the tag, not listed.
unsafe fn push_avail(st: &mut TagInner, s: *mut SpanHeader) {
    // SAFETY: under the lock; `s` and the old head are mapped spans of the
    // tag (listed spans are never unmapped).
    unsafe {
        let ss = state(s);
        debug_assert!(!ss.listed);
        ss.prev = ptr::null_mut();
        ss.next = st.avail;
        ss.listed = true;
        if !st.avail.is_null() {
            state(st.avail).prev = s;
        }
    }
    st.avail = s;
}

/// Takes span `s` out of its tag's list of spans with room.
///
/// # Safety
/// Under the tag's lock; `s` is a listed span of the tag.
unsafe fn unlink_avail(st: &mut TagInner, s: *mut SpanHeader) {
    // SAFETY: under the lock; `s` and its neighbours are listed, mapped
    // spans of the tag.
    unsafe {
        let ss = state(s);
        debug_assert!(ss.listed);
        let (prev, next) = (ss.prev, ss.next);
        if prev.is_null() {
            st.avail = next;
        } else {
            state(prev).next = next;
        }
        if !next.is_null() {
            state(next).prev = prev;
        }
        ss.prev = ptr::null_mut();
        ss.next = ptr::null_mut();
        ss.listed = false;
    }
}

/// One object of `obj_size` bytes from the spans of `tag`, or `None` when no
/// span can be mapped. The tag was bound ([`reserve`], [`tag_for_size`]) to
/// a size of at least `obj_size`.
///
/// Counters: the span's and the tag's live objects grow by one.
pub(crate) fn obtain(tag: u32, obj_size: usize) -> Option<NonNull<u8>> {
    let t = TAGS.get(tag as usize)?;
    // Relaxed: see SIZES.
    let size = SIZES[tag as usize].load(Relaxed) as usize;
    if size == 0 || obj_size > size {
        debug_assert!(false, "tag {tag} is bound to {size}, not {obj_size}");
        return None;
    }
    t.lock.lock();
    // SAFETY: we hold the tag's lock.
    let p = unsafe { obtain_locked(&mut *t.inner.get(), tag, size) };
    t.lock.unlock();
    p
}

/// Takes an object from the first span with room; when none has, reuses the
/// spare or maps a new span.
///
/// Why the first span, and why a span that regains room goes in front: a
/// span leaves the list when full and comes back at its first release, so
/// the front is the span that was full most recently, which has at most a
/// few free slots: this approximates "fullest first" in O(1) under a
/// spinlock. Spans deeper in the list are not allocated from while the front
/// absorbs allocations, so their objects keep coming back until they empty
/// and are unmapped; the front's memory is also the most recently touched.
///
/// # Safety
/// Under the lock of `tag`, bound to `size`.
unsafe fn obtain_locked(st: &mut TagInner, tag: u32, size: usize) -> Option<NonNull<u8>> {
    let mut s = st.avail;
    if s.is_null() {
        s = if st.spare.is_null() {
            let fresh = new_span(tag, size)?.as_ptr();
            st.spans += 1;
            fresh
        } else {
            core::mem::replace(&mut st.spare, ptr::null_mut())
        };
        // SAFETY: under the lock; an empty span is never listed.
        unsafe { push_avail(st, s) };
    }
    // SAFETY: under the lock; listed spans are mapped spans of this tag.
    let ss = unsafe { state(s) };
    // SAFETY: `s` is mapped.
    if ss.free.is_null() && ss.bump == unsafe { (*s).data } as usize && options::random_order() {
        // SAFETY: under the lock; `s` is an empty span of `size`-byte objects.
        unsafe { carve_shuffled(s, ss, size) };
    }
    let p = if let Some(p) = NonNull::new(ss.free) {
        let at = p.as_ptr().cast::<*mut u8>();
        // SAFETY: a free object of this span (checked when it became the
        // head) holds the next one in its first word, protected.
        ss.free = links::reveal(at, unsafe { at.read() });
        // SAFETY: under the lock; `s` is a mapped span of this tag.
        unsafe { check_free_link(s, at, ss.free, size, ss.bump) };
        p
    } else {
        // A listed span has room: no free object, so the bump pointer
        // still has `size` bytes before the span's end.
        debug_assert!(ss.bump + size <= SPAN);
        // SAFETY: `bump + size <= SPAN`: inside the span.
        let p = unsafe { s.cast::<u8>().add(ss.bump) };
        ss.bump += size;
        // SAFETY: inside a mapping, so not null.
        unsafe { NonNull::new_unchecked(p) }
    };
    ss.live += 1;
    st.live += 1;
    // SAFETY: `s` is a mapped span.
    if ss.live == unsafe { (*s).capacity } as usize {
        // SAFETY: under the lock; `s` is listed.
        unsafe { unlink_avail(st, s) };
    }
    Some(p)
}

/// `random-order`: carves every object of the empty span `s` at once onto
/// its free list, in a random order (a random bijection of the slots'
/// indices: a few rounds of multiply-add and xor-shift over the next power
/// of two, walking past the values beyond the span's capacity), so that
/// the span hands out its objects in that order. Writes a link into every
/// object: the whole span becomes resident.
///
/// # Safety
/// Under the lock of `s`'s tag; `s` is a mapped span of `size`-byte
/// objects with no object handed out and an empty free list.
unsafe fn carve_shuffled(s: *mut SpanHeader, ss: &mut SpanState, size: usize) {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    // SAFETY: `s` is mapped.
    let (data, n) = unsafe { ((*s).data as usize, (*s).capacity as usize) };
    let bits = n.next_power_of_two().trailing_zeros().max(1);
    let mask = (1u64 << bits) - 1;
    // Relaxed: only a different seed per span matters.
    let mut z = links::protect(ptr::null::<*mut u8>(), s.cast::<u8>()).addr() as u64
        ^ DRAWS
            .fetch_add(1, Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut keys = [0u64; 3];
    for k in &mut keys {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        *k = z;
    }
    let shift = bits.div_ceil(2);
    let permute = |mut x: u64| {
        for k in keys {
            // Each step is a bijection of [0, 2^bits): an odd multiplier
            // and an addition modulo 2^bits, then an xor with a right shift.
            x = (x.wrapping_mul(k | 1).wrapping_add(k >> 32)) & mask;
            x ^= x >> shift;
        }
        x
    };
    let mut free = ptr::null_mut::<u8>();
    for i in 0..=mask {
        let j = permute(i) as usize;
        if j >= n {
            continue;
        }
        // SAFETY: `j < capacity`: an object slot inside the span.
        let obj = unsafe { s.cast::<u8>().add(data + j * size) };
        let at = obj.cast::<*mut u8>();
        // SAFETY: the slot is the span's, unused: its first word holds
        // the link, protected as `release_locked` stores it.
        unsafe { at.write(links::protect(at, free)) };
        free = obj;
    }
    ss.free = free;
    ss.bump = data + n * size;
}

/// Aborts with a message unless `next`, the link read at `at` in a free
/// object of span `s`, is null or an object of `s` carved already: inside
/// the span, on its grid of `size`-byte objects, below `bump`.
///
/// # Safety
/// `s` is a mapped span.
unsafe fn check_free_link(
    s: *mut SpanHeader,
    at: *mut *mut u8,
    next: *mut u8,
    size: usize,
    bump: usize,
) {
    if next.is_null() {
        return;
    }
    // SAFETY: `s` is mapped (caller).
    let data = unsafe { (*s).data } as usize;
    let off = next.addr().wrapping_sub(s.addr());
    if off < data || off >= bump || !(off - data).is_multiple_of(size) {
        links::corrupted(
            b"a span's free list leaves its span",
            at.addr(),
            next.addr(),
        );
    }
}

fn new_span(tag: u32, obj_size: usize) -> Option<NonNull<SpanHeader>> {
    let base = reserved_span()?;
    if !cover(base.as_ptr() as usize, SPAN) {
        // SAFETY: the span is ours and unused (a span of a batch is unmapped
        // alone as any span is).
        unsafe { os::unmap(base, SPAN) };
        return None;
    }
    let data = data_offset(obj_size);
    let g = &GEOMETRY[tag as usize];
    // Relaxed: published by the Release of `mark` below.
    g.data_size
        .store((data as u64) << 32 | obj_size as u64, Relaxed);
    g.div.store(u64::MAX / obj_size as u64 + 1, Relaxed);
    // SAFETY: a fresh, writable, SPAN-aligned mapping of SPAN bytes.
    unsafe {
        base.as_ptr().cast::<SpanHeader>().write(SpanHeader {
            data: data as u32,
            capacity: ((SPAN - data) / obj_size) as u32,
            state: UnsafeCell::new(SpanState {
                free: ptr::null_mut(),
                bump: data,
                live: 0,
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                listed: false,
            }),
        })
    };
    let kind = KIND_SPAN | tag as u16;
    mark(base.as_ptr() as usize, SPAN, kind, kind);
    Some(base.cast())
}

/// Spans mapped ahead, [`BATCH`] at a time: one `mmap` and two trimming
/// `munmap`s per batch instead of per span, so that a short process that
/// touches a few dozen size classes (each `git` command under the preload)
/// does not make three system calls per class (BENCHMARKS.md has the
/// counts). Spans not handed out yet are only address space: nothing is
/// resident until a span is written.
struct Reserve {
    lock: SpinLock,
    /// The next span to hand out, and how many follow it in the batch.
    inner: UnsafeCell<(*mut u8, usize)>,
}

// SAFETY: `inner` is only touched under `lock`.
unsafe impl Sync for Reserve {}

/// Spans per batch of [`Reserve`].
const BATCH: usize = 16;

static RESERVE: Reserve = Reserve {
    lock: SpinLock::new(),
    inner: UnsafeCell::new((ptr::null_mut(), 0)),
};

/// A fresh SPAN-aligned, zeroed mapping of SPAN bytes: the next one of the
/// reserve, mapping a new batch when it is empty (or a single span when a
/// batch cannot be mapped). Called under a tag's lock: the reserve's lock
/// nests inside tag locks, never the other way round.
fn reserved_span() -> Option<NonNull<u8>> {
    RESERVE.lock.lock();
    // SAFETY: we hold the reserve's lock.
    let st = unsafe { &mut *RESERVE.inner.get() };
    if st.1 == 0 {
        if let Some(batch) = map_aligned(SPAN * BATCH, SPAN) {
            *st = (batch.as_ptr(), BATCH);
        }
    }
    let span = if st.1 == 0 {
        None
    } else {
        let span = st.0;
        st.1 -= 1;
        // SAFETY: when spans are left, the next one lies inside the batch
        // mapping; after the last, this points one past its end, unused.
        st.0 = unsafe { span.add(SPAN) };
        NonNull::new(span)
    };
    RESERVE.lock.unlock();
    span.or_else(|| map_aligned(SPAN, SPAN))
}

/// Unmaps the spans of the reserve that were never handed out.
fn trim_reserve() {
    RESERVE.lock.lock();
    // SAFETY: we hold the reserve's lock.
    let st = unsafe { &mut *RESERVE.inner.get() };
    let (next, left) = core::mem::replace(st, (ptr::null_mut(), 0));
    RESERVE.lock.unlock();
    if let Some(next) = NonNull::new(next).filter(|_| left > 0) {
        // SAFETY: the rest of a batch mapping that nobody was given.
        unsafe { os::unmap(next, left * SPAN) };
    }
}

/// Takes back an object of [`obtain`]: onto its own span's free list. A span
/// left with no live object becomes the tag's spare if it has none, and is
/// otherwise unmarked and unmapped.
///
/// Counters: the span's and the tag's live objects drop by one.
///
/// # Safety
/// `p` came from `obtain(tag, _)` and is not used any more.
pub(crate) unsafe fn release(tag: u32, p: NonNull<u8>) {
    let t = &TAGS[tag as usize];
    // The span's header is at the start of its SPAN-aligned granule; the
    // pointer keeps `p`'s provenance, that of the whole span mapping.
    let s = p
        .as_ptr()
        .map_addr(|a| a & !(SPAN - 1))
        .cast::<SpanHeader>();
    // Objects reach their span from the caches, where a pointer the hit
    // path took without this check may wait (an interior one): checked
    // here, and against the bump pointer under the lock.
    if owner(p.as_ptr()) != (Owner::Span { tag }) {
        links::invalid_object(p.as_ptr().addr());
    }
    t.lock.lock();
    // SAFETY: we hold the tag's lock; `p` is an object of span `s` of this
    // tag (caller), which is mapped since `p` counts as live in it.
    let dead = unsafe { release_locked(&mut *t.inner.get(), s, p) };
    t.lock.unlock();
    if let Some(dead) = dead {
        // SAFETY: unlinked and unmarked under the lock, with no live
        // object: nobody can reach it any more.
        unsafe { os::unmap(dead.cast(), SPAN) };
    }
}

/// Puts `p` on span `s`'s free list; returns `s` when the caller must unmap
/// it (already unmarked: see `large_release`).
///
/// # Safety
/// Under the lock of `s`'s tag; `p` is a live object of `s`.
unsafe fn release_locked(
    st: &mut TagInner,
    s: *mut SpanHeader,
    p: NonNull<u8>,
) -> Option<NonNull<SpanHeader>> {
    // SAFETY: under the lock; `s` is mapped (it holds the live `p`).
    let ss = unsafe { state(s) };
    if p.as_ptr().addr() - s.addr() >= ss.bump || ss.live == 0 {
        // Past every object ever handed out: not one of them.
        links::invalid_object(p.as_ptr().addr());
    }
    let at = p.as_ptr().cast::<*mut u8>();
    // SAFETY: the object is ours (caller): its first word holds the link.
    unsafe { at.write(links::protect(at, ss.free)) };
    ss.free = p.as_ptr();
    ss.live -= 1;
    st.live -= 1;
    if ss.live > 0 {
        if !ss.listed {
            // It was full: it has room again.
            // SAFETY: under the lock; `s` is not listed.
            unsafe { push_avail(st, s) };
        }
        return None;
    }
    if ss.listed {
        // SAFETY: under the lock; `s` is listed (`ss` is not used after).
        unsafe { unlink_avail(st, s) };
    }
    if st.spare.is_null() {
        // Start over from a clean span: nothing in it is live.
        // SAFETY: under the lock; `s` is mapped; no other state reference
        // is alive.
        let ss = unsafe { state(s) };
        ss.free = ptr::null_mut();
        // SAFETY: `s` is mapped.
        ss.bump = unsafe { (*s).data } as usize;
        st.spare = s;
        return None;
    }
    st.spans -= 1;
    unmark_span(s);
    NonNull::new(s)
}

/// Marks the granule of span `s` foreign, so that [`owner`] stops reading
/// its header before the span is unmapped and its range reused by anyone.
fn unmark_span(s: *mut SpanHeader) {
    mark(s as usize, SPAN, FOREIGN, FOREIGN);
}

/// Unmaps every tag's spare span (from `pool_gc`): afterwards a span is
/// mapped only while it holds live objects.
pub(crate) fn trim() {
    for (t, size) in TAGS.iter().zip(&SIZES) {
        // Relaxed: see SIZES; an unbound tag has no span.
        if size.load(Relaxed) == 0 {
            continue;
        }
        if let Some(spare) = take_spare(t) {
            // SAFETY: taken out of the tag and unmarked under its lock; it
            // holds no live object.
            unsafe { os::unmap(spare.cast(), SPAN) };
        }
    }
    trim_reserve();
}

/// Takes the spare of tag `t`, unmarked, or `None`.
fn take_spare(t: &TagState) -> Option<NonNull<SpanHeader>> {
    t.lock.lock();
    // SAFETY: we hold the tag's lock.
    let st = unsafe { &mut *t.inner.get() };
    let spare = NonNull::new(core::mem::replace(&mut st.spare, ptr::null_mut()));
    if let Some(s) = spare {
        st.spans -= 1;
        unmark_span(s.as_ptr());
    }
    t.lock.unlock();
    spare
}

/// Spans mapped for `tag` (its spare included) and objects handed out.
#[cfg(test)]
fn tag_counts(tag: u32) -> (usize, usize) {
    let t = &TAGS[tag as usize];
    t.lock.lock();
    // SAFETY: we hold the tag's lock.
    let st = unsafe { &*t.inner.get() };
    let r = (st.spans, st.live);
    t.lock.unlock();
    r
}

// ---- large mappings -----------------------------------------------------------

/// A block of `size` bytes aligned to `align` (a power of two) in a mapping
/// of its own, zeroed; `None` when it cannot be mapped or the size overflows.
pub fn large_obtain(size: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two());
    let off = size_of::<LargeHeader>().next_multiple_of(align.max(16));
    // At least one byte past `off`, so the block lies inside the mapping.
    let len = off
        .checked_add(size.max(1))?
        .checked_next_multiple_of(4096)?;
    let base = map_guarded(len, align.max(SPAN))?;
    if !cover(base.as_ptr() as usize, len) {
        // SAFETY: the fresh mapping is ours and unused.
        unsafe { unmap_guarded(base.as_ptr(), len) };
        return None;
    }
    // SAFETY: `off + size <= len`: inside the fresh mapping.
    let user = unsafe { base.as_ptr().add(off) };
    // SAFETY: the header lies at the start of the fresh writable mapping.
    unsafe {
        base.as_ptr().cast::<LargeHeader>().write(LargeHeader {
            magic: seal(len, user, len - off),
            map_len: len,
            user,
            usable: len - off,
        })
    };
    mark(base.as_ptr() as usize, len, KIND_LARGE, KIND_LARGE_CONT);
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
    let base = large_base(p.as_ptr() as usize)?;
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
            mark(from, b + old_len - from, FOREIGN, FOREIGN);
        }
        // SAFETY: our own mapping, which nobody else uses: the page after
        // the new end becomes its guard, and the pages past it (the old
        // guard included) are unmapped.
        let ok = unsafe {
            let guard = base.add(new_len).cast::<libc::c_void>();
            if libc::mprotect(guard, GUARD, libc::PROT_NONE) != 0 {
                false
            } else if libc::munmap(base.add(new_len + GUARD).cast(), old_len - new_len) != 0 {
                libc::mprotect(guard, GUARD, libc::PROT_READ | libc::PROT_WRITE);
                false
            } else {
                true
            }
        };
        if !ok {
            mark(b, old_len, KIND_LARGE, KIND_LARGE_CONT);
            return None;
        }
        (base, false)
    } else {
        // The leaves the grown range would need, before it exists.
        if !cover(b, new_len) {
            return None;
        }
        // SAFETY: growing our own mapping in place (no MAYMOVE): the old
        // guard page is made writable (one range with the block, as mremap
        // needs), the kernel only extends the range over addresses nobody
        // has mapped, and the page after the new end becomes the guard; if
        // the kernel refuses, the old guard is restored.
        let grown = unsafe {
            let old_guard = base.add(old_len).cast::<libc::c_void>();
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            if libc::mprotect(old_guard, GUARD, rw) != 0 {
                false
            } else if libc::mremap(base.cast(), old_len + GUARD, new_len + GUARD, 0) == base.cast()
            {
                // Should this fail (no memory for the split), the block is
                // whole and usable, only unguarded after its end.
                libc::mprotect(base.add(new_len).cast(), GUARD, libc::PROT_NONE);
                true
            } else {
                libc::mprotect(old_guard, GUARD, libc::PROT_NONE);
                false
            }
        };
        if grown {
            (base, true)
        } else {
            // A SPAN-aligned range of the new length, for the header lookup.
            let dest = map_guarded(new_len, SPAN)?;
            if !cover(dest.as_ptr() as usize, new_len) {
                // SAFETY: `dest` is our fresh, unused mapping.
                unsafe { unmap_guarded(dest.as_ptr(), new_len) };
                return None;
            }
            // Unmark the old range first: once moved, its addresses may be
            // mapped again by anyone.
            mark(b, old_len, FOREIGN, FOREIGN);
            wait_header_readers();
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
                unsafe { unmap_guarded(dest.as_ptr(), new_len) };
                mark(b, old_len, KIND_LARGE, KIND_LARGE_CONT);
                return None;
            }
            // SAFETY: the old range is gone (moved); what is left of it
            // are its two guard pages, ours and unused.
            unsafe { unmap_guarded(base, old_len) };
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
        (*h).magic = seal(new_len, (*h).user, new_len - off);
        (*h).user
    };
    if to_mark {
        mark(new_base as usize, new_len, KIND_LARGE, KIND_LARGE_CONT);
    }
    NonNull::new(user)
}

/// Unmaps a block of [`large_obtain`].
///
/// # Safety
/// `p` came from `large_obtain` (as [`owner`] says) and is not used any more.
pub unsafe fn large_release(p: NonNull<u8>) {
    let Some(base) = large_base(p.as_ptr() as usize) else {
        return;
    };
    // SAFETY: a large mapping's header is at its base (caller's contract).
    let len = unsafe { (*base.cast::<LargeHeader>()).map_len };
    // Unmark first: once unmapped, the range may be mapped again by anyone.
    mark(base as usize, len, FOREIGN, FOREIGN);
    wait_header_readers();
    // SAFETY: the whole mapping is this block's, which nobody uses now.
    unsafe { unmap_guarded(base, len) };
}

/// The base of the large mapping whose granules cover `addr`.
fn large_base(addr: usize) -> Option<*mut u8> {
    if addr >> ADDR_BITS != 0 {
        return None;
    }
    let mut g = addr >> SPAN_SHIFT;
    loop {
        // Acquire: pairs with `mark`, so the header is visible.
        match entry(g)?.load(Acquire) {
            KIND_LARGE => return Some(ptr::with_exposed_provenance_mut(g << SPAN_SHIFT)),
            KIND_LARGE_CONT if g > 0 => g -= 1,
            _ => return None,
        }
    }
}

// ---- lookup --------------------------------------------------------------------

/// Who owns `p`: a span object, a large block, or neither. Reads a header
/// only in a granule the region map says is ours, so it never touches
/// memory that may be unmapped. The span case (the LD_PRELOAD malloc's
/// every `free` of a small block) is inline and reads no memory but the
/// region map and its tag's [`Geometry`].
#[inline(always)]
pub fn owner(p: *const u8) -> Owner {
    let addr = p as usize;
    // The root entry's index is also the test of the address's range.
    let Some(root) = ROOTS_MAP.get(addr >> LEAF_SHIFT) else {
        return Owner::Foreign;
    };
    // Acquire: as in `entry`.
    let leaf = root.load(Acquire);
    if leaf.is_null() {
        return Owner::Foreign;
    }
    // SAFETY: as in `entry`.
    let e = unsafe { &*leaf.add((addr >> SPAN_SHIFT) & (LEAF_GRANULES - 1)) };
    // Acquire: pairs with `mark`'s Release, so the tag's geometry (or the
    // large mapping's header) is visible.
    let v = e.load(Acquire);
    if v & KIND_SPAN == 0 {
        return large_owner(v, addr);
    }
    // The low byte is the tag (MAX_TAGS is 256: no bounds check).
    let tag = usize::from(v as u8);
    let g = &GEOMETRY[tag];
    // Relaxed: stored before the span was marked (see the Acquire above).
    let (data_size, div) = (g.data_size.load(Relaxed), g.div.load(Relaxed));
    let (data, size) = (data_size >> 32, data_size & u64::from(u32::MAX));
    let off = (addr & (SPAN - 1)) as u64;
    let rel = off.wrapping_sub(data);
    // The start of an object: past the header, inside the span, and a
    // multiple of the size from the first object (so also aligned).
    if off < data || rel + size > SPAN as u64 || rel.wrapping_mul(div) > div - 1 {
        return Owner::Foreign;
    }
    Owner::Span { tag: tag as u32 }
}

/// [`owner`] for an address whose granule holds no span (map value `v`).
#[cold]
#[inline(never)]
fn large_owner(v: u16, addr: usize) -> Owner {
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
static HEADER_READERS: AtomicUsize = AtomicUsize::new(0);

/// Called after unmarking a large mapping and before unmapping (or moving)
/// it: waits until no lookup that may have seen it marked still reads its
/// header. A lookup counts itself for a few loads only.
fn wait_header_readers() {
    // SeqCst: pairs with the fence in `large_owner` (see there).
    fence(SeqCst);
    let backoff = Backoff::new();
    // Acquire: see the Release in `large_owner`.
    while HEADER_READERS.load(Acquire) != 0 {
        backoff.snooze();
    }
}

// ---- fork ------------------------------------------------------------------------

/// Takes every tag's lock, then the reserve's (the order `new_span` nests
/// them in), so that no span state is mid-change at `fork()`.
pub(crate) fn fork_prepare() {
    TAGS.iter().for_each(|t| t.lock.lock());
    RESERVE.lock.lock();
}

/// In the child, after [`fork_release`]: lookups of threads that are not
/// in the child do not read any header here.
pub(crate) fn fork_child() {
    // Relaxed: the child's only thread.
    HEADER_READERS.store(0, Relaxed);
}

/// Releases what [`fork_prepare`] took (in the parent and in the child).
pub(crate) fn fork_release() {
    RESERVE.lock.unlock();
    TAGS.iter().for_each(|t| t.lock.unlock());
}

// Not under Miri: spans are mmap'd (and the region map is a 128 MiB
// MAP_NORESERVE mapping), and the tests use fork and mincore.
#[cfg(all(test, not(loom), not(miri)))]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// The tag of `size`, which no other test (of any module) may use, so
    /// that its counters are this test's alone.
    fn own_tag(size: usize) -> u32 {
        let tag = tag_for_size(size).expect("a free tag");
        assert_eq!(tag_counts(tag), (0, 0), "size {size} is used elsewhere");
        tag
    }

    fn base_of(p: NonNull<u8>) -> usize {
        p.as_ptr() as usize & !(SPAN - 1)
    }

    /// Whether any page of the span at `base` is mapped (mincore fails with
    /// ENOMEM on an unmapped range).
    fn mapped(base: usize) -> bool {
        let mut v = vec![0u8; SPAN / 4096];
        // SAFETY: mincore only inspects the range; `v` has a byte per page.
        let rc =
            unsafe { libc::mincore(ptr::with_exposed_provenance_mut(base), SPAN, v.as_mut_ptr()) };
        rc == 0
    }

    /// Runs `f` in a forked child, where no other test thread can map memory
    /// at an address we just unmapped; fails if `f` panics there.
    fn in_child(f: fn()) {
        // SAFETY: the child runs `f` (which uses only its own tag, the
        // region map and malloc, fork-safe in glibc) and leaves by _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = std::panic::catch_unwind(f).is_ok();
            if !ok {
                let msg = b"span test: assertion failed in the child (see above)\n";
                // SAFETY: writing a buffer to fd 2.
                unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            }
            // SAFETY: ends the child without running the parent's exit
            // handlers or test harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed: status {status:#x}"
        );
    }

    /// Runs `f` in a forked child, which must die of SIGABRT.
    fn aborts_in_child(f: fn()) {
        // SAFETY: as in `in_child`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = std::panic::catch_unwind(f).is_ok();
            // SAFETY: as in `in_child`.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
            "child not aborted: status {status:#x}"
        );
    }

    #[test]
    fn a_link_out_of_its_span_aborts_even_when_well_encoded() {
        // A forger who knew the secret could encode any pointer: the pop
        // still checks that the link names an object of the same span.
        aborts_in_child(|| {
            let size = 4112;
            let tag = own_tag(size);
            let _keep = obtain(tag, size).unwrap(); // the span stays in use
            let a = obtain(tag, size).unwrap();
            let b = obtain(tag, size).unwrap();
            // SAFETY: each given back once.
            unsafe {
                release(tag, a);
                release(tag, b);
            }
            let outside = Box::into_raw(Box::new([0u128; 8])).cast::<u8>();
            let at = b.as_ptr().cast::<*mut u8>();
            // SAFETY: the test's write after free of `b`, the list's head.
            unsafe { at.write(links::protect(at, outside)) };
            let _ = obtain(tag, size);
        });
        // The same with a link inside the span but off its object grid.
        aborts_in_child(|| {
            let size = 4128;
            let tag = own_tag(size);
            let _keep = obtain(tag, size).unwrap(); // the span stays in use
            let a = obtain(tag, size).unwrap();
            let b = obtain(tag, size).unwrap();
            // SAFETY: each given back once.
            unsafe {
                release(tag, a);
                release(tag, b);
            }
            let at = b.as_ptr().cast::<*mut u8>();
            // SAFETY: as above; 16 bytes into `a`, inside the span.
            unsafe { at.write(links::protect(at, a.as_ptr().add(16))) };
            let _ = obtain(tag, size);
        });
    }

    #[test]
    fn empty_spans_are_unmapped() {
        in_child(|| {
            let size = 2064;
            let tag = own_tag(size);
            let cap = (SPAN - data_offset(size)) / size;
            let objs: Vec<_> = (0..3 * cap).map(|_| obtain(tag, size).unwrap()).collect();
            let bases: Vec<usize> = objs.chunks(cap).map(|c| base_of(c[0])).collect();
            assert_eq!(tag_counts(tag), (3, 3 * cap));
            for chunk in objs.chunks(cap) {
                assert!(chunk.iter().all(|&o| base_of(o) == base_of(chunk[0])));
            }
            for &o in &objs {
                // SAFETY: each object is given back once.
                unsafe { release(tag, o) };
            }
            // The first span to empty is kept as the spare; the others are
            // gone: unmarked, then unmapped.
            assert_eq!(tag_counts(tag), (1, 0));
            assert!(mapped(bases[0]));
            assert_eq!(owner(objs[0].as_ptr()), Owner::Span { tag });
            for (i, &b) in bases.iter().enumerate().skip(1) {
                assert!(!mapped(b), "span {i} is still mapped");
                assert_eq!(owner(objs[i * cap].as_ptr()), Owner::Foreign);
            }
            // trim takes every tag's lock, which a parent thread may have
            // held at fork time: drop this tag's spare alone.
            let spare = take_spare(&TAGS[tag as usize]).expect("a spare");
            // SAFETY: as in `trim`.
            unsafe { os::unmap(spare.cast(), SPAN) };
            assert_eq!(tag_counts(tag), (0, 0));
            assert!(!mapped(bases[0]), "the spare is still mapped");
            assert_eq!(owner(objs[0].as_ptr()), Owner::Foreign);
        });
    }

    #[test]
    fn spans_with_room_are_used_before_new_ones() {
        let size = 3088;
        let tag = own_tag(size);
        let cap = (SPAN - data_offset(size)) / size;
        // One full span A, and a span B with 5 objects out.
        let mut objs: Vec<_> = (0..cap + 5).map(|_| obtain(tag, size).unwrap()).collect();
        let (a, b) = (base_of(objs[0]), base_of(objs[cap]));
        assert!(objs[..cap].iter().all(|&o| base_of(o) == a));
        assert_ne!(a, b);
        assert_eq!(tag_counts(tag), (2, cap + 5));
        // A regains room: it goes in front of B, whose bump pointer still
        // has room, and its freed slots are used before anything else.
        let back: HashSet<_> = objs.drain(10..20).collect();
        for &o in &back {
            // SAFETY: each object is given back once.
            unsafe { release(tag, o) };
        }
        let again: HashSet<_> = (0..10).map(|_| obtain(tag, size).unwrap()).collect();
        assert_eq!(
            again, back,
            "the freed slots of the fuller span were not reused"
        );
        objs.extend(again);
        // Both spans have room: nothing new is mapped.
        objs.push(obtain(tag, size).unwrap());
        assert_eq!(base_of(*objs.last().unwrap()), b);
        assert_eq!(tag_counts(tag), (2, cap + 6));
        for o in objs {
            // SAFETY: each object is given back once.
            unsafe { release(tag, o) };
        }
        assert_eq!(tag_counts(tag), (1, 0));
        // The spare serves the next object: no new span.
        let o = obtain(tag, size).unwrap();
        assert_eq!(tag_counts(tag), (1, 1));
        // SAFETY: given back once.
        unsafe { release(tag, o) };
    }

    #[test]
    fn live_counts_survive_threads() {
        let size = 5136;
        let tag = own_tag(size);
        // Objects handed out and not released, across all threads: one
        // handed out twice would be a broken free list or bump pointer.
        let live = Mutex::new(HashSet::new());
        // Objects handed from one thread to another, released by the taker.
        let passed = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (live, passed) = (&live, &passed);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                    for _ in 0..20_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        match x % 4 {
                            0 | 1 => {
                                let o = obtain(tag, size).unwrap();
                                assert!(live.lock().unwrap().insert(o.as_ptr() as usize));
                                // SAFETY: a fresh object of `size` bytes.
                                unsafe { o.as_ptr().add(8).cast::<u64>().write(t) };
                                mine.push(o);
                            }
                            2 => {
                                if let Some(o) = mine.pop() {
                                    passed.lock().unwrap().push(o.as_ptr() as usize);
                                }
                            }
                            _ => {
                                let o = if x & 8 == 0 {
                                    mine.pop()
                                } else {
                                    passed.lock().unwrap().pop().and_then(|a| {
                                        NonNull::new(ptr::with_exposed_provenance_mut(a))
                                    })
                                };
                                if let Some(o) = o {
                                    assert!(live.lock().unwrap().remove(&(o.as_ptr() as usize)));
                                    // SAFETY: each object is given back once.
                                    unsafe { release(tag, o) };
                                }
                            }
                        }
                    }
                    for o in mine {
                        assert!(live.lock().unwrap().remove(&(o.as_ptr() as usize)));
                        // SAFETY: as above.
                        unsafe { release(tag, o) };
                    }
                });
            }
        });
        let (spans, out) = tag_counts(tag);
        let rest = passed.into_inner().unwrap();
        assert_eq!(out, rest.len(), "live count != objects not released");
        assert!(spans >= 1);
        for a in rest {
            // SAFETY: the objects left in `passed`, each given back once.
            unsafe {
                release(
                    tag,
                    NonNull::new(ptr::with_exposed_provenance_mut(a)).unwrap(),
                )
            };
        }
        // Every span emptied: only the spare is left, and trim drops it.
        assert_eq!(tag_counts(tag), (1, 0));
        trim();
        assert_eq!(tag_counts(tag), (0, 0));
    }

    #[test]
    fn tags_are_bound_once_per_size() {
        let a = tag_for_size(7000).unwrap();
        assert_eq!(tag_for_size(6999), Some(a), "sizes round up to 16");
        assert!(a as usize >= RESERVED_TAGS);
        assert_ne!(tag_for_size(7024), Some(a));
        assert_eq!(tag_for_size(SPAN / 8 + 16), None);
        assert!(!reserve(RESERVED_TAGS as u32, 64), "not a reserved tag");
        assert!(reserve(RESERVED_TAGS as u32 - 1, 9000));
        assert!(reserve(RESERVED_TAGS as u32 - 1, 9000));
        assert!(!reserve(RESERVED_TAGS as u32 - 1, 9024), "rebound");
    }

    #[test]
    fn span_objects_are_found_by_their_address() {
        let tag = tag_for_size(1040).unwrap();
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
        // SAFETY: given back once.
        unsafe { release(tag, again) };
    }

    #[test]
    fn power_of_two_objects_are_aligned_to_their_size() {
        let tag = tag_for_size(4096).unwrap();
        let objs: Vec<_> = (0..600).map(|_| obtain(tag, 4096).unwrap()).collect();
        for o in objs {
            assert_eq!(o.as_ptr() as usize % 4096, 0);
            // SAFETY: each object is given back once.
            unsafe { release(tag, o) };
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
