//! Requests above the largest size class: a mapping each
//! (`pools::preload::large_obtain`), with a bounded cache of freed mappings so
//! that a program that frees and allocates large blocks in turn (sort's
//! buffers, gcc's obstacks, python's big strings and lists) does not pay an
//! `mmap`/`munmap` pair and the page faults of fresh memory every time.
//!
//! Mapping lengths are rounded up to **page classes** (four per power of two
//! of pages, like the small classes), so a freed mapping serves any later
//! request of its class. The cache keeps one list per class, linked through
//! the first word of each cached block; it holds at most [`CACHE_MAX`] bytes
//! and at most an eighth of the large bytes mapped (but always
//! [`CACHE_FLOOR`]), and only mappings up to [`MAX_CACHED_MAP`] bytes.
//! `malloc_trim` (hence `pool_gc`, which calls the `malloc_trim` of the
//! malloc in use) unmaps everything it holds.
//!
//! Thread safety: one spin lock guards the lists and the cached byte count;
//! no system call and no other lock is taken under it. Fork safety: the
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
pub(crate) const MAX_CACHED_MAP: usize = 32 << 20;
/// Most bytes the cache holds.
pub(crate) const CACHE_MAX: usize = 64 << 20;
/// The cache may always hold this much, even when an eighth of what is
/// mapped is less.
pub(crate) const CACHE_FLOOR: usize = 16 << 20;
/// Page classes up to MAX_CACHED_MAP (8192 pages: class 44).
const BINS: usize = 45;

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
    }),
};

/// Bytes of large mappings in existence (live and cached): the base of the
/// one-eighth bound. Relaxed: a heuristic; no memory is reached through it.
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

/// Bins searched above a request's own class: a cached block up to two
/// classes larger (at most about 1.5 times the pages) serves it too.
const BIN_SLACK: usize = 2;

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

/// A cached block of at least `size` bytes (its first words cleared), or
/// `None` when the cache has none of its class or the next [`BIN_SLACK`].
fn take_cached(size: usize) -> Option<NonNull<u8>> {
    let len = map_len_for(rounded_request(size))?;
    if !(4 * PAGE..=MAX_CACHED_MAP).contains(&len) {
        return None;
    }
    let b = bin_floor(len / PAGE);
    let hit = with_lists(|l| {
        for j in b..(b + 1 + BIN_SLACK).min(BINS) {
            let p = l.head[j];
            if !p.is_null() {
                // SAFETY: a cached block holds the next one in its first
                // word; the cache owns it.
                l.head[j] = unsafe { p.cast::<*mut u8>().read() };
                // Only mappings of exactly their class length are cached.
                l.bytes -= bin_pages(j) * PAGE;
                return p;
            }
        }
        ptr::null_mut()
    });
    let p = NonNull::new(hit)?;
    // SAFETY: the block is now ours; the link and the mark are not the
    // caller's data.
    unsafe {
        p.as_ptr().cast::<*mut u8>().write(ptr::null_mut());
        mark_of(p).write(0);
    }
    Some(p)
}

/// A large block of at least `size` bytes aligned to 16 (a cached one when
/// there is one of its class), or `None` when none can be mapped. `zero`:
/// the first `size` bytes must read as zero (a fresh mapping already does).
pub(crate) fn obtain(size: usize, zero: bool) -> Option<NonNull<u8>> {
    if let Some(p) = take_cached(size) {
        if zero {
            // SAFETY: the block has at least `size` bytes (its class) and
            // is the caller's.
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

/// Takes back the large block `p` of `usable` bytes (what `preload::owner`
/// said): into the cache when it fits the bounds, else unmapped. A block
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
        let limit = (MAPPED.load(Relaxed) / 8).clamp(CACHE_FLOOR, CACHE_MAX);
        let b = bin_floor(len / PAGE);
        let mark = CACHED_MARK ^ p.as_ptr() as usize;
        // SAFETY: the block is mapped (ours, live or cached): read its
        // second word. Only a match costs a walk of the list.
        let suspect = unsafe { mark_of(p).read() } == mark;
        let kept = with_lists(|l| {
            if suspect && list_holds(l.head[b], p) {
                return None;
            }
            if l.bytes + len > limit {
                return Some(false);
            }
            // SAFETY: the block is given up to us (caller) and has room for
            // a link and the mark.
            unsafe {
                p.as_ptr().cast::<*mut u8>().write(l.head[b]);
                mark_of(p).write(mark);
            }
            l.head[b] = p.as_ptr();
            l.bytes += len;
            Some(true)
        });
        let Some(kept) = kept else {
            crate::double_free(func, p.as_ptr().cast())
        };
        if kept {
            return;
        }
    }
    sub_mapped(len);
    // SAFETY: a live large block given up by the caller.
    unsafe { preload::large_release(p) };
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
/// # Safety
/// `p` is a live large block of the caller's, which it gives up if the
/// result is another block.
pub(crate) unsafe fn resize(p: NonNull<u8>, old: usize, size: usize) -> Option<NonNull<u8>> {
    if size > old && old <= COPY_MAX {
        if let Some(q) = take_cached(size) {
            // SAFETY: `p` has `old` live bytes and `q` at least `size >
            // old`; two distinct blocks. Then `p` is given back (caller).
            unsafe {
                ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), old);
                release("realloc", p, old);
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

/// Unmaps every cached mapping; returns whether there was any.
pub(crate) fn trim() -> bool {
    let (heads, bytes) = with_lists(|l| {
        let bytes = l.bytes;
        l.bytes = 0;
        (
            core::mem::replace(&mut l.head, [ptr::null_mut(); BINS]),
            bytes,
        )
    });
    for mut p in heads {
        while let Some(nn) = NonNull::new(p) {
            // SAFETY: a cached block, now ours alone: read its link, then
            // unmap it.
            unsafe {
                p = p.cast::<*mut u8>().read();
                preload::large_release(nn);
            }
        }
    }
    sub_mapped(bytes);
    bytes != 0
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
