//! Requests above the largest size class: a mapping each
//! (`pools::preload::large_obtain`), with a cache of freed mappings sized by
//! recent demand, so that a program that frees and allocates large blocks
//! in turn (sort's buffers, gcc's obstacks, python's big strings and lists,
//! image and compression buffers of several MiB) pays neither an
//! `mmap`/`munmap` pair nor the page faults of fresh memory every time.
//!
//! Mapping lengths are rounded up to **page classes** (four per power of two
//! of pages, like the small classes), so a freed mapping serves any later
//! request of its class. The cache keeps one list per class, linked through
//! the first words of each cached block (in the mapping's first page, which
//! is never advised away), and only mappings up to [`MAX_CACHED_MAP`] bytes.
//!
//! **Sizing.** Time is cut into windows of [`WINDOW_MS`]. The *demand* is
//! the highest count of live large bytes seen at a free in this window or
//! the previous one; the cache may hold what brings the large memory (live
//! and cached) up to the demand plus an eighth ([`budget`]), and always
//! [`CACHE_FLOOR`]. So a repeating pattern finds its blocks again, and a
//! program whose demand falls sees the cache shrink to the new demand two
//! windows later (at its next large free: there is no thread of ours).
//! A block that stays cached through a whole window is probably idle: it is
//! advised with `MADV_FREE` (all but its first page), so the kernel may take
//! its pages under memory pressure, while a reuse before that finds them
//! still mapped (no page fault).
//!
//! **Giving way to small blocks.** Each fresh span the small classes take
//! makes the cache unmap at least a span's worth of its blocks, the
//! smallest first ([`span_made`]): a program whose small blocks grow after
//! its large ones were freed (sqlite's page cache after its sorter's
//! buffers) reuses that memory, as a single heap would, instead of holding
//! both (BENCHMARKS.md, issue #19). A pattern of large blocks alone makes
//! no spans and keeps its cache.
//!
//! **Reuse.** A request takes a cached block of its class or else of the
//! smallest larger class up to twice its pages ([`BIN_REACH`]); else the
//! largest smaller one down to half its pages ([`BIN_GROW`]), grown with
//! `mremap` (its pages are kept, only the added ones are fresh); else a
//! fresh mapping. A realloc that grows a block takes a cached block up to
//! 16 times its pages ([`GROW_REACH`]) and unmaps the block it leaves
//! ([`resize`]); else it grows the block with `mremap`.
//!
//! `malloc_trim` (hence `pool_gc`, which calls the `malloc_trim` of the
//! malloc in use) unmaps everything the cache holds.
//!
//! Thread safety: one spin lock guards the lists, the cached byte count and
//! the demand; no system call and no other lock is taken under it. Blocks
//! being advised or unmapped are taken off the lists first. Fork safety: the
//! process's one set of fork handlers (the core's, registered when the
//! library is loaded) takes it in `fork`'s prepare step, before the core's
//! locks, and releases it in the parent and the child ([`fork_lock`],
//! [`fork_unlock`]); inside the forking thread's fork window the lock is
//! held for that thread, which goes through it (see `pools::sync`).
//!
//! A cached block stays marked as a large block in the span region map: the
//! cache owns it, and `preload::owner` still recognises it.

use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicU8, AtomicUsize};
use pools::preload::{self, SpinLock};

const PAGE: usize = 4096;
/// Largest mapping the cache keeps (and the largest rounded to a class).
pub(crate) const MAX_CACHED_MAP: usize = 256 << 20;
/// The cache may always hold this much, whatever the demand.
pub(crate) const CACHE_FLOOR: usize = 16 << 20;
/// Page classes up to MAX_CACHED_MAP (65536 pages: class 56).
const BINS: usize = 57;
/// Length of a demand window, in milliseconds.
pub(crate) const WINDOW_MS: u64 = 1000;

/// Floor class of a mapping of `pages` pages (`pages >= 4`): the largest
/// class length that is at most `pages`.
#[inline]
fn bin_floor(pages: usize) -> usize {
    let k = (usize::BITS - 1 - pages.leading_zeros()) as usize;
    (k - 2) * 4 + ((pages >> (k - 2)) & 3)
}

/// Pages of class `b`.
#[inline]
fn bin_pages(b: usize) -> usize {
    (4 + b % 4) << (b / 4)
}

/// The smallest class of at least `pages` pages.
#[inline]
fn bin_ceil(pages: usize) -> usize {
    let b = bin_floor(pages);
    if bin_pages(b) < pages {
        b + 1
    } else {
        b
    }
}

struct Lists {
    /// Cached blocks of each class, linked through their first word.
    head: [*mut u8; BINS],
    /// Bytes of the mappings in `head`.
    bytes: usize,
    /// Highest live large bytes seen at a free in window `window`, and in
    /// the window before it.
    peak: usize,
    prev_peak: usize,
    window: u64,
}

impl Lists {
    /// Most bytes the cache may hold while `live` bytes of large mappings
    /// are live: what brings live and cached up to [`budget`], and always
    /// [`CACHE_FLOOR`].
    fn room(&self, live: usize) -> usize {
        budget(self.peak.max(self.prev_peak))
            .saturating_sub(live)
            .max(CACHE_FLOOR)
    }

    /// Takes the block at the head of list `b`.
    fn pop(&mut self, b: usize) -> *mut u8 {
        let p = self.head[b];
        if !p.is_null() {
            // SAFETY: a cached block holds the next one in its first word;
            // the cache owns it (the caller holds the lock).
            self.head[b] = unsafe { p.cast::<*mut u8>().read() };
            // Only mappings of exactly their class length are cached.
            self.bytes -= bin_pages(b) * PAGE;
        }
        p
    }

    /// Puts the block `p` of class `b` (given up to the cache) on its list,
    /// with `state` in its third word.
    ///
    /// # Safety
    /// `p` is a mapped block of class `b` that nobody else uses.
    unsafe fn push(&mut self, b: usize, p: NonNull<u8>, state: u64) {
        // SAFETY: the block has room for a link, the mark and the state
        // (caller), all in its mapping's first page.
        unsafe {
            p.as_ptr().cast::<*mut u8>().write(self.head[b]);
            mark_of(p).write(CACHED_MARK ^ p.as_ptr() as usize);
            state_of(p).write(state);
        }
        self.head[b] = p.as_ptr();
        self.bytes += bin_pages(b) * PAGE;
    }

    /// Starts window `now` if it is not the current one. Then, at a window's
    /// start: moves to `evict` (linked through their first word) the blocks
    /// beyond [`Lists::room`] (largest first), and to `advise` those cached
    /// since before the previous window's start and not advised yet.
    fn roll(&mut self, now: u64, live: usize, evict: &mut *mut u8, advise: &mut *mut u8) {
        if now == self.window {
            return;
        }
        self.prev_peak = if now == self.window + 1 { self.peak } else { 0 };
        self.peak = live;
        self.window = now;
        let room = self.room(live);
        for b in (0..BINS).rev() {
            while self.bytes > room && !self.head[b].is_null() {
                let p = self.pop(b);
                // SAFETY: taken off the lists: ours; its first word is free.
                unsafe { p.cast::<*mut u8>().write(*evict) };
                *evict = p;
            }
        }
        for b in 0..BINS {
            let mut keep: *mut u8 = ptr::null_mut();
            while let Some(p) = NonNull::new(self.pop(b)) {
                // SAFETY: taken off the lists: ours. Its state word was
                // written when it was cached.
                let st = unsafe { state_of(p).read() };
                let list = if st & ADVISED == 0 && st + 1 < now {
                    &mut *advise
                } else {
                    &mut keep
                };
                // SAFETY: as above; the link word is free.
                unsafe { p.as_ptr().cast::<*mut u8>().write(*list) };
                *list = p.as_ptr();
            }
            while let Some(p) = NonNull::new(keep) {
                // SAFETY: one of the blocks just taken off list `b`; its
                // state is kept as it was.
                unsafe {
                    keep = p.as_ptr().cast::<*mut u8>().read();
                    let st = state_of(p).read();
                    self.push(b, p, st);
                }
            }
        }
    }
}

/// Bytes of large memory (live and cached) the cache may bring the process
/// up to, for a demand of `demand` live bytes.
#[inline]
fn budget(demand: usize) -> usize {
    demand.saturating_add(demand / 8)
}

/// The third word of a cached block: the window it was cached in, or'ed
/// with this bit once it has been advised.
const ADVISED: u64 = 1 << 63;

/// The word of `p`'s cache state.
#[inline]
fn state_of(p: NonNull<u8>) -> *mut u64 {
    // SAFETY: a large block has at least 32 KiB: its third word is inside.
    unsafe { p.as_ptr().cast::<u64>().add(2) }
}

/// The current window: milliseconds of the coarse monotonic clock (a vDSO
/// read, no system call) divided by [`WINDOW_MS`].
fn window_now() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; the clock id is valid.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    let ms = (t.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(t.tv_nsec as u64 / 1_000_000);
    ms / WINDOW_MS
}

struct Cache {
    lock: SpinLock,
    lists: UnsafeCell<Lists>,
}

// SAFETY: `lists` is only touched under `lock`.
unsafe impl Sync for Cache {}

static CACHE: Cache = Cache {
    lock: SpinLock::new(),
    lists: UnsafeCell::new(Lists {
        head: [ptr::null_mut(); BINS],
        bytes: 0,
        peak: 0,
        prev_peak: 0,
        window: 0,
    }),
};

/// Bytes of large mappings in existence (live and cached): live ones are
/// this less the cache's bytes. Relaxed: a heuristic; no memory is reached
/// through it.
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// MAPPED -= n, stopping at 0 (a block mapped before the count started, or
/// a mapping that was not rounded, may make it run short).
fn sub_mapped(n: usize) {
    // Relaxed: as for MAPPED.
    let _ = MAPPED.fetch_update(Relaxed, Relaxed, |m| Some(m.saturating_sub(n)));
}

/// Cache off (`POOL_DEBUG=uaf`): every large block is unmapped on free.
/// `UNKNOWN` until the environment is first read.
static BYPASS: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const CACHE_ON: u8 = 1;
const CACHE_OFF: u8 = 2;

/// Runs `f` on the lists under the lock.
fn with_lists<R>(f: impl FnOnce(&mut Lists) -> R) -> R {
    CACHE.lock.lock();
    // SAFETY: we hold the lock: nobody else touches the lists.
    let r = f(unsafe { &mut *CACHE.lists.get() });
    CACHE.lock.unlock();
    r
}

/// Whether the cache is off for the life of the process: `POOL_DEBUG=uaf`
/// at the first call (from the first large request or free, or from the
/// first use of a small class, whichever comes first). Realloc then always
/// moves.
pub(crate) fn bypassed() -> bool {
    // Relaxed: one independent word; every thread that reads the
    // environment finds the same answer, so a racing store is harmless.
    match BYPASS.load(Relaxed) {
        UNKNOWN => {
            let off = preload::uaf_requested();
            BYPASS.store(if off { CACHE_OFF } else { CACHE_ON }, Relaxed);
            off
        }
        s => s == CACHE_OFF,
    }
}

/// Mapping length for a block of `size` bytes at the default offset.
#[inline]
fn map_len_for(size: usize) -> Option<usize> {
    preload::large_offset()
        .checked_add(size)?
        .checked_next_multiple_of(PAGE)
}

/// The block size to ask `large_obtain` or `large_resize` for, so that a
/// request of `size` bytes gets a mapping of a whole page class (when it is
/// small enough to be cached); `size` itself beyond.
pub(crate) fn rounded_request(size: usize) -> usize {
    match map_len_for(size) {
        Some(len) if (4 * PAGE..=MAX_CACHED_MAP).contains(&len) => {
            bin_pages(bin_ceil(len / PAGE)) * PAGE - preload::large_offset()
        }
        _ => size,
    }
}

/// Bins searched above a request's own class, smallest first: a cached
/// block up to four classes larger (twice the pages) serves it.
const BIN_REACH: usize = 4;
/// The same for a realloc that grows a block: up to 16 classes larger (16
/// times the pages). The cached block is resident already, a buffer that
/// grows is likely to grow into it, and growing by `mremap` instead would
/// fault fresh pages while the cached block stays resident beside them.
const GROW_REACH: usize = 16;
/// Then a block up to this many classes below is grown (at least half the
/// pages).
const BIN_GROW: usize = 4;

/// The second word of a cached block: this value, xor its address. A block
/// given back with it in place may be freed twice: the list says for sure.
const CACHED_MARK: usize = 0x6c61_7267_6361_6368; // "largcach"

/// The word that marks `p` as cached.
#[inline]
fn mark_of(p: NonNull<u8>) -> *mut usize {
    // SAFETY: a large block has at least 32 KiB: its second word is inside.
    unsafe { p.as_ptr().cast::<usize>().add(1) }
}

/// Whether the list starting at `head` holds `p`.
fn list_holds(mut head: *mut u8, p: NonNull<u8>) -> bool {
    while !head.is_null() {
        if head == p.as_ptr() {
            return true;
        }
        // SAFETY: a cached block holds the next one in its first word; the
        // caller holds the lock.
        head = unsafe { head.cast::<*mut u8>().read() };
    }
    false
}

/// The class of the mapping a request of `size` bytes gets, when the cache
/// may serve it.
fn class_of_request(size: usize) -> Option<usize> {
    let len = map_len_for(rounded_request(size))?;
    (4 * PAGE..=MAX_CACHED_MAP)
        .contains(&len)
        .then(|| bin_floor(len / PAGE))
}

/// A cached block of at least `size` bytes (its first words cleared), or
/// `None` when the cache has none of its class up to `reach` classes above,
/// and (when `grow`) none up to [`BIN_GROW`] below that `mremap` can grow.
fn take_cached(size: usize, reach: usize, grow: bool) -> Option<NonNull<u8>> {
    let b = class_of_request(size)?;
    let (hit, smaller) = with_lists(|l| {
        for j in (b..=b + reach).filter(|&j| j < BINS) {
            let p = l.pop(j);
            if !p.is_null() {
                return (p, false);
            }
        }
        if grow {
            for j in (b.saturating_sub(BIN_GROW)..b).rev() {
                let p = l.pop(j);
                if !p.is_null() {
                    return (p, true);
                }
            }
        }
        (ptr::null_mut(), false)
    });
    let mut p = NonNull::new(hit)?;
    // SAFETY: the block is now ours; the link, the mark and the state are
    // not the caller's data (and are in the first page, never advised).
    unsafe {
        p.as_ptr().cast::<*mut u8>().write(ptr::null_mut());
        mark_of(p).write(0);
        state_of(p).write(0);
    }
    if smaller {
        // SAFETY: a block of ours that nobody else uses (just taken off
        // the lists).
        match unsafe { grow_block(p, size) } {
            Some(q) => p = q,
            None => return None,
        }
    }
    Some(p)
}

/// The usable bytes of the large block `p` of ours.
fn usable_of(p: NonNull<u8>) -> usize {
    match preload::owner(p.as_ptr()) {
        preload::Owner::Large { usable } => usable,
        _ => 0,
    }
}

/// Grows the block `p` (taken from the cache) with `mremap` to serve `size`
/// bytes, or unmaps it and returns `None` when the kernel refuses.
///
/// # Safety
/// `p` is a large block of ours that nobody else uses.
unsafe fn grow_block(p: NonNull<u8>, size: usize) -> Option<NonNull<u8>> {
    let old = usable_of(p);
    // SAFETY: forwarded (caller's contract).
    match unsafe { preload::large_resize(p, rounded_request(size)) } {
        Some(q) => {
            MAPPED.fetch_add(usable_of(q).saturating_sub(old), Relaxed);
            Some(q)
        }
        None => {
            sub_mapped(preload::large_offset() + old);
            // SAFETY: still our unused block.
            unsafe { preload::large_release(p) };
            None
        }
    }
}

/// A large block of at least `size` bytes aligned to 16 (a cached one when
/// there is one that fits), or `None` when none can be mapped. `zero`:
/// the first `size` bytes must read as zero (a fresh mapping already does).
pub(crate) fn obtain(size: usize, zero: bool) -> Option<NonNull<u8>> {
    if let Some(p) = take_cached(size, BIN_REACH, true) {
        if zero {
            // SAFETY: the block has at least `size` bytes and is the
            // caller's.
            unsafe { p.as_ptr().write_bytes(0, size) };
        }
        return Some(p);
    }
    let req = rounded_request(size);
    let p = map_retrying(req, 16)?;
    if let Some(len) = map_len_for(req) {
        MAPPED.fetch_add(len, Relaxed);
    }
    Some(p)
}

/// `preload::large_obtain(size, align)`; when the mapping fails, again after
/// giving back what the pools and this cache hold (objects beyond
/// `minavail`, spare spans, cached mappings), as a small request does after
/// a failure.
pub(crate) fn map_retrying(size: usize, align: usize) -> Option<NonNull<u8>> {
    preload::large_obtain(size, align).or_else(|| {
        trim();
        preload::gc_pools();
        preload::large_obtain(size, align)
    })
}

/// Unmaps the cached blocks linked from `p` through their first word
/// (taken off the lists), and counts them out of [`MAPPED`].
fn unmap_chain(mut p: *mut u8) {
    while let Some(nn) = NonNull::new(p) {
        // SAFETY: a block taken off the lists, ours alone: read its link,
        // then unmap it.
        unsafe {
            p = p.cast::<*mut u8>().read();
            sub_mapped(preload::large_offset() + usable_of(nn));
            preload::large_release(nn);
        }
    }
}

/// Advises the cached blocks linked from `p` (taken off the lists) with
/// `MADV_FREE`, all but their mapping's first page, and puts them back.
fn advise_chain(mut p: *mut u8) {
    let now = window_now();
    while let Some(nn) = NonNull::new(p) {
        let len = preload::large_offset() + usable_of(nn);
        let base = p.wrapping_sub(preload::large_offset());
        // SAFETY: a block taken off the lists, ours alone: read its link;
        // its pages past the first (which holds the header and the cache's
        // words) are nobody's data.
        unsafe {
            p = p.cast::<*mut u8>().read();
            libc::madvise(base.add(PAGE).cast(), len - PAGE, libc::MADV_FREE);
        }
        let b = bin_floor(len / PAGE);
        // SAFETY: a mapped block of class `b` (only whole classes are
        // cached), ours alone.
        with_lists(|l| unsafe { l.push(b, nn, now | ADVISED) });
    }
}

/// Takes back the large block `p` of `usable` bytes (what `preload::owner`
/// said): into the cache when there is room for it, else unmapped. A block
/// the cache already holds (freed twice) is reported, naming `func`, and
/// the process aborts.
///
/// # Safety
/// `p` is a large block of ours that the caller gives up: live, or (a
/// caller's bug, caught here) sitting in the cache.
pub(crate) unsafe fn release(func: &str, p: NonNull<u8>, usable: usize) {
    let len = preload::large_offset() + usable;
    // Only default-offset blocks of a whole class are cached: a block of an
    // aligned request may start further in, or have an odd length.
    let cacheable = !bypassed()
        && p.as_ptr() as usize % preload::large_align() == preload::large_offset()
        && (4 * PAGE..=MAX_CACHED_MAP).contains(&len)
        && len % PAGE == 0
        && bin_pages(bin_floor(len / PAGE)) * PAGE == len;
    if cacheable {
        let b = bin_floor(len / PAGE);
        let mark = CACHED_MARK ^ p.as_ptr() as usize;
        // SAFETY: the block is mapped (ours, live or cached): read its
        // second word. Only a match costs a walk of the list.
        let suspect = unsafe { mark_of(p).read() } == mark;
        let now = window_now();
        let (mut evict, mut advise) = (ptr::null_mut(), ptr::null_mut());
        let kept = with_lists(|l| {
            if suspect && list_holds(l.head[b], p) {
                return None;
            }
            // Live bytes, this block included.
            let live = MAPPED.load(Relaxed).saturating_sub(l.bytes);
            l.roll(now, live, &mut evict, &mut advise);
            l.peak = l.peak.max(live);
            if l.bytes + len > l.room(live.saturating_sub(len)) {
                return Some(false);
            }
            // SAFETY: the block is given up to us (caller), of class `b`.
            unsafe { l.push(b, p, now) };
            Some(true)
        });
        unmap_chain(evict);
        advise_chain(advise);
        let Some(kept) = kept else {
            crate::double_free(func, p.as_ptr().cast())
        };
        if kept {
            return;
        }
    }
    // SAFETY: forwarded (caller's contract).
    unsafe { unmap_live(p, usable) };
}

/// Bytes [`move_contents`] copies before it drops the source's pages.
const MOVE_STEP: usize = 128 << 10;

/// Copies the `n` bytes of the large block `p` into `q`, dropping `p`'s
/// pages (`MADV_DONTNEED`) as each [`MOVE_STEP`] is copied, so that the
/// process does not hold both copies at once: `q`, taken from the cache, is
/// resident already. `p`'s first page (its header and the cache's words)
/// is kept; `p` reads as zero past it afterwards.
///
/// # Safety
/// `p` has `n` bytes that are nobody's any more once copied, `q` has room
/// for `n` bytes, and the two do not overlap.
unsafe fn move_contents(p: NonNull<u8>, q: NonNull<u8>, n: usize) {
    // `p`'s header lies at `p - large_offset()` or below (an aligned
    // block starts further into its mapping): the pages from `dropped` on
    // hold only the block's bytes.
    let mut dropped = (p.as_ptr() as usize - preload::large_offset()) + PAGE;
    let mut done = 0;
    while done < n {
        let step = MOVE_STEP.min(n - done);
        // SAFETY: both ranges lie inside their blocks (caller).
        unsafe { ptr::copy_nonoverlapping(p.as_ptr().add(done), q.as_ptr().add(done), step) };
        done += step;
        // The whole pages below the end of what is copied.
        let end = (p.as_ptr() as usize + done) & !(PAGE - 1);
        if end > dropped {
            // SAFETY: pages of `p`'s own mapping whose bytes were copied,
            // past its first page, so its header stays. A failure (never
            // for a private anonymous mapping) only leaves them resident.
            unsafe {
                libc::madvise(
                    dropped as *mut libc::c_void,
                    end - dropped,
                    libc::MADV_DONTNEED,
                )
            };
            dropped = end;
        }
    }
}

/// Unmaps the live large block `p` of `usable` bytes, given up by the
/// caller, and counts it out of [`MAPPED`].
///
/// # Safety
/// `p` is a live large block of ours that nobody uses any more.
unsafe fn unmap_live(p: NonNull<u8>, usable: usize) {
    sub_mapped(preload::large_offset() + usable);
    // SAFETY: a live large block given up by the caller.
    unsafe { preload::large_release(p) };
}

/// Aborts, naming `func`, if the large block `p` of `usable` bytes is in
/// the cache (it was freed: a realloc of it is a double free). Checked
/// before the realloc allocates: the allocation may make a fresh span, and
/// the cache may then unmap the block ([`span_made`]).
///
/// # Safety
/// `p` is a large block of ours (live, or cached by a caller's bug).
pub(crate) unsafe fn abort_if_cached(func: &str, p: NonNull<u8>, usable: usize) {
    let len = preload::large_offset() + usable;
    if !(4 * PAGE..=MAX_CACHED_MAP).contains(&len) || len % PAGE != 0 {
        return;
    }
    let b = bin_floor(len / PAGE);
    // SAFETY: the block is mapped (ours, live or cached): read its second
    // word. Only a match costs a walk of the list.
    if unsafe { mark_of(p).read() } == CACHED_MARK ^ p.as_ptr() as usize
        && with_lists(|l| list_holds(l.head[b], p))
    {
        crate::double_free(func, p.as_ptr().cast())
    }
}

/// Growth up to this old size prefers a cached block and a copy to
/// `mremap`: the cached block's pages are already faulted in, while the
/// pages `mremap` adds are fresh and fault one by one as they are written
/// (a copy of a few MiB costs less than those faults).
const COPY_MAX: usize = 4 << 20;

/// Resizes the large block `p` of `old` usable bytes to hold `size` bytes
/// (`size` above the small classes): into a cached block when growing a
/// block of at most [`COPY_MAX`] bytes and the cache has one, else by
/// remapping. `None` leaves the block as it is.
///
/// The block a growth leaves behind is unmapped, not cached: a buffer that
/// grows step by step (a sorter's, doubling from 64 KiB to 2 MiB) would
/// otherwise leave one resident block per step that moved, kept beside the
/// grown one, and the next growth through the same sizes finds the grown
/// block in the cache anyway.
///
/// # Safety
/// `p` is a live large block of the caller's, which it gives up if the
/// result is another block.
pub(crate) unsafe fn resize(p: NonNull<u8>, old: usize, size: usize) -> Option<NonNull<u8>> {
    if size > old && old <= COPY_MAX {
        if let Some(q) = take_cached(size, GROW_REACH, false) {
            // SAFETY: `p` has `old` live bytes and `q` at least `size >
            // old`; two distinct blocks. Then `p` is given up (caller).
            unsafe {
                move_contents(p, q, old);
                unmap_live(p, old);
            }
            return Some(q);
        }
    }
    // SAFETY: forwarded (caller's contract).
    let q = unsafe { preload::large_resize(p, rounded_request(size)) }?;
    let new = match preload::owner(q.as_ptr()) {
        preload::Owner::Large { usable } => usable,
        _ => old,
    };
    if new >= old {
        MAPPED.fetch_add(new - old, Relaxed);
    } else {
        sub_mapped(old - new);
    }
    Some(q)
}

/// The span layer has just made a fresh span (`preload::on_fresh_span`,
/// under a tag's lock): the cache unmaps at least a span's worth
/// (`large_align()` bytes) of its blocks, the smallest first. So memory
/// that large blocks freed goes back while the small blocks grow, as it
/// would serve them in a single heap, rather than staying resident beside
/// them. Gives up if the cache's lock is held (by another thread, or by the
/// fork handlers, which take it before the tags' locks).
pub(crate) extern "C" fn span_made() {
    if !CACHE.lock.try_lock() {
        return;
    }
    // SAFETY: we hold the lock: nobody else touches the lists.
    let l = unsafe { &mut *CACHE.lists.get() };
    let mut evict: *mut u8 = ptr::null_mut();
    let mut freed = 0;
    let want = preload::large_align();
    for b in 0..BINS {
        // An empty cache (a short process's, at each of its first spans)
        // walks no list.
        if freed >= want || l.bytes == 0 {
            break;
        }
        while freed < want && !l.head[b].is_null() {
            let p = l.pop(b);
            // SAFETY: taken off the lists: ours; its first word is free.
            unsafe { p.cast::<*mut u8>().write(evict) };
            evict = p;
            freed += bin_pages(b) * PAGE;
        }
    }
    CACHE.lock.unlock();
    unmap_chain(evict);
}

/// Unmaps every cached mapping; returns whether there was any.
pub(crate) fn trim() -> bool {
    let heads = with_lists(|l| {
        l.bytes = 0;
        core::mem::replace(&mut l.head, [ptr::null_mut(); BINS])
    });
    let any = heads.iter().any(|h| !h.is_null());
    for p in heads {
        unmap_chain(p);
    }
    any
}

/// Takes the cache lock: called by the core's prepare handler, before it
/// takes the core's locks (no path holds this lock while taking another,
/// nor the reverse).
pub(crate) extern "C" fn fork_lock() {
    CACHE.lock.lock();
}

/// Releases it, in the parent and in the child.
pub(crate) extern "C" fn fork_unlock() {
    CACHE.lock.unlock();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_classes_cover_every_length() {
        for b in 1..BINS {
            assert!(bin_pages(b) > bin_pages(b - 1));
        }
        assert_eq!(bin_pages(BINS - 1) * PAGE, MAX_CACHED_MAP);
        for pages in 4..=MAX_CACHED_MAP / PAGE {
            let (f, c) = (bin_floor(pages), bin_ceil(pages));
            assert!(bin_pages(f) <= pages && bin_pages(f + 1) > pages, "{pages}");
            assert!(bin_pages(c) >= pages && (c == 0 || bin_pages(c - 1) < pages));
        }
        let r = rounded_request(40_000);
        assert_eq!((r + preload::large_offset()) % PAGE, 0);
        assert!(r >= 40_000);
    }
}
