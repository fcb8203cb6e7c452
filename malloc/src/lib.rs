//! `libpools_malloc.so`: the C malloc family on libpools, for
//! `LD_PRELOAD=libpools_malloc.so program`.
//!
//! Requests up to [`MAX_SMALL`] bytes are served by size-class pools of the
//! core (`malloc-16` ... `malloc-32768`, four classes per power of two and
//! one for a page and an eighth, see [`CLASSES`]), with
//! the same thread cache and self-locked shared cache as `pool_alloc`; their
//! objects come from the core's mmap'd spans (`pools::preload`), and the span
//! region map's entry for an address names its class, so `free` reads no
//! header (neither in front of the object nor at the span's start). A
//! class that has asked for less than a page of objects borrows them from
//! the pool of a larger class ([`lender`]) instead of creating its own.
//! Larger requests get a mapping of their own, recycled through a bounded
//! cache of freed mappings and resized with `mremap` ([`large`]). Pointers
//! that no span or mapping of ours owns are reported and the process aborts.
//!
//! With `POOL_DEBUG=uaf` in the environment at startup, no class pool is
//! created: every block is a mapping of its own, unmapped on free (no cache),
//! so that a use after free faults. With `POOL_DEBUG=canary`, no default
//! class pool either: every block is laid out and checked by [`canary`]
//! (a sealed header, a canary after the bytes asked).
//!
//! `POOL_DEBUG=fail=N` and `POOL_PROFILE=1` reach the class pools through
//! the core (their calls take its debug path); the blocks that come from no
//! pool (large ones, and every block under `uaf`) draw for `fail` and are
//! recorded in the profile here, in [`alloc_unpooled`] and
//! [`release_other`], off the path of small blocks.
//!
//! Besides the C entry points, the size classes and the interposition
//! logic, this crate holds the cache of freed large mappings ([`large`],
//! under the core's spin lock, which the core's fork handlers take through
//! `pools::preload::cover_outer_locks`); every pool operation is the
//! core's, reached through `pools::preload` only.

use core::cell::Cell;
use core::ffi::{c_int, c_void, CStr};
use core::ptr::{self, NonNull};
use core::sync::atomic::{
    AtomicPtr, AtomicU16, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use pools::preload::{self, Owner, Pool};

mod canary;
mod large;

/// Largest request served by a size class.
pub const MAX_SMALL: usize = 32 * 1024;
/// Size classes: 16, 32, 48, 64, then four per power of two up to MAX_SMALL,
/// and [`PAGE_PLUS`] between 4096 and 5120. Requests of a page and a
/// header of up to 272 bytes (sqlite's page-cache slots of 4104 and 4368
/// bytes, buffers of a page with a length in front) would otherwise take
/// 5120 bytes, a fifth of it unused; a class for each of the steps between
/// 4096 and 8192 instead would split a program's blocks of 4 to 8 KiB over
/// more pools, each with idle objects of its own (BENCHMARKS.md, issue
/// #19).
const CLASSES: usize = 41;
/// The class of a page and a header, and its index (the
/// classes above it come one later than the power-of-two steps put them).
/// 4368 is the largest multiple of 16 of which a span (256 KiB past its
/// 64-byte header) holds 60; a larger one fits 59, which costs a program
/// whose memory is mostly such blocks (sqlite's page cache) one span more
/// in sixty.
const PAGE_PLUS: usize = 4096 + 272;
const PAGE_PLUS_CLASS: usize = 28;
/// Every block is aligned to at least this (what glibc guarantees on x86-64).
const MIN_ALIGN: usize = 16;
/// Largest power-of-two class whose objects are aligned to their size
/// (`span` aligns such objects up to a page).
const MAX_ALIGNED_CLASS: usize = 4096;

/// The pool of each class, null until the class is first used; indexed by
/// the class, which is also its spans' tag. One entry per tag, so that
/// `free` indexes it by any tag without a bounds check (the entries past
/// the classes stay null).
static POOLS: [AtomicPtr<Pool>; 256] = [const { AtomicPtr::new(ptr::null_mut()) }; 256];
const _: () = assert!(CLASSES <= POOLS.len());

thread_local! {
    /// This thread is creating a class pool: a nested allocation (made by
    /// the core's first-use setup, e.g. `pthread_atfork`) is served by a
    /// mapping of its own instead of waiting for itself. Const and without
    /// a destructor, so touching it registers nothing.
    static IN_INIT: Cell<bool> = const { Cell::new(false) };
    /// The count of fresh spans when this thread last moved its cached
    /// objects of idle classes out ([`release_idle_classes`]).
    static SWEPT_HERE: Cell<usize> = const { Cell::new(0) };
}

/// Requests up to this many bytes find their class in [`SMALL_CLASS`].
const TABLE_MAX: usize = 1024;

/// The class of every request of at most `TABLE_MAX` bytes, by 16-byte
/// steps: `SMALL_CLASS[(n + 15) / 16]`. Most requests are small; a load is
/// cheaper than `class_of`'s arithmetic (BENCHMARKS.md, larson).
static SMALL_CLASS: [u8; TABLE_MAX / MIN_ALIGN + 1] = {
    let mut t = [0u8; TABLE_MAX / MIN_ALIGN + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = class_by_size(i * MIN_ALIGN) as u8;
        i += 1;
    }
    t
};

/// The class serving `n` bytes (`n <= MAX_SMALL`; 0 is served as 1).
#[inline]
fn class_of(n: usize) -> usize {
    if n <= TABLE_MAX {
        // Every size in a 16-byte step has the same class: classes are
        // multiples of 16.
        usize::from(SMALL_CLASS[n.div_ceil(MIN_ALIGN)])
    } else {
        class_by_size(n)
    }
}

/// [`class_of`], computed.
const fn class_by_size(n: usize) -> usize {
    if n <= 64 {
        n.saturating_sub(1) >> 4
    } else {
        let m = n - 1;
        let k = (usize::BITS - 1 - m.leading_zeros()) as usize; // 6..=14
        let c = 4 + (k - 6) * 4 + ((m >> (k - 2)) & 3);
        if c < PAGE_PLUS_CLASS {
            c
        } else if n <= PAGE_PLUS {
            PAGE_PLUS_CLASS
        } else {
            c + 1
        }
    }
}

/// The bytes of class `c` (what `malloc_usable_size` reports).
#[inline]
const fn class_size(c: usize) -> usize {
    if c < 4 {
        16 * (c + 1)
    } else if c == PAGE_PLUS_CLASS {
        PAGE_PLUS
    } else {
        // The power-of-two steps, counted without PAGE_PLUS's class.
        let s = c - 4 - (c > PAGE_PLUS_CLASS) as usize;
        let k = 6 + s / 4;
        (1 << k) + (s % 4 + 1) * (1 << (k - 2))
    }
}

/// The name of each class's pool, `malloc-SIZE`: made at compile time, and
/// kept by the registry as it is (not copied).
static CLASS_NAMES: [&CStr; CLASSES] = {
    let mut t: [&CStr; CLASSES] = [c"malloc"; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = match CStr::from_bytes_until_nul(&CLASS_NAME_BYTES[c]) {
            Ok(n) => n,
            Err(_) => panic!("a class name without its NUL"),
        };
        c += 1;
    }
    t
};

/// The bytes of [`CLASS_NAMES`], each NUL-terminated.
static CLASS_NAME_BYTES: [[u8; 13]; CLASSES] = {
    let mut t = [[0u8; 13]; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        let prefix = b"malloc-";
        let mut i = 0;
        while i < prefix.len() {
            t[c][i] = prefix[i];
            i += 1;
        }
        let size = class_size(c);
        let digits = size.ilog10() as usize + 1;
        let mut d = size;
        let mut k = digits;
        while k > 0 {
            k -= 1;
            t[c][prefix.len() + k] = b'0' + (d % 10) as u8;
            d /= 10;
        }
        c += 1;
    }
    t
};

/// Creates the pool of class `c` on its first use; a thread that races us
/// gets the same pool from the registry. `None` when the pool is not usable
/// from this call: this thread is creating a class pool right now (a nested
/// allocation of the core's first-use setup), `uaf` or `canary` is on (the
/// latter keeps its pools apart, see [`canary`]), or creation failed.
///
/// One class at a time, not all 41 at the first `malloc`: a short process
/// uses about half of them (BENCHMARKS.md), and each pool head costs a
/// creation and a quarter of a page.
#[cold]
fn create(c: usize) -> Option<&'static Pool> {
    // With `uaf`, no pools: every block is a mapping of its own, never
    // cached. With `canary`, the pools of its own table serve the blocks.
    if large::bypassed() || canary::on() {
        return None;
    }
    let pool = create_class_pool(c)?;
    // Release: a thread that acquires the pointer sees the pool initialised.
    // Racing creators store the same pool.
    POOLS[c].store(ptr::from_ref(pool).cast_mut(), Release);
    Some(pool)
}

/// The pool of class `c` from the registry (created by the first caller),
/// unless this thread is creating a class pool right now.
fn create_class_pool(c: usize) -> Option<&'static Pool> {
    if IN_INIT.try_with(Cell::get).unwrap_or(true) {
        return None;
    }
    let _ = IN_INIT.try_with(|f| f.set(true));
    let pool = preload::create_span_pool(CLASS_NAMES[c], class_size(c), c as u32).ok();
    let _ = IN_INIT.try_with(|f| f.set(false));
    pool
}

/// How many requests each class without a pool of its own has had served
/// by a larger class's pool ([`lender`]).
static BORROWED: [AtomicU16; CLASSES] = [const { AtomicU16::new(0) }; CLASSES];

/// A page: a class lends to a smaller one until that has asked for about a
/// page of objects in all.
const PAGE: usize = 4096;

/// The pool of a larger class, at most twice `c`'s size, that serves a
/// request of class `c` while `c` has no pool of its own and has borrowed
/// less than a page's worth of objects (at least one). So a class that a
/// process uses for a few objects only takes no pool head, thread-cache
/// array or span page of its own: `git --version` makes 11 pools instead
/// of 18 (BENCHMARKS.md, issue #19). A power-of-two class borrows from
/// power-of-two classes only, whose objects are aligned to their size as
/// its own would be (`alloc_aligned` counts on it). None while this thread
/// creates a class pool (as [`create`]) and while the memory profile
/// records, so that the profile names the class of each request.
#[cold]
fn lender(c: usize) -> Option<&'static Pool> {
    let size = class_size(c);
    // Relaxed: a count for a heuristic; a race lends a few objects more.
    if usize::from(BORROWED[c].load(Relaxed)) >= (PAGE / size).max(1)
        || IN_INIT.try_with(Cell::get).unwrap_or(true)
        || preload::profiling()
    {
        return None;
    }
    let aligned = size.is_power_of_two() && size <= MAX_ALIGNED_CLASS;
    let pool = (c + 1..CLASSES)
        .take_while(|&k| class_size(k) <= 2 * size)
        .filter(|&k| !aligned || class_size(k).is_power_of_two())
        // Acquire: as in `pool`.
        .map(|k| POOLS[k].load(Acquire))
        .find(|p| !p.is_null())?;
    BORROWED[c].fetch_add(1, Relaxed);
    // SAFETY: pool heads are never freed; this one was published by create.
    Some(unsafe { &*pool })
}

/// The pool that serves a request of class `c`, if one can be used: the
/// class's own, else a [`lender`], else its own created now.
#[inline]
fn pool(c: usize) -> Option<&'static Pool> {
    // Acquire: pairs with the Release store in `create`.
    let p = POOLS[c].load(Acquire);
    if p.is_null() {
        return lender(c).or_else(|| create(c));
    }
    // SAFETY: pool heads are never freed; this one was published by create.
    Some(unsafe { &*p })
}

/// The library's constructor, when it is loaded (before the program's
/// `main` and its handlers): the process's one set of fork handlers, the
/// core's, covering the large cache's lock too (see `pools::preload::cover_outer_locks`);
/// and `pool_gc`'s trim, this malloc's own `malloc_trim`.
extern "C" fn at_load() {
    preload::cover_outer_locks(large::fork_lock, large::fork_unlock);
    preload::on_fresh_span(large::span_made);
    preload::trim_with(malloc_trim);
}

#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Reports a pointer we did not hand out, and aborts: going on would
/// corrupt memory silently.
#[cold]
fn invalid_pointer(func: &str, p: *const c_void) -> ! {
    if preload::large_header_corrupt(p.cast()) {
        report_and_abort(
            func,
            p,
            "the header of its large block is overwritten: an underflow?",
        )
    }
    report_and_abort(
        func,
        p,
        "not allocated by this malloc, or not the start of a block",
    )
}

/// Reports a large block given back while the cache already holds it (freed
/// twice), and aborts: the cache would hand it out twice.
#[cold]
pub(crate) fn double_free(func: &str, p: *const c_void) -> ! {
    report_and_abort(func, p, "double free of a large block")
}

/// Writes `libpools_malloc: FUNC(0xADDR): invalid pointer (WHY); aborting`
/// to stderr without allocating, and aborts.
#[cold]
fn report_and_abort(func: &str, p: *const c_void, why: &str) -> ! {
    preload::write_stderr(format_args!(
        "libpools_malloc: {func}({:#x}): invalid pointer ({why}); aborting\n",
        p as usize
    ));
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

/// A block of `size` bytes aligned to `MIN_ALIGN`, or null. The common
/// case inline: a request of at most `TABLE_MAX` bytes whose class pool
/// hits in this thread's cache. Everything else is one tail call to
/// [`alloc_miss`], so this part needs no stack frame.
#[inline(always)]
fn alloc(size: usize) -> *mut c_void {
    if size <= TABLE_MAX {
        // Acquire: as in `pool`.
        let p = POOLS[usize::from(SMALL_CLASS[size.div_ceil(MIN_ALIGN)])].load(Acquire);
        // SAFETY: pool heads are never freed; a non-null one was published
        // by `create`.
        if let Some(obj) = unsafe { p.as_ref() }.and_then(Pool::alloc_hit) {
            return obj.as_ptr().cast();
        }
    }
    alloc_miss(size)
}

/// [`alloc`] past its inline part.
#[cold]
#[inline(never)]
fn alloc_miss(size: usize) -> *mut c_void {
    let p = if size <= MAX_SMALL {
        match pool(class_of(size)) {
            Some(pool) => {
                let p = pool.alloc();
                release_idle_classes();
                p
            }
            // While this thread creates a class pool, or with `uaf`: a
            // mapping of its own.
            None => alloc_unpooled(size, MIN_ALIGN, false),
        }
    } else {
        alloc_unpooled(size, MIN_ALIGN, false)
    };
    match p {
        Some(p) => p.as_ptr().cast(),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// The count of fresh spans when the classes were last swept.
static SWEPT: AtomicUsize = AtomicUsize::new(0);

/// Once per fresh span (the heap grew by one), on the first miss after it:
/// every class that no thread took objects of, past its thread cache,
/// through the last few fresh spans gives back its idle objects' memory
/// (`Pool::release_if_idle`). Each thread first moves the objects of such
/// classes that it caches itself to the shared caches, at its own first
/// miss after a fresh span. A single heap would have reused them for the
/// sizes that grow. Relaxed: the count is a clock; of the threads that see
/// it move, the one whose exchange succeeds sweeps.
fn release_idle_classes() {
    let now = preload::fresh_spans();
    if SWEPT_HERE
        .try_with(|s| s.replace(now) != now)
        .unwrap_or(false)
    {
        each_class_pool(preload::evict_own_if_idle);
    }
    let last = SWEPT.load(Relaxed);
    if now == last || SWEPT.compare_exchange(last, now, Relaxed, Relaxed).is_err() {
        return;
    }
    each_class_pool(Pool::release_if_idle);
}

/// Calls `f` on the pool of every class that has one.
fn each_class_pool(f: impl Fn(&'static Pool)) {
    for p in &POOLS[..CLASSES] {
        // SAFETY: as in `alloc` (Acquire: as in `pool`).
        if let Some(pool) = unsafe { p.load(Acquire).as_ref() } {
            f(pool);
        }
    }
}

/// A block that no default class pool serves: a large one (through the
/// cache of mappings when `align` is 16), or a small one while this thread
/// creates a class pool or under `uaf` (a mapping of its own); with
/// `canary`, every block (see [`canary`]). `zero`: its first `size` bytes
/// must read as zero. Draws for `fail=N` (except during a class pool's
/// creation, which must not fail half-way) and records the blocks that
/// come from no pool in the memory profile.
#[cold]
#[inline(never)]
fn alloc_unpooled(size: usize, align: usize, zero: bool) -> Option<NonNull<u8>> {
    let in_init = IN_INIT.try_with(Cell::get).unwrap_or(true);
    if canary::on() {
        // It draws for `fail=N` where no class pool does.
        return canary::alloc(size, align, zero, in_init);
    }
    if !in_init && preload::injected_failure() {
        return None;
    }
    let p = if size > MAX_SMALL && align <= MIN_ALIGN {
        large::obtain(size, zero)?
    } else {
        // Fresh mappings read as zero.
        large::map_retrying(size, align)?
    };
    if !in_init && preload::profiling() {
        preload::record_unpooled(usable("malloc", p.as_ptr().cast()), false);
    }
    Some(p)
}

/// Bytes usable at `p` (a block of ours), or abort naming `func`.
fn usable(func: &str, p: *mut c_void) -> usize {
    if canary::on() {
        return canary::usable(func, p);
    }
    match preload::owner(p.cast()) {
        Owner::Span { tag } => class_size(tag as usize),
        Owner::Large { usable } => usable,
        Owner::Foreign => invalid_pointer(func, p),
    }
}

/// Gives back `p` (NULL is ignored), or aborts naming `func` if it is not
/// ours. A small block (the common case) goes back to its class pool here,
/// inline; anything else is [`release_other`]'s.
#[inline(always)]
fn release(func: &str, p: *mut c_void) {
    let Some(nn) = NonNull::new(p.cast::<u8>()) else {
        return;
    };
    if let Some(tag) = preload::span_object(nn.as_ptr()) {
        // Acquire: as in `pool`. A span of this tag exists, so its pool was
        // published (unless the tag is not a class: then it is null).
        let pool = POOLS[usize::from(tag)].load(Acquire);
        // SAFETY: pool heads are never freed.
        if let Some(pool) = unsafe { pool.as_ref() } {
            // SAFETY: `p` is the start of an object of the span of this pool
            // (span_object checked it), given back by the caller.
            return unsafe { pool.free(nn) };
        }
    }
    release_other(func, nn)
}

/// [`release`] of a large block, or of a pointer that is not ours.
#[cold]
#[inline(never)]
fn release_other(func: &str, p: NonNull<u8>) {
    if canary::on() {
        // SAFETY: given back by the caller (or a bug, which it catches).
        return unsafe { canary::release(func, p) };
    }
    match preload::owner(p.as_ptr()) {
        Owner::Large { usable } => {
            preload::record_unpooled(usable, true);
            // SAFETY: the start of a large block of ours, given back.
            unsafe { large::release(func, p, usable) }
        }
        _ => invalid_pointer(func, p.as_ptr().cast()),
    }
}

/// A block of `size` bytes aligned to `align` (a power of two), or null.
fn alloc_aligned(align: usize, size: usize) -> *mut c_void {
    if align <= MIN_ALIGN {
        return alloc(size);
    }
    // A power-of-two class at least as large as the alignment hands out
    // objects aligned to their size (up to a page): check, in case a debug
    // option changed the object layout. (Not with `canary`, whose block
    // must be of the size asked.)
    let need = size.max(align);
    if need <= MAX_ALIGNED_CLASS && !canary::on() {
        let p = alloc(need.next_power_of_two());
        if p.is_null() || p as usize % align == 0 {
            return p;
        }
        release("posix_memalign", p);
    }
    match alloc_unpooled(size, align, false) {
        Some(p) => p.as_ptr().cast(),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

// Not exported under cfg(test): the test harness keeps its own malloc.
/// Allocates `size` bytes aligned to 16. `malloc(0)` returns a unique
/// pointer. Returns NULL with errno ENOMEM when no memory is left. The block
/// belongs to the caller until `free` or `realloc`. Thread-safe.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    alloc(size)
}

/// Gives back a block of this malloc. NULL is ignored. A pointer this
/// allocator did not return (or not the start of a block) is reported on
/// stderr and the process aborts. Thread-safe; any thread may free any block.
///
/// # Safety
/// `p` is NULL or a block not yet freed, not used afterwards.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    release("free", p)
}

/// Allocates `n * size` zeroed bytes. Overflow of the product, or no
/// memory, returns NULL with errno ENOMEM. Thread-safe.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    if total > MAX_SMALL {
        // Zeroed by the cache when it reuses a mapping; fresh ones are zero.
        return match alloc_unpooled(total, MIN_ALIGN, true) {
            Some(p) => p.as_ptr().cast(),
            None => {
                set_errno(libc::ENOMEM);
                ptr::null_mut()
            }
        };
    }
    let p = alloc(total);
    if !p.is_null() {
        // SAFETY: the block has at least `total` bytes.
        unsafe { ptr::write_bytes(p.cast::<u8>(), 0, total) };
    }
    p
}

/// Resizes a block: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)`
/// frees `p` and returns NULL (as glibc does). Otherwise returns a block of
/// `size` bytes holding the old contents (the same pointer when it still
/// fits its class), or NULL with errno ENOMEM, leaving `p` untouched. A
/// successful call leaves errno as it was (an in-place `mremap` that fails
/// before the block moves does not show). Aborts on a pointer that is not
/// ours. Thread-safe.
///
/// # Safety
/// `p` is NULL or a live block of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: reading this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: forwarded (caller's contract).
    let q = unsafe { resize(p, size) };
    if !q.is_null() {
        set_errno(errno);
    }
    q
}

/// [`realloc`], which may leave errno changed on success.
///
/// # Safety
/// As for [`realloc`].
unsafe fn resize(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return alloc(size);
    }
    if size == 0 {
        release("realloc", p);
        return ptr::null_mut();
    }
    if canary::on() {
        // SAFETY: a live block of the caller's (or a bug, caught there).
        return unsafe { canary::resize(NonNull::new_unchecked(p.cast()), size) };
    }
    let owner = preload::owner(p.cast());
    let old = match owner {
        Owner::Span { tag } => class_size(tag as usize),
        Owner::Large { usable } => usable,
        Owner::Foreign => invalid_pointer("realloc", p),
    };
    if let Owner::Large { usable } = owner {
        // SAFETY: a large block of ours (owner said so).
        unsafe { large::abort_if_cached("realloc", NonNull::new_unchecked(p.cast()), usable) };
    }
    if let Owner::Span { tag } = owner {
        // Acquire: as in `release`.
        let pool = POOLS.get(tag as usize).map(|p| p.load(Acquire));
        if let Some(pool) = pool.and_then(NonNull::new) {
            // SAFETY: `p` is the start of an object of this class pool's
            // span (owner said so): a realloc of a free block is a double
            // free, which aborts here rather than handing the block back.
            unsafe {
                pool.as_ref()
                    .abort_if_free(NonNull::new_unchecked(p.cast()))
            };
        }
    }
    // With `uaf`, always move: the old address must fault afterwards.
    if large::bypassed() {
        return realloc_move(p, old, size);
    }
    // Keep the block when the new size fits and would not fit a class at
    // most half as large.
    if size <= old && (old <= MAX_SMALL && class_size(class_of(size)) == old || size > old / 2) {
        return p;
    }
    if matches!(owner, Owner::Large { .. }) && size > MAX_SMALL {
        // SAFETY: a live large block of the caller's (owner said so),
        // which the caller gives to realloc.
        if let Some(q) = unsafe { large::resize(NonNull::new_unchecked(p.cast()), old, size) } {
            return q.as_ptr().cast();
        }
    }
    realloc_move(p, old, size)
}

/// The copying realloc: a new block, the contents, the old block freed.
fn realloc_move(p: *mut c_void, old: usize, size: usize) -> *mut c_void {
    let q = alloc(size);
    if !q.is_null() {
        // SAFETY: both blocks are live, distinct, and hold at least the
        // bytes copied.
        unsafe { ptr::copy_nonoverlapping(p.cast::<u8>(), q.cast::<u8>(), old.min(size)) };
        release("realloc", p);
    }
    q
}

/// `realloc(p, n * size)`, except that an overflowing product returns NULL
/// with errno ENOMEM and leaves `p` untouched.
///
/// # Safety
/// As for [`realloc`].
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// Stores in `*out` a block of `size` bytes aligned to `align`. Returns 0,
/// EINVAL (and leaves `*out` alone) when `align` is not a power of two
/// multiple of `sizeof(void *)`, or ENOMEM. errno is left unchanged, as
/// POSIX specifies. Thread-safe.
///
/// # Safety
/// `out` is a valid pointer to write to.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    // SAFETY: reading and restoring this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    let p = alloc_aligned(align, size);
    set_errno(errno);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: `out` is writable (caller).
    unsafe { *out = p };
    0
}

/// A block of `size` bytes aligned to `align`, a power of two; otherwise
/// NULL with errno EINVAL (C17, glibc 2.38). NULL with ENOMEM when no memory
/// is left. Thread-safe.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    alloc_aligned(align, size)
}

/// A block of `size` bytes aligned to `align`, rounded up to a power of two
/// as glibc does. NULL with ENOMEM when no memory is left (or EINVAL for an
/// alignment beyond any power of two). Thread-safe.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.checked_next_power_of_two() {
        Some(a) => alloc_aligned(a, size),
        None => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// A page-aligned block of `size` bytes, or NULL with ENOMEM. Thread-safe.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc_aligned(page_size(), size)
}

/// A page-aligned block of `size` rounded up to whole pages (one page for
/// 0), or NULL with ENOMEM (also when the rounding overflows). Thread-safe.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.max(1).checked_next_multiple_of(page) {
        Some(n) => alloc_aligned(page, n),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// Returns memory to the OS: what `pool_gc(NULL)` does to the pools (the
/// size classes' idle objects beyond their `minavail`, then the spans left
/// empty), and the large mappings this malloc keeps for reuse. `pad` is
/// ignored. Returns 1 if cached large mappings were released, 0 otherwise.
/// The core's `pool_gc` calls it too (it calls the `malloc_trim` of the
/// malloc in use). Thread-safe.
#[cfg_attr(not(test), no_mangle)]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    preload::gc_pools();
    c_int::from(large::trim())
}

/// Bytes usable in the block `p` (at least what was asked), 0 for NULL.
/// Aborts on a pointer that is not ours. Thread-safe.
///
/// # Safety
/// `p` is NULL or a live block of this malloc.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    usable("malloc_usable_size", p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_gets_the_smallest_class_that_fits() {
        for c in 1..CLASSES {
            assert!(class_size(c) > class_size(c - 1));
            assert_eq!(class_size(c) % MIN_ALIGN, 0);
        }
        assert_eq!(class_size(CLASSES - 1), MAX_SMALL);
        for n in 0..=MAX_SMALL {
            let c = class_of(n);
            assert!(class_size(c) >= n.max(1), "size {n}");
            assert!(c == 0 || class_size(c - 1) < n, "size {n}");
        }
        assert_eq!(
            [class_of(64), class_of(65), class_of(80), class_of(81)],
            [3, 4, 4, 5]
        );
        let sizes = [4096, 4097, 4368, 4369, 5120, 5121].map(|n| class_size(class_of(n)));
        assert_eq!(sizes, [4096, PAGE_PLUS, PAGE_PLUS, 5120, 5120, 6144]);
    }

    #[test]
    fn every_class_is_named_by_its_size() {
        for (c, name) in CLASS_NAMES.iter().enumerate() {
            assert_eq!(
                name.to_str(),
                Ok(format!("malloc-{}", class_size(c)).as_str())
            );
        }
    }
}
