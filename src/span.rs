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
//! size) is in the region map. The bump pointer hands out *chunks*: each
//! thread carves its new objects from a chunk of its own (through one of a
//! few carving slots, see [`Chunk`]), so that two threads' new objects never
//! share a page.
//!
//! A *tag* is one object size: the malloc's classes reserve theirs by number
//! ([`reserve`]), other pools get one per object size on demand
//! ([`tag_for_size`]). Each tag has a spinlock (the slow path: objects reach
//! spans only when the thread and shared caches miss or overflow), a list of
//! its spans with room, its slots' chunks, and at most one empty spare span.
//! A span whose last live object comes back drops its chunks and is
//! unmarked and unmapped, unless it becomes the spare; [`trim`] (from
//! `pool_gc`) unmaps the spares, [`trim_tag`] (from
//! `Pool::release_if_idle`) that of one tag. The count of fresh spans
//! ([`fresh_spans`]) is the clock by which the preload tells its idle
//! classes.
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
//! each at least), spans are mapped 32 at a time the first time (8 MiB),
//! 16 (4 MiB) after, or one at a time when that fails, and nothing is
//! reserved up front but what is used.

use crate::sync::SpinLock;
use crate::{links, options, os};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use core::sync::atomic::{fence, AtomicPtr, AtomicU16, AtomicU32, AtomicU64, AtomicUsize};
use crossbeam_utils::Backoff;

mod large;
mod region;
mod reserve;

use large::large_base;
pub use large::{large_align, large_obtain, large_offset, large_release, large_resize};
use region::*;
pub use region::{large_header_corrupt, owner, span_object};
pub(crate) use reserve::fresh_spans;
use reserve::{reserved_span, trim_reserve, RESERVE};

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
    /// The carving slots whose [`Chunk`] lies in this span, one bit each.
    chunked: u16,
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
    /// Carving slot 0's range of objects carved from a span's bump pointer
    /// and not handed out yet (see [`Chunk`]); the other slots' are in
    /// [`MORE_CHUNKS`] (see [`TagInner::chunk`]).
    first_chunk: Chunk,
}

impl TagInner {
    /// Carving slot `slot`'s chunk. A process's first thread carves
    /// through slot 0 (homes are handed out from 0), whose chunk is in the
    /// tag's state; so a tag's state takes at most 64 bytes, and the states
    /// of the malloc's 41 classes, which every process writes (and, after a
    /// fork, copies in the parent and the child, whose handlers take their
    /// locks), fit in a page or two instead of three or four.
    fn chunk_mut(&mut self, slot: usize) -> &mut Chunk {
        if slot == 0 {
            return &mut self.first_chunk;
        }
        // SAFETY: a row of MORE_CHUNKS is only touched through its tag's
        // `TagInner`, which is only borrowed under the tag's lock: this
        // `&mut` is the only reference to the row while it lives.
        unsafe { &mut (*MORE_CHUNKS.0[self.tag()].get())[slot - 1] }
    }

    /// [`TagInner::chunk_mut`], read.
    fn chunk(&self, slot: usize) -> Chunk {
        if slot == 0 {
            return self.first_chunk;
        }
        // SAFETY: as in `chunk_mut`; nothing writes the row while the
        // tag's state is borrowed.
        unsafe { (*MORE_CHUNKS.0[self.tag()].get())[slot - 1] }
    }

    /// This state's tag (every `TagInner` is one of [`TAGS`]; the number is
    /// not stored, so that the table stays zero and in the bss).
    fn tag(&self) -> usize {
        let first = TAGS[0].inner.get().addr();
        (ptr::from_ref(self).addr() - first) / size_of::<TagState>()
    }
}

/// The chunks of carving slots 1 and up, a row per tag (see
/// [`TagInner::chunk`]): only processes whose threads carve at the same
/// time touch them.
struct MoreChunks([UnsafeCell<[Chunk; CHUNK_SLOTS - 1]>; MAX_TAGS]);

// SAFETY: row `t` is only touched under the lock of tag `t`.
unsafe impl Sync for MoreChunks {}

static MORE_CHUNKS: MoreChunks =
    MoreChunks([const { UnsafeCell::new([NO_CHUNK; CHUNK_SLOTS - 1]) }; MAX_TAGS]);

/// Carving slots of a tag: the thread whose home is `h` carves through
/// slot `h % CHUNK_SLOTS` (homes are handed out round robin, so threads
/// that run at the same time have different slots, up to this many).
pub(crate) const CHUNK_SLOTS: usize = 16;
const _: () = assert!(CHUNK_SLOTS <= u16::BITS as usize);

/// The address space a slot carves at a time for `size`-byte objects: an
/// aligned block of about [`CHUNK_OBJECTS`] objects, a power of two from
/// two pages to a quarter of a span. A thread that carves while others do
/// gets its new objects in runs of this many bytes (a thread that carves
/// alone gets them all in a row, as from one bump pointer); the longer the
/// run, the fewer places where one thread's walk through its objects runs
/// into the next thread's (what the prefetchers pull across). Its cost is
/// address space: a slot whose thread stops carving leaves at most one
/// chunk of the tag unused until another thread of the slot carves or the
/// span empties.
fn chunk_bytes(size: usize) -> usize {
    (size * CHUNK_OBJECTS)
        .next_power_of_two()
        .clamp(2 * 4096, SPAN / 4)
}

/// Objects a chunk holds, about: two of the thread cache's largest
/// clusters (64 objects), which is what a thread takes and gives back at
/// a time.
const CHUNK_OBJECTS: usize = 128;

/// New objects of one carving slot: the objects of span `span` at offsets
/// `next, next + size, ...` below `end`, which the span's bump pointer has
/// passed but nobody was handed yet. A chunk is the run of objects that
/// start in one aligned block of [`chunk_bytes`] (at least one object), so
/// that the new objects of two threads never start in the same page, and
/// a thread's new objects are neighbours of each other: two threads on
/// two CPUs walking their own objects then do not run into each other's
/// lines, which the prefetchers would pull across (BENCHMARKS.md, issue
/// #13). Empty while `span` is null. Under the tag's lock.
#[derive(Clone, Copy)]
struct Chunk {
    span: *mut SpanHeader,
    next: u32,
    end: u32,
}

const NO_CHUNK: Chunk = Chunk {
    span: ptr::null_mut(),
    next: 0,
    end: 0,
};

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
            first_chunk: NO_CHUNK,
        }),
    }
}; MAX_TAGS];
const _: () = assert!(size_of::<TagState>() <= 64);

/// Object size of each tag (a multiple of `OBJECT_ALIGN`), 0 while unbound.
/// A tag is bound once and keeps its size for the life of the process.
//
// Relaxed on every access: each entry is one word written once (0 to its
// size); readers need only that value (coherence of one location), and a
// caller of `obtain` learnt its tag through whatever published the pool,
// which happens after the binding.
static SIZES: [AtomicU32; MAX_TAGS] = [const { AtomicU32::new(0) }; MAX_TAGS];

/// What [`owner`] needs of a tag's spans, so that it reads no span header:
/// where objects start, the offset of the last one from the first, and
/// `u64::MAX / size + 1` to test whether `size` divides an offset without a
/// division (`off * div < div`, wrapping, holds exactly then for offsets
/// below 2^32: Lemire's divisibility test).
/// Written by `new_span` under the tag's lock, before it marks the span
/// (always the same values for a tag), and read by `owner` after it
/// acquired the mark.
struct Geometry {
    /// The first object's offset in the span.
    data: AtomicU32,
    /// The last object's offset from the first.
    last: AtomicU32,
    div: AtomicU64,
}

static GEOMETRY: [Geometry; MAX_TAGS] = [const {
    Geometry {
        data: AtomicU32::new(0),
        last: AtomicU32::new(0),
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
/// the LD_PRELOAD malloc's size classes), to objects of `obj_size` bytes:
/// `Some(true)` when this call bound it, `Some(false)` when it was bound to
/// this size already, `None` if the tag is out of that range, the size
/// unsupported, or the tag bound to another size. Tags are never unbound.
pub(crate) fn reserve(tag: u32, obj_size: usize) -> Option<bool> {
    let size = stride(obj_size)?;
    let slot = SIZES[..RESERVED_TAGS].get(tag as usize)?;
    // Relaxed: see SIZES.
    match slot.compare_exchange(0, size, Relaxed, Relaxed) {
        Ok(_) => {
            locked_if_in_window(tag as usize);
            Some(true)
        }
        Err(bound) => (bound == size).then_some(false),
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
            Ok(_) => {
                locked_if_in_window(tag);
                return Some(tag as u32);
            }
            Err(bound) if bound == size => return Some(tag as u32),
            Err(_) => {}
        }
    }
    None
}

/// Bytes before a span's objects: its header, in a cache line of its own.
const HEADER: usize = 64;
const _: () = assert!(size_of::<SpanHeader>() <= HEADER);

/// Offset of the first object of a span of `obj_size`-byte objects: past
/// the header, and for a power-of-two size up to a page, aligned to the size
/// so that every object is (what `posix_memalign` relies on).
fn data_offset(obj_size: usize) -> usize {
    if obj_size.is_power_of_two() && obj_size <= 4096 {
        obj_size.max(HEADER)
    } else {
        HEADER
    }
}

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
/// span can be mapped, for the thread whose home is `home` (its carving
/// slot). The tag was bound ([`reserve`], [`tag_for_size`]) to a size of
/// at least `obj_size`.
///
/// Counters: the span's and the tag's live objects grow by one.
pub(crate) fn obtain(tag: u32, obj_size: usize, home: usize) -> Option<NonNull<u8>> {
    obtain_in(tag, obj_size, home % CHUNK_SLOTS)
}

/// [`obtain`] through carving slot `slot` (below [`CHUNK_SLOTS`]).
fn obtain_in(tag: u32, obj_size: usize, slot: usize) -> Option<NonNull<u8>> {
    let t = TAGS.get(tag as usize)?;
    // Relaxed: see SIZES.
    let size = SIZES[tag as usize].load(Relaxed) as usize;
    if size == 0 || obj_size > size {
        debug_assert!(false, "tag {tag} is bound to {size}, not {obj_size}");
        return None;
    }
    t.lock.lock();
    // SAFETY: we hold the tag's lock.
    let p = unsafe { obtain_locked(&mut *t.inner.get(), tag, size, slot) };
    t.lock.unlock();
    p
}

/// Up to `out.len()` objects of `obj_size` bytes from the spans of `tag`,
/// in one hold of its lock, in the order [`obtain`] would hand them out
/// (so consecutive objects of one span, as far as they go); returns how
/// many were written to `out`. A caller that caches many objects per thread
/// (the thread cache's refill) pays one lock and one call for them all.
///
/// Counters: the spans' and the tag's live objects grow by that many.
pub(crate) fn obtain_batch(tag: u32, obj_size: usize, home: usize, out: &mut [*mut u8]) -> usize {
    let Some(t) = TAGS.get(tag as usize) else {
        return 0;
    };
    // Relaxed: see SIZES.
    let size = SIZES[tag as usize].load(Relaxed) as usize;
    if size == 0 || obj_size > size {
        debug_assert!(false, "tag {tag} is bound to {size}, not {obj_size}");
        return 0;
    }
    let mut n = 0;
    let slot = home % CHUNK_SLOTS;
    t.lock.lock();
    while n < out.len() {
        // SAFETY: we hold the tag's lock.
        let st = unsafe { &mut *t.inner.get() };
        // What `obtain_locked` would hand out one by one, as one run: the
        // slot's chunk, while the first span has no free object.
        // SAFETY: under the lock; a listed span is mapped.
        if st.avail.is_null() || unsafe { state(st.avail) }.free.is_null() {
            // SAFETY: under the lock, no reference to a span's state alive.
            let k = unsafe { take_chunk_run(st, slot, size, &mut out[n..]) };
            if k > 0 {
                n += k;
                continue;
            }
        }
        // SAFETY: we hold the tag's lock.
        let Some(p) = (unsafe { obtain_locked(st, tag, size, slot) }) else {
            break;
        };
        out[n] = p.as_ptr();
        n += 1;
    }
    t.lock.unlock();
    n
}

/// Takes an object: from the first span's free list; else from the chunk
/// of carving slot `slot`; else from a new chunk carved for the slot from the
/// first span's bump pointer (when no span has room, from the spare or a
/// new span).
///
/// Why the first span, and why a span that regains room goes in front: a
/// span leaves the list when full and comes back at its first release, so
/// the front is the span that was full most recently, which has at most a
/// few free slots: this approximates "fullest first" in O(1) under a
/// spinlock. Spans deeper in the list are not allocated from while the front
/// absorbs allocations, so their objects keep coming back until they empty
/// and are unmapped; the front's memory is also the most recently touched.
///
/// Why chunks: so that the new objects of two threads never start in the
/// same page (see [`Chunk`]). A span is listed while it has room that any
/// slot can take (free objects, or bump room for a new chunk); the objects of
/// a chunk are reached through its slot alone, so a slot that stops
/// allocating leaves at most a chunk of its span unused (address space
/// only: the chunk's memory is not touched) until it comes back or the
/// span empties, which drops its chunks.
///
/// # Safety
/// Under the lock of `tag`, bound to `size`; `slot < CHUNK_SLOTS`.
unsafe fn obtain_locked(
    st: &mut TagInner,
    tag: u32,
    size: usize,
    slot: usize,
) -> Option<NonNull<u8>> {
    if !st.avail.is_null() {
        let s = st.avail;
        // SAFETY: under the lock; a listed span is a mapped span of this tag.
        if let Some(p) = unsafe { pop_free(st, s, size) } {
            // SAFETY: as above; `p` is an object of `s`.
            return Some(unsafe { hand_out(st, s, size, p) });
        }
    }
    // SAFETY: under the lock; no reference to a span's state is alive.
    if let Some(p) = unsafe { take_one_of_chunk(st, slot, size) } {
        return Some(p);
    }
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
        if options::random_order() {
            // SAFETY: under the lock; `s` is an empty span of `size`-byte
            // objects (a spare was reset when it emptied).
            unsafe { carve_shuffled(s, state(s), size) };
            // SAFETY: as above; the span's free list now holds every slot.
            let p = unsafe { pop_free(st, s, size) }?;
            // SAFETY: `p` is an object of `s`.
            return Some(unsafe { hand_out(st, s, size, p) });
        }
    }
    // SAFETY: under the lock; `s` is listed, so it has room, and no free
    // object (the free list was tried above): its bump pointer has room.
    let bump = unsafe { state(s) }.bump;
    if bump + size > limit(s, size) {
        debug_assert!(false, "a listed span of tag {tag} has no room");
        return None;
    }
    // SAFETY: under the lock; the slot's chunk is empty (tried above).
    unsafe { carve_chunk(st, s, slot, size) };
    // SAFETY: under the lock; the chunk just carved holds an object.
    unsafe { take_one_of_chunk(st, slot, size) }
}

/// The next object of carving slot `slot`'s chunk, handed out, or `None`
/// if the chunk is empty.
///
/// # Safety
/// As [`take_chunk_run`].
unsafe fn take_one_of_chunk(st: &mut TagInner, slot: usize, size: usize) -> Option<NonNull<u8>> {
    let mut p = [ptr::null_mut()];
    // SAFETY: per the contract. `p` stays null when the chunk is empty; a
    // chunk's object lies inside a mapping, so it is not null.
    unsafe { take_chunk_run(st, slot, size, &mut p) };
    NonNull::new(p[0])
}

/// The end of the last object of span `s` of `size`-byte objects.
fn limit(s: *mut SpanHeader, size: usize) -> usize {
    // SAFETY: `s` is mapped (callers: a span of the tag, under its lock);
    // `data` and `capacity` are written once, before it is marked.
    unsafe { (*s).data as usize + (*s).capacity as usize * size }
}

/// Pops the first object of span `s`'s free list, checking its link.
///
/// # Safety
/// Under the lock of `s`'s tag, bound to `size`; `s` is mapped, and no
/// other reference to its state is alive.
unsafe fn pop_free(st: &TagInner, s: *mut SpanHeader, size: usize) -> Option<NonNull<u8>> {
    // SAFETY: per the contract.
    let ss = unsafe { state(s) };
    let p = NonNull::new(ss.free)?;
    let at = p.as_ptr().cast::<*mut u8>();
    // SAFETY: a free object of this span (checked when it became the
    // head) holds the next one in its first word, protected.
    ss.free = links::reveal(at, unsafe { at.read() });
    // SAFETY: under the lock; `s` is a mapped span of this tag.
    unsafe { check_free_link(s, at, ss.free, size, ss.bump) };
    if !ss.free.is_null() && in_chunk(st, s, ss.chunked, ss.free.addr() - s.addr()) {
        links::corrupted(
            b"a span's free list holds an object never handed out",
            at.addr(),
            ss.free.addr(),
        );
    }
    Some(p)
}

/// Counts `p`, an object of span `s` that is being handed out, as live;
/// a listed span left with no room for a new chunk and no free object
/// leaves the list.
///
/// # Safety
/// Under the lock of `s`'s tag, bound to `size`; `s` is mapped, and no
/// other reference to its state is alive.
unsafe fn hand_out(
    st: &mut TagInner,
    s: *mut SpanHeader,
    size: usize,
    p: NonNull<u8>,
) -> NonNull<u8> {
    // SAFETY: per the contract.
    let ss = unsafe { state(s) };
    ss.live += 1;
    st.live += 1;
    if ss.listed && ss.free.is_null() && ss.bump + size > limit(s, size) {
        // SAFETY: under the lock; `s` is listed.
        unsafe { unlink_avail(st, s) };
    }
    p
}

/// Gives carving slot `slot` a chunk of `s`: the objects from the bump
/// pointer on that start in the bump pointer's block of [`chunk_bytes`]
/// (at least one).
///
/// # Safety
/// Under the lock of `s`'s tag, bound to `size`; `s` is mapped, its bump
/// pointer has room for an object, the slot's chunk is empty, and no
/// other reference to the span's state is alive.
unsafe fn carve_chunk(st: &mut TagInner, s: *mut SpanHeader, slot: usize, size: usize) {
    // SAFETY: per the contract.
    let ss = unsafe { state(s) };
    let start = ss.bump;
    let limit = limit(s, size);
    debug_assert!(start + size <= limit && st.chunk(slot).span.is_null());
    // The span is SPAN-aligned: offsets are aligned as addresses are.
    let block_end = (start | (chunk_bytes(size) - 1)) + 1;
    let end = (start + (block_end - start).div_ceil(size) * size).min(limit);
    ss.bump = end;
    ss.chunked |= 1 << slot;
    *st.chunk_mut(slot) = Chunk {
        span: s,
        next: start as u32,
        end: end as u32,
    };
}

/// Up to `out.len()` next objects of carving slot `slot`'s chunk, handed
/// out (counted live, and the span unlisted when it has no room left, as
/// [`hand_out`] does); returns how many were written to `out` (0 when the
/// chunk is empty).
///
/// # Safety
/// Under the lock of the tag, bound to `size`; no reference to the state
/// of the chunk's span is alive.
unsafe fn take_chunk_run(
    st: &mut TagInner,
    slot: usize,
    size: usize,
    out: &mut [*mut u8],
) -> usize {
    let c = st.chunk_mut(slot);
    let s = c.span;
    if s.is_null() {
        return 0;
    }
    let left = (c.end - c.next) as usize / size;
    let k = left.min(out.len());
    for (i, o) in out[..k].iter_mut().enumerate() {
        // SAFETY: the chunk's objects lie inside its span, which is
        // mapped while the chunk is set (a span that empties drops its
        // chunks).
        *o = unsafe { s.cast::<u8>().add(c.next as usize + i * size) };
    }
    c.next += (k * size) as u32;
    if c.next >= c.end {
        *c = NO_CHUNK;
        // SAFETY: under the lock; the span is mapped (above).
        unsafe { state(s).chunked &= !(1 << slot) };
    }
    // SAFETY: under the lock; the span is mapped.
    let ss = unsafe { state(s) };
    ss.live += k;
    st.live += k;
    if k > 0 && ss.listed && ss.free.is_null() && ss.bump + size > limit(s, size) {
        // SAFETY: under the lock; `s` is listed.
        unsafe { unlink_avail(st, s) };
    }
    k
}

/// Whether the object at offset `off` of span `s` lies in a chunk, that is
/// was carved and never handed out. `chunked` is the span's mask.
fn in_chunk(st: &TagInner, s: *mut SpanHeader, chunked: u16, off: usize) -> bool {
    let mut m = chunked;
    while m != 0 {
        let c = st.chunk(m.trailing_zeros() as usize);
        m &= m - 1;
        if c.span == s && (c.next as usize..c.end as usize).contains(&off) {
            return true;
        }
    }
    false
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
    let capacity = (SPAN - data) / obj_size;
    let g = &GEOMETRY[tag as usize];
    // Relaxed: published by the Release of `mark` below.
    g.data.store(data as u32, Relaxed);
    g.last.store(((capacity - 1) * obj_size) as u32, Relaxed);
    g.div.store(u64::MAX / obj_size as u64 + 1, Relaxed);
    // SAFETY: a fresh, writable, SPAN-aligned mapping of SPAN bytes.
    unsafe {
        base.as_ptr().cast::<SpanHeader>().write(SpanHeader {
            data: data as u32,
            capacity: capacity as u32,
            state: UnsafeCell::new(SpanState {
                free: ptr::null_mut(),
                bump: data,
                live: 0,
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                listed: false,
                chunked: 0,
            }),
        })
    };
    let kind = KIND_SPAN | tag as u16;
    mark(base.as_ptr() as usize, SPAN, kind, kind);
    Some(base.cast())
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
    let off = p.as_ptr().addr() - s.addr();
    if off >= ss.bump || ss.live == 0 || in_chunk(st, s, ss.chunked, off) {
        // Past every object ever handed out, or carved for a slot and not
        // handed out yet: not one of them.
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
    // Nothing of `s` is out: the chunks carved in it go (their objects
    // are never handed out), so that it can be reset or unmapped.
    let mut m = core::mem::take(&mut ss.chunked);
    while m != 0 {
        *st.chunk_mut(m.trailing_zeros() as usize) = NO_CHUNK;
        m &= m - 1;
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
        if size.load(Relaxed) != 0 {
            unmap_spare(t);
        }
    }
    trim_reserve();
}

/// Unmaps the spare span of tag `tag`, if it has one.
pub(crate) fn trim_tag(tag: u32) {
    unmap_spare(&TAGS[tag as usize]);
}

fn unmap_spare(t: &TagState) {
    if let Some(spare) = take_spare(t) {
        // SAFETY: taken out of the tag and unmarked under its lock; it
        // holds no live object.
        unsafe { os::unmap(spare.cast(), SPAN) };
    }
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

// ---- fork ------------------------------------------------------------------------

/// The tags whose locks the fork handlers hold, one bit each: those bound
/// when [`fork_prepare`] ran, and any the forking thread binds inside its
/// fork window ([`locked_if_in_window`]).
//
// Relaxed on every access: only the forking thread touches it, from its
// prepare handler to its parent or child handler (two forking threads are
// serialised by the registry's init lock, which prepare takes first).
static FORK_HELD: [AtomicU64; MAX_TAGS / 64] = [const { AtomicU64::new(0) }; MAX_TAGS / 64];

/// Takes the lock of every bound tag, then the reserve's (the order
/// `new_span` nests them in), so that no span state is mid-change at
/// `fork()`. An unbound tag has no span and nobody takes its lock (callers
/// of `obtain` and [`trim`] find its size 0; [`release`] needs a span of
/// it), so its lock is left alone: the locks of the tags a process never
/// uses, most of them, sit on pages that the parent and the child would
/// otherwise each copy at every fork. The caller holds the registry lock,
/// under which tags are bound ([`reserve`] and [`tag_for_size`] are called
/// from the registry's `create_with`, and by the unit tests directly), so
/// none is bound until the parent or child handler except by the forking
/// thread itself, inside its window.
pub(crate) fn fork_prepare() {
    for (word, held) in FORK_HELD.iter().enumerate() {
        let mut bits = 0;
        for bit in 0..64 {
            let tag = word * 64 + bit;
            // Relaxed: see SIZES; every binding happened before the
            // registry lock our caller holds was taken.
            if SIZES[tag].load(Relaxed) != 0 {
                TAGS[tag].lock.lock();
                bits |= 1 << bit;
            }
        }
        held.store(bits, Relaxed);
    }
    RESERVE.lock.lock();
}

/// After `tag` was bound: inside this thread's fork window (another fork
/// handler creating a pool), every lock must be held, so the tag's lock is
/// taken (it is free: the tag was unbound) and released with the others.
fn locked_if_in_window(tag: usize) {
    if crate::sync::inside_window() {
        TAGS[tag].lock.lock();
        FORK_HELD[tag / 64].fetch_or(1 << (tag % 64), Relaxed);
    }
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
    for (word, held) in FORK_HELD.iter().enumerate() {
        // Read, not cleared (prepare overwrites it): a store here would
        // copy the page in the child.
        let mut bits = held.load(Relaxed);
        while bits != 0 {
            TAGS[word * 64 + bits.trailing_zeros() as usize]
                .lock
                .unlock();
            bits &= bits - 1;
        }
    }
}

// Not under Miri: spans are mmap'd (and the region map is a 128 MiB
// MAP_NORESERVE mapping), and the tests use fork and mincore.
#[cfg(all(test, not(loom), not(miri)))]
mod tests;
