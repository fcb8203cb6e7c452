//! `POOL_DEBUG=canary`: every block between a sealed header and a canary,
//! checked at each `free`, `realloc` and `malloc_usable_size`, and a freed
//! block's marks checked when it is handed out again. A hardening option
//! for the paranoid, off by default: it catches the overflows, underflows
//! and writes after free that glibc's chunk headers catch, and more
//! (README, "Hardening"), at the price of 40 bytes per small block and the
//! class pools' slow path on every call (BENCHMARKS.md, "The preload's
//! `canary` option").
//!
//! A small block (at most [`MAX_SMALL`] bytes with its 40 bytes of
//! overhead) is an object of the class pool of that sum, kept in a table
//! of its own so that the default paths (which find [`crate`]'s table of
//! pools empty) always miss to the slow path, which comes here:
//!
//! ```text
//!  slot: [0, 24) the pool's words while the block is free (links, key)
//!        [24, 32) seal: the slot's hash with the request size `n` in its
//!                 low 16 bits; a flipped hash while the block is free
//!        [32, 32 + n) the caller's bytes; while free, the first word holds
//!                 the slot's pattern (when n >= 8)
//!        [32 + n, 40 + n) canary: the slot's hash again, unaligned
//! ```
//!
//! A large block (any other request, and every block of an aligned
//! request or of a class pool's creation) is a block of the `large`
//! module asked with [`LARGE_EXTRA`] more bytes: the canary right after
//! the caller's `n` bytes, then, in the block's last 16 usable bytes, `n`
//! and a seal of the block's address and `n`. Its header and guard pages are checked as
//! without the option. `realloc` always moves.
//!
//! The hashes mix the address with a secret of the process, so that no
//! constant a bug writes matches them. Decided once, at the first call that
//! asks (the first `malloc`), from the environment; every block of the
//! process then has this layout.

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use core::sync::atomic::{
    AtomicPtr, AtomicU8, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use pools::preload::{self, Owner, Pool};

use crate::{class_of, class_size, large, CLASSES, MAX_SMALL};

/// Bytes before a small block's caller bytes: the pool's words, the seal.
const HEADER: usize = 32;
/// Bytes a small block takes beyond the request: the header and the canary.
const OVERHEAD: usize = HEADER + 8;
/// Bytes a large block asks beyond the request: the canary (8), then `n`
/// and the seal at the usable end (16), rounded up to 16.
const LARGE_EXTRA: usize = 32;
/// The low bits of a seal that hold the request size.
const SIZE_BITS: usize = 0xffff;
const _: () = assert!(MAX_SMALL <= SIZE_BITS);

/// Off or on, `UNKNOWN` until the environment is first read.
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;

/// The secret the hashes mix in: from `getrandom`, not from the core's
/// secrets, so that a hash the program reads tells nothing of the
/// free-list links' protection. Set once, before `STATE` says on.
static SECRET: AtomicUsize = AtomicUsize::new(0);

/// Whether the option is on for the life of the process.
#[inline]
pub(crate) fn on() -> bool {
    // Acquire: pairs with the Release store in `decide`, so that a thread
    // that finds the option on also finds the secret set.
    match STATE.load(Acquire) {
        UNKNOWN => decide(),
        s => s == ON,
    }
}

/// Reads the environment; when the option is on, sets the secret (the
/// first thread to get here sets it, the others keep its value).
#[cold]
fn decide() -> bool {
    let on = preload::canary_requested();
    if on {
        let mut s = 0usize;
        // SAFETY: writes at most 8 bytes into `s`. Through `syscall`, which
        // the library imports anyway: one dynamic symbol less for the
        // loader to bind in every process.
        let got = unsafe {
            libc::syscall(
                libc::SYS_getrandom,
                ptr::from_mut(&mut s),
                8usize,
                libc::GRND_NONBLOCK,
            )
        };
        if got != 8 {
            // No entropy to be had (early boot, a filter): the addresses
            // that ASLR chose, which still differ between runs.
            s = ptr::from_ref(&s) as usize ^ (ptr::from_ref(&SECRET) as usize).rotate_left(23);
        }
        // Relaxed: the one value every thread reads is whichever of these
        // stores is first; STATE's Release publishes it.
        let _ = SECRET.compare_exchange(0, s | 1, Relaxed, Relaxed);
    }
    STATE.store(if on { ON } else { OFF }, Release);
    on
}

/// The class pools of canary blocks, created on first use.
static POOLS: [AtomicPtr<Pool>; CLASSES] = [const { AtomicPtr::new(ptr::null_mut()) }; CLASSES];

fn pool(c: usize) -> Option<&'static Pool> {
    // Acquire: pairs with the Release store below.
    let p = POOLS[c].load(Acquire);
    if let Some(p) = NonNull::new(p) {
        // SAFETY: pool heads are never freed; this one was published here.
        return Some(unsafe { p.as_ref() });
    }
    let pool = crate::create_class_pool(c)?;
    // Release: a thread that acquires the pointer sees the pool
    // initialised. Racing creators store the same pool.
    POOLS[c].store(ptr::from_ref(pool).cast_mut(), Release);
    Some(pool)
}

/// The top bit of every byte: set in every hash, so that no byte a text
/// or a string's NUL puts there (0 to 0x7f) matches one (see [`hash`]).
const HIGH_BITS: usize = 0x8080_8080_8080_8080;

/// The hash of an address (a slot, or a large block): the canary, and the
/// seals and the pattern made from it: one multiply of the address mixed
/// with the secret, enough to catch mistakes, not a MAC. Each byte
/// has its top bit set: an overflow or underflow of a string (its NUL, or
/// any ASCII byte) changes the canary or the seal it reaches for certain;
/// any other byte, with a chance of 127 in 128.
#[inline]
fn hash(addr: usize) -> usize {
    // Relaxed: set before `on` returned true to this thread (see `on`).
    let z = ((addr ^ SECRET.load(Relaxed)) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (z ^ (z >> 32)) as usize | HIGH_BITS
}

/// A live small block's seal, from its slot's hash `h`.
fn live_seal(h: usize, n: usize) -> usize {
    h & !SIZE_BITS | n
}

/// A free small block's seal (its bytes keep their top bits).
fn free_seal(h: usize, n: usize) -> usize {
    live_seal(h, n) ^ 0x5a5a_5a5a_5a5a_0000
}

/// The seal at the end of the large block `a` of `n` bytes asked.
fn large_seal(a: usize, n: usize) -> usize {
    hash(a ^ n.rotate_left(32))
}

/// The pattern of a free block's first word (its bytes keep their top
/// bits).
fn pattern(h: usize) -> usize {
    h ^ 0x3c3c_3c3c_3c3c_3c3c
}

/// Reads or writes the word at `at`, which may be unaligned.
///
/// # Safety
/// `at` is valid for 8 bytes.
unsafe fn word(at: usize) -> usize {
    // SAFETY: per the contract.
    unsafe { (at as *const usize).read_unaligned() }
}
unsafe fn set_word(at: usize, v: usize) {
    // SAFETY: per the contract.
    unsafe { (at as *mut usize).write_unaligned(v) }
}

/// A block of `size` bytes aligned to `align` (16 unless an aligned
/// request), laid out as above, or `None` when no memory is left (or a
/// `fail=N` draw fails it: the class pools draw for theirs, this for the
/// large blocks). `in_init`: this thread is creating a class pool (no
/// class pool now, no draw). `zero`: the caller's bytes must read as zero.
pub(crate) fn alloc(size: usize, align: usize, zero: bool, in_init: bool) -> Option<NonNull<u8>> {
    let small = size
        .checked_add(OVERHEAD)
        .filter(|&need| need <= MAX_SMALL && align <= 16 && !in_init);
    if let Some(c) = small.map(class_of) {
        if let Some(pool) = pool(c) {
            let slot = pool.alloc()?;
            // SAFETY: a slot of `class_size(c)` bytes, ours.
            let p = unsafe { seal_small(slot.as_ptr() as usize, size, class_size(c)) };
            if zero {
                // SAFETY: the block's `size` bytes are the caller's.
                unsafe { p.as_ptr().write_bytes(0, size) };
            }
            return Some(p);
        }
    }
    if !in_init && preload::injected_failure() {
        return None;
    }
    let total = size.checked_add(LARGE_EXTRA)?;
    let p = if align <= 16 && total > MAX_SMALL {
        large::obtain(total, zero)?
    } else {
        large::map_retrying(total, align)?
    };
    let Owner::Large { usable } = preload::owner(p.as_ptr()) else {
        unreachable!("a large block that the region map does not know")
    };
    if !in_init && preload::profiling() {
        preload::record_unpooled(usable, false);
    }
    let (a, end) = (p.as_ptr() as usize, p.as_ptr() as usize + usable);
    // SAFETY: the block's usable bytes are ours; `size + 32 <= usable`.
    unsafe {
        set_word(a + size, hash(a));
        set_word(end - 16, size);
        set_word(end - 8, large_seal(a, size));
    }
    Some(p)
}

/// Checks the free slot `slot` of `class` bytes that a class pool handed
/// out (fresh, or with the marks its last `free` left), seals it for a
/// request of `n` bytes and returns the caller's pointer.
///
/// # Safety
/// `slot` is an object of `class` bytes (at least `n + OVERHEAD`) that
/// the caller owns.
unsafe fn seal_small(slot: usize, n: usize, class: usize) -> NonNull<u8> {
    let (p, h) = (slot + HEADER, hash(slot));
    // SAFETY: the slot's words are ours (per the contract).
    unsafe {
        let seal = word(slot + 24);
        let old = seal & SIZE_BITS;
        let intact = if seal == 0 {
            // Never handed out: the span's fresh zero bytes.
            word(p) == 0
        } else {
            seal == free_seal(h, old)
                && old + OVERHEAD <= class
                && (old < 8 || word(p) == pattern(h))
                && word(p + old) == h
        };
        if !intact {
            damaged("malloc", p, WRITTEN_AFTER_FREE);
        }
        set_word(slot + 24, live_seal(h, n));
        set_word(p + n, h);
        NonNull::new_unchecked(p as *mut u8)
    }
}

const WRITTEN_AFTER_FREE: &str =
    "a free block was written to (a use after free, or an overflow of the block before it)";
const UNDERFLOW: &str =
    "the header before the block is overwritten (an underflow?), or not a block";
const OVERFLOW: &str = "the canary after the block is overwritten (an overflow?)";
const LARGE_UNDERFLOW: &str = "the header of its large block is overwritten (an underflow?)";
const LARGE_OVERFLOW: &str = "the seal at the end of the large block is overwritten (an overflow?)";
const NOT_OURS: &str =
    "invalid pointer (not allocated by this malloc, or not the start of a block)";

/// Writes `libpools_malloc: FUNC(0xADDR): WHY; aborting` to stderr
/// without allocating, and aborts.
#[cold]
fn damaged(func: &str, p: usize, why: &str) -> ! {
    preload::write_stderr(format_args!(
        "libpools_malloc: {func}({p:#x}): {why}; aborting\n"
    ));
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// A block of ours, checked.
enum Block {
    /// A class pool's: its slot, the slot's hash and the request size.
    Small {
        pool: &'static Pool,
        slot: usize,
        h: usize,
        n: usize,
    },
    /// A large one: its usable bytes.
    Large { usable: usize, n: usize },
}

/// The canary pool, the slot and the class size of the small block at
/// `a`, if `a` is where one starts: `HEADER` bytes into an object of one
/// of this module's pools.
fn small_slot(a: usize) -> Option<(&'static Pool, usize, usize)> {
    let slot = a.wrapping_sub(HEADER);
    if a % 16 != 0 {
        return None;
    }
    let Owner::Span { tag } = preload::owner(slot as *const u8) else {
        return None;
    };
    let pool = NonNull::new(POOLS.get(tag as usize)?.load(Acquire))?;
    // SAFETY: pool heads are never freed.
    Some((unsafe { pool.as_ref() }, slot, class_size(tag as usize)))
}

/// Checks the live block `p` (its seal and its canary), or reports the
/// damage, naming `func`, and aborts.
fn check(func: &str, p: *mut c_void) -> Block {
    let a = p as usize;
    if let Some((pool, slot, class)) = small_slot(a) {
        let h = hash(slot);
        // SAFETY: the slot is an object of that class pool (the region
        // map said so): its words are readable.
        let seal = unsafe { word(slot + 24) };
        let n = seal & SIZE_BITS;
        if seal == free_seal(h, n) {
            damaged(func, a, "double free");
        }
        if seal != live_seal(h, n) || n + OVERHEAD > class {
            damaged(func, a, UNDERFLOW);
        }
        // SAFETY: `n + OVERHEAD` bytes of the slot are ours.
        if unsafe { word(a + n) } != h {
            damaged(func, a, OVERFLOW);
        }
        return Block::Small { pool, slot, h, n };
    }
    let Owner::Large { usable } = preload::owner(p.cast()) else {
        if preload::large_header_corrupt(p.cast()) {
            damaged(func, a, LARGE_UNDERFLOW)
        }
        damaged(func, a, NOT_OURS)
    };
    let end = a + usable;
    // SAFETY: a large block's usable bytes are mapped.
    let (n, seal) = unsafe { (word(end - 16), word(end - 8)) };
    if usable < LARGE_EXTRA || n > usable - LARGE_EXTRA || seal != large_seal(a, n) {
        // SAFETY: a large block of ours (owner said so).
        unsafe { large::abort_if_cached(func, NonNull::new_unchecked(p.cast()), usable) };
        damaged(func, a, LARGE_OVERFLOW);
    }
    // SAFETY: `n + 8 <= usable`.
    if unsafe { word(a + n) } != hash(a) {
        damaged(func, a, OVERFLOW);
    }
    Block::Large { usable, n }
}

/// The caller's bytes of the live block `p` (`malloc_usable_size`).
pub(crate) fn usable(func: &str, p: *mut c_void) -> usize {
    match check(func, p) {
        Block::Small { n, .. } | Block::Large { n, .. } => n,
    }
}

/// Gives back the live block `p`, checked, naming `func` if it aborts.
///
/// # Safety
/// `p` is a block of ours that the caller gives up (or a bug, caught).
pub(crate) unsafe fn release(func: &str, p: NonNull<u8>) {
    match check(func, p.as_ptr().cast()) {
        Block::Small { pool, slot, h, n } => {
            // SAFETY: the slot is the caller's until the pool takes it.
            unsafe {
                set_word(slot + 24, free_seal(h, n));
                if n >= 8 {
                    set_word(slot + HEADER, pattern(h));
                }
                pool.free(NonNull::new_unchecked(slot as *mut u8));
            }
        }
        Block::Large { usable, .. } => {
            preload::record_unpooled(usable, true);
            // SAFETY: the start of a large block of ours, given back.
            unsafe { large::release(func, p, usable) }
        }
    }
}

/// `realloc(p, size)` of a live block `p`, `size` not 0: always a new
/// block, so that the old address is checked at its next use.
///
/// # Safety
/// `p` is a live block of ours.
pub(crate) unsafe fn resize(p: NonNull<u8>, size: usize) -> *mut c_void {
    let n = usable("realloc", p.as_ptr().cast());
    let q = crate::alloc(size);
    if !q.is_null() {
        // SAFETY: both blocks are live and distinct, with at least the
        // bytes copied.
        unsafe {
            ptr::copy_nonoverlapping(p.as_ptr(), q.cast::<u8>(), n.min(size));
            release("realloc", p);
        }
    }
    q
}
