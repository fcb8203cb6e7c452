//! The registry: every pool and every thread cache of the process.
//!
//! One mutex guards the list of pools (create, merge, destroy, gc, stats,
//! dump), the list of free heads and the list of thread caches (thread
//! start and exit). Nothing on the alloc/free hot path takes it, and no
//! object goes back to the allocator underneath while it is held (that
//! allocator may be the process's malloc, which may be these very pools).

use crate::backing::{self, Backend};
use crate::head::{
    Layout, Pool, Stats, KNOWN_FLAGS, MIN_OBJECT, POOL_F_EXACT, POOL_F_SHARED, POOL_MAX_SIZE,
};
use crate::line::{self, Line};
use crate::thread_cache::{self, ThreadCache, MAX_POOLS, THREADS};
use crate::{meta, options, os, span};
use core::ffi::CStr;
use core::fmt::Write;
use core::ptr::{self, NonNull};
use core::sync::atomic::AtomicU64;
use core::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard, Once, PoisonError, TryLockError};

/// Why a registry call failed, as an errno value for the C side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// EINVAL: a bad argument or a handle that is not a live pool.
    Invalid,
    /// ENOMEM: no memory, or MAX_POOLS pools alive.
    NoMemory,
    /// EBUSY: too late, pools exist.
    Busy,
}

impl Error {
    pub fn errno(self) -> libc::c_int {
        match self {
            Error::Invalid => libc::EINVAL,
            Error::NoMemory => libc::ENOMEM,
            Error::Busy => libc::EBUSY,
        }
    }
}

/// What `destroy` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// The caller's handle is released (the pool itself is gone, or lives on
    /// for its other users).
    Released,
    /// The application still holds objects: nothing changed.
    InUse,
}

struct Registry {
    /// Live pools, linked through `Pool::reg_next`.
    pools: *mut Pool,
    /// Destroyed heads waiting for reuse, oldest first (FIFO, so a stale
    /// handle stays recognisably dead as long as possible).
    free_first: *mut Pool,
    free_last: *mut Pool,
    /// Heads on the free list.
    free_count: usize,
    /// Slots handed out so far; a recycled head keeps its slot.
    slots: usize,
    /// A pool was created once: settings that shape pools are frozen.
    created: bool,
}

// SAFETY: the raw pointers are only followed under the mutex, and what they
// point to (pool heads, thread-cache mappings) is not tied to any thread.
unsafe impl Send for Registry {}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pools: ptr::null_mut(),
    free_first: ptr::null_mut(),
    free_last: ptr::null_mut(),
    free_count: 0,
    slots: 0,
    created: false,
});

/// Reads the environment and sets up the fences, once. Setters of options
/// call it first, so that a value set through the API is not overridden by
/// the environment read later.
pub fn init() {
    if INIT.is_completed() {
        return;
    }
    // Under INIT_LOCK, which the fork handlers hold across `fork()`: a child
    // never inherits an initialisation half done (its Once would wait for
    // a thread that does not exist). Inside the fork window the lock is
    // held for this thread.
    let _guard = (!crate::sync::inside_window())
        .then(|| INIT_LOCK.lock().unwrap_or_else(PoisonError::into_inner));
    INIT.call_once(init_once);
}

/// Once, at initialisation: the layers below learn how to call up, the
/// memory checkers are found, the memory profile is set up, and the
/// `POOL_STATS=1` dump is registered for the exit.
fn init_once() {
    options::load_env();
    crate::head::install_upcalls(crate::head::Upcalls {
        gc,
        recycle,
        pool_at,
    });
    crate::checkers::init();
    if crate::options::profiling() && !crate::profile::enable() {
        // No memory for the tables: profiling stays off.
        crate::options::set_profiling(false);
    }
    if crate::options::stats_at_exit() {
        // SAFETY: registering a function that lives as long as the library
        // (glibc runs handlers of a shared object at its dlclose).
        unsafe { libc::atexit(stats_at_exit) };
    }
}

/// `POOL_STATS=1`: the pools on stderr at exit, and the memory profile
/// when profiling was on. The dumps format on the stack, write with
/// write(2) and map their tables with mmap: they call no malloc, which may
/// be torn down by now.
extern "C" fn stats_at_exit() {
    dump_sorted(2, DumpOrder::Unsorted, 0);
    if crate::profile::recorded() {
        dump_profile(2, PROFILE_AT_EXIT);
    }
}

/// Call sites `POOL_STATS=1` prints at exit when profiling was on.
const PROFILE_AT_EXIT: usize = 30;

static INIT: Once = Once::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> RegistryGuard {
    init();
    // Nothing panics while holding the lock; if something ever did, the
    // lists are still consistent between statements, so keep going.
    match REGISTRY.try_lock() {
        Ok(g) => RegistryGuard::Locked(g),
        Err(TryLockError::Poisoned(e)) => RegistryGuard::Locked(e.into_inner()),
        Err(TryLockError::WouldBlock) => fork_window_registry().unwrap_or_else(|| {
            RegistryGuard::Locked(REGISTRY.lock().unwrap_or_else(PoisonError::into_inner))
        }),
    }
}

/// The registry, locked by this thread, or (inside its fork window, see
/// `fork`) by the fork handlers for this thread.
enum RegistryGuard {
    Locked(MutexGuard<'static, Registry>),
    /// The registry of the guard `fork_prepare` keeps in `FORK`.
    ForkWindow(NonNull<Registry>),
}

impl core::ops::Deref for RegistryGuard {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        match self {
            RegistryGuard::Locked(g) => g,
            // SAFETY: the fork handlers hold the lock for this thread until
            // its window closes, after the call that made this guard.
            RegistryGuard::ForkWindow(r) => unsafe { r.as_ref() },
        }
    }
}

impl core::ops::DerefMut for RegistryGuard {
    fn deref_mut(&mut self) -> &mut Registry {
        match self {
            RegistryGuard::Locked(g) => g,
            // SAFETY: as in `deref`; the handlers do not touch the registry
            // while a call inside the window runs.
            RegistryGuard::ForkWindow(r) => unsafe { r.as_mut() },
        }
    }
}

impl Registry {
    fn pools(&self) -> impl Iterator<Item = &'static Pool> {
        let mut cur = self.pools;
        core::iter::from_fn(move || {
            // SAFETY: live pools stay valid while the lock is held, and heads
            // are never unmapped.
            let p = unsafe { cur.as_ref()? };
            cur = p.reg_next.get();
            Some(p)
        })
    }

    /// Objects of `pool` in all thread caches.
    fn cached(&self, pool: &Pool) -> usize {
        THREADS.cached(pool)
    }
}

// ---- thread caches -------------------------------------------------------

/// A new pool key: random-looking, unique per creation, bit 0 clear, never
/// 0 (see `Pool::key`).
fn next_key() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    static SEED: once_cell::sync::OnceCell<u64> = once_cell::sync::OnceCell::new();
    let seed = *SEED.get_or_init(|| {
        #[cfg(not(miri))]
        {
            // SAFETY: AT_RANDOM points to 16 random bytes the kernel gave the
            // process, valid for its whole life (glibc and musl).
            let r = unsafe { libc::getauxval(libc::AT_RANDOM) } as *const u64;
            if !r.is_null() {
                // SAFETY: as above; possibly unaligned.
                return unsafe { r.add(1).read_unaligned() };
            }
        }
        0x9e37_79b9_7f4a_7c15
    });
    loop {
        // Relaxed: only uniqueness matters.
        let mut z = seed.wrapping_add(N.fetch_add(1, Relaxed).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // splitmix64's finaliser: a bijection, so distinct counts give
        // distinct keys (bit 0 aside, which halves nothing that matters).
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let k = z & !1;
        if k != 0 {
            return k;
        }
    }
}

// ---- pools ---------------------------------------------------------------

/// Creates a pool, or joins an existing one when both are POOL_F_SHARED and
/// of the same rounded size.
pub fn create(name: &CStr, size: usize, flags: u32) -> Result<&'static Pool, Error> {
    create_with(name, size, flags, None)
}

/// The pool whose objects come from the spans of `tag` (see `span`): a
/// size class of the LD_PRELOAD malloc, one of the tags below
/// `span::RESERVED_TAGS`, bound to this size by the first call. The first
/// call creates it; a later one (two threads racing to create a class on
/// its first use) returns the same pool, counted as one more user, as a
/// merge is. Never merged with any other pool.
pub fn create_span_pool(name: &CStr, size: usize, tag: u32) -> Result<&'static Pool, Error> {
    if size == 0 || !span::reserve(tag, size.next_multiple_of(os::OBJECT_ALIGN).max(MIN_OBJECT)) {
        return Err(Error::Invalid);
    }
    create_with(name, size, 0, Some(Backend::Span(tag)))
}

/// Largest object a pool takes from spans by default: one span holds at
/// least 7 of them; the end of a span that no object fills is never
/// written, so it costs address space, not memory.
pub(crate) const SPAN_POOL_MAX: usize = 32 * 1024;

/// Where a pool of `size`-byte objects created now gets them: a debugging
/// backend if one is selected (`uaf`); otherwise, up to [`SPAN_POOL_MAX`],
/// the spans of the tag of its object size (given back to the OS when
/// empty, which glibc's per-thread arenas do not do), unless
/// `POOL_BACKEND=malloc` or every tag is bound to other sizes; otherwise
/// malloc.
fn default_backend(size: usize) -> Backend {
    if options::guarded_objects() {
        Backend::Guarded
    } else if options::spans_enabled() && size <= SPAN_POOL_MAX {
        span::tag_for_size(size.max(MIN_OBJECT)).map_or(Backend::Malloc, Backend::Span)
    } else {
        Backend::Malloc
    }
}

/// Destroyed heads kept out of reuse (see `create_with`).
const QUARANTINE: usize = 16;

fn create_with(
    name: &CStr,
    size: usize,
    flags: u32,
    backend: Option<Backend>,
) -> Result<&'static Pool, Error> {
    if size == 0 || size > POOL_MAX_SIZE || flags & !KNOWN_FLAGS != 0 {
        return Err(Error::Invalid);
    }
    let size = if flags & POOL_F_EXACT != 0 {
        size
    } else {
        size.next_multiple_of(os::OBJECT_ALIGN)
    };
    let mut reg = lock();
    reg.created = true;
    // A pool made with `uaf` does not merge with one made without, nor
    // pools with different debugging flags (layout or behaviour); with
    // `no-merge`, only pools of the same name merge (as in HAProxy).
    let mut debug = options::pool_debug() | crate::checkers::tool_flags();
    if let Some(tag) = backend {
        // A size class of the LD_PRELOAD malloc (`create_span_pool`): one
        // pool per tag, whoever asks first creates it.
        if let Some(p) = reg.pools().find(|p| p.backend == tag) {
            // Relaxed: `users` changes under the registry lock we hold.
            p.users.fetch_add(1, Relaxed);
            return Ok(p);
        }
        // Its objects must start at their span slot, since the preload
        // finds their pool from the address and hands them out as they
        // are: no option that moves the caller's bytes or adds words
        // around them.
        debug &= !crate::head::LAYOUT_FLAGS;
    }
    let poison = options::poison_byte();
    // The backing allocator serves whole objects, debugging words included.
    let backend = backend.unwrap_or_else(|| default_backend(Layout::new(size, debug).total));
    if flags & POOL_F_SHARED != 0 {
        let no_merge = options::no_merge();
        if let Some(p) = reg.pools().find(|p| {
            p.flags & POOL_F_SHARED != 0
                && p.size == size
                && p.backend == backend
                && p.debug == debug
                && p.poison == poison
                && (!no_merge || p.name() == name)
        }) {
            p.users.fetch_add(1, Relaxed);
            add_alias(p, name);
            return Ok(p);
        }
    }
    let name_copy = copy_name(name).ok_or(Error::NoMemory)?;
    // A free head is reused only once QUARANTINE others died after it (or
    // when no slot is left): until then a stale handle still names a dead
    // pool and fails with EINVAL, rather than reaching the next pool.
    let reuse = reg.free_count > QUARANTINE || reg.slots == MAX_POOLS;
    let head = match NonNull::new(reg.free_first).filter(|_| reuse) {
        Some(head) => {
            // SAFETY: a free head is a dead pool nobody uses; under the lock.
            let next = unsafe { head.as_ref() }.reg_next.get();
            reg.free_first = next;
            reg.free_count -= 1;
            if next.is_null() {
                reg.free_last = ptr::null_mut();
            }
            // SAFETY: as above; it keeps its slot.
            let slot = unsafe { head.as_ref() }.slot;
            // SAFETY: the head is ours; overwriting a dead pool drops nothing
            // that owns memory (its name was freed at destroy).
            unsafe {
                head.as_ptr().write(Pool::new(
                    slot,
                    thread_cache::entry_offset(slot),
                    size,
                    flags,
                    backend,
                    debug,
                    poison,
                    next_key(),
                ))
            };
            head
        }
        None => {
            if reg.slots == MAX_POOLS {
                // SAFETY: the copy is ours and unused.
                unsafe { release_name(name_copy) };
                return Err(Error::NoMemory);
            }
            // From mmap, not malloc: see `meta`. Its blocks are aligned to
            // their power-of-two size, far beyond a Pool's alignment.
            let Some(mem) = meta::obtain(core::mem::size_of::<Pool>()) else {
                // SAFETY: as above.
                unsafe { release_name(name_copy) };
                return Err(Error::NoMemory);
            };
            debug_assert!(mem.cast::<Pool>().is_aligned());
            let head = mem.cast::<Pool>();
            // SAFETY: fresh memory of the right size and alignment.
            unsafe {
                head.as_ptr().write(Pool::new(
                    reg.slots,
                    thread_cache::entry_offset(reg.slots),
                    size,
                    flags,
                    backend,
                    debug,
                    poison,
                    next_key(),
                ))
            };
            reg.slots += 1;
            head
        }
    };
    // SAFETY: initialised above; 'static because heads are never unmapped.
    let pool: &'static Pool = unsafe { &*head.as_ptr() };
    pool.name.set(Some(name_copy));
    pool.revive();
    pool.reg_next.set(reg.pools);
    reg.pools = head.as_ptr();
    crate::debug::on_create(pool);
    Ok(pool)
}

fn copy_name(name: &CStr) -> Option<NonNull<libc::c_char>> {
    let bytes = name.to_bytes_with_nul();
    let p = meta::obtain(bytes.len())?;
    // SAFETY: `p` has room for the name and its NUL; the regions differ.
    unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), p.as_ptr(), bytes.len()) };
    Some(p.cast())
}

/// Gives back a name copy from [`copy_name`].
///
/// # Safety
/// `name` came from `copy_name` and is not used any more.
unsafe fn release_name(name: NonNull<libc::c_char>) {
    // SAFETY: the copy is a NUL-terminated string of `meta` (caller).
    let len = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_bytes_with_nul()
        .len();
    // SAFETY: `len` is the size it was obtained with.
    unsafe { meta::release(name.cast(), len) };
}

/// Records `name` among the names of the merged pool `p` (for `dump`),
/// unless it is there already or no memory is left for it. Under the lock.
fn add_alias(p: &Pool, name: &CStr) {
    let name = name.to_bytes();
    let old = p.also().to_bytes();
    if name == p.name().to_bytes() || old.split(|&b| b == b',').any(|n| n == name) {
        return;
    }
    let sep = usize::from(!old.is_empty());
    let len = old.len() + sep + name.len() + 1;
    let Some(new) = meta::obtain(len) else {
        return;
    };
    // SAFETY: `new` has room for the old list, a comma, the name and a NUL.
    unsafe {
        let d = new.as_ptr();
        ptr::copy_nonoverlapping(old.as_ptr(), d, old.len());
        if sep == 1 {
            *d.add(old.len()) = b',';
        }
        ptr::copy_nonoverlapping(name.as_ptr(), d.add(old.len() + sep), name.len());
        *d.add(len - 1) = 0;
    }
    if let Some(prev) = p.also.replace(Some(new.cast())) {
        // SAFETY: the previous list, a NUL-terminated string of `meta` made
        // here, no longer referenced.
        unsafe { release_name(prev) };
    }
}

/// Drops one user of `pool`. Refused while the application holds objects of
/// it. The last user's destroy kills the pool, gives back what this thread
/// and the shared cache hold, and recycles the head once every object is
/// back: objects other threads cache go back when those threads next look
/// (see `thread_cache`), and the last of them recycles the head.
pub fn destroy(pool: &'static Pool) -> Result<Destroyed, Error> {
    {
        let mut reg = lock();
        // Re-check under the lock: two threads may race to destroy one pool.
        // SAFETY: `pool` is a pool head.
        if unsafe { Pool::from_handle(pool) }.is_none() {
            return Err(Error::Invalid);
        }
        if in_use(&reg, pool) {
            return Ok(Destroyed::InUse);
        }
        // Relaxed: `users` changes under the registry lock we hold.
        if pool.users.fetch_sub(1, Relaxed) > 1 {
            return Ok(Destroyed::Released);
        }
        pool.kill();
        // The list's own pointer to the head, kept for `recycle`, not one
        // made from `&Pool`: `create` rewrites the whole head through it
        // when recycling, which a pointer derived from a shared reference
        // may not do (Miri reports it under Stacked Borrows).
        let head = unlink_pool(&mut reg, pool);
        pool.reg_next.set(head);
        if let Some(name) = pool.name.take() {
            // SAFETY: the copy made at creation; the pool is dead.
            unsafe { release_name(name) };
        }
        if let Some(also) = pool.also.take() {
            // SAFETY: made by `add_alias` (a string of `meta`); the pool is
            // dead.
            unsafe { release_name(also) };
        }
    }
    thread_cache::release_own(pool);
    pool.flush();
    recycle(pool);
    Ok(Destroyed::Released)
}

/// Whether the application holds objects of `pool`. The counters are read
/// in the order allocated, shared, cached, and every move between them
/// takes an object out of its source before it reaches its destination, so
/// an object that another thread moves meanwhile is counted at most once:
/// the answer errs towards "in use", and then only while a move is in
/// flight, so it is asked again a few times.
fn in_use(reg: &Registry, pool: &Pool) -> bool {
    (0..4).all(|i| {
        for _ in 0..i * 64 {
            core::hint::spin_loop();
        }
        let allocated = pool.shared.allocated();
        let shared = pool.shared_objects();
        allocated > shared + reg.cached(pool)
    })
}

/// Puts a dead head on the free list once no object of it is out and no
/// thread-cache entry is bound to it; until then it stays dead, so that no
/// stale handle or entry can reach a later pool. Called by whoever may
/// have given back the last object or entry.
pub(crate) fn recycle(pool: &Pool) {
    let mut reg = lock();
    if pool.shared.allocated() == 0 && pool.claim_free() {
        crate::debug::on_destroy(pool);
        let head = pool.reg_next.replace(ptr::null_mut());
        debug_assert!(ptr::eq(head, pool));
        match NonNull::new(reg.free_last) {
            // SAFETY: a free head, under the lock.
            Some(last) => unsafe { last.as_ref() }.reg_next.set(head),
            None => reg.free_first = head,
        }
        reg.free_last = head;
        reg.free_count += 1;
    }
}

/// Unlinks `pool` from the live list; returns the list's pointer to it
/// (null if it was not there).
fn unlink_pool(reg: &mut Registry, pool: &Pool) -> *mut Pool {
    let mut link: *mut *mut Pool = &mut reg.pools;
    // SAFETY: walking the list of live pools under the lock.
    unsafe {
        while !(*link).is_null() && !ptr::eq(*link, pool) {
            link = (**link).reg_next.as_ptr();
        }
        let found = *link;
        if !found.is_null() {
            *link = pool.reg_next.get();
        }
        found
    }
}

/// For every pool, releases shared objects beyond its `minavail`, then
/// unmaps the spare spans and asks the allocator underneath to return free
/// memory to the OS.
pub fn gc() {
    gc_pools();
    backing::trim();
}

/// [`gc`] without asking the allocator underneath (for the LD_PRELOAD
/// malloc's `malloc_trim`, which is that allocator). Objects that go back
/// to malloc are freed after the registry lock is released: `free` may
/// need that lock (under the LD_PRELOAD malloc).
pub fn gc_pools() {
    let mut later = crate::pool::MallocFrees::new();
    {
        let reg = lock();
        for pool in reg.pools() {
            pool.gc(reg.cached(pool), &mut later);
        }
    }
    later.release_all();
    span::trim();
}

/// The counters of `pool`.
pub fn stats(pool: &Pool) -> Stats {
    let reg = lock();
    pool.stats(reg.cached(pool))
}

/// Bytes allocated and used, over all pools.
pub fn totals() -> (u64, u64) {
    let reg = lock();
    reg.pools().fold((0, 0), |(a, u), p| {
        let s = p.stats(reg.cached(p));
        (
            a + (s.allocated * s.size) as u64,
            u + (s.used * s.size) as u64,
        )
    })
}

/// Selects the shared-cache variant; only before the first pool.
pub fn set_shared_cache(name: &CStr) -> Result<(), Error> {
    let reg = lock();
    if reg.created {
        return Err(Error::Busy);
    }
    if options::set_shared_cache(name.to_bytes()) {
        Ok(())
    } else {
        Err(Error::Invalid)
    }
}

/// The live pool whose head is at `addr`, for the debugging messages
/// (which name the pool a misplaced object belongs to). `None` when no live
/// pool is there, or when the registry is busy (an abort must not wait).
pub(crate) fn pool_at(addr: usize) -> Option<&'static Pool> {
    let reg = REGISTRY.try_lock().ok()?;
    reg.pools().find(|p| ptr::from_ref(*p) as usize == addr)
}

/// The order of `dump_sorted`'s lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpOrder {
    /// Newest pool first.
    Unsorted,
    /// By name, A to Z.
    Name,
    /// By object size, largest first.
    Size,
    /// By bytes allocated, largest first.
    Usage,
}

/// Writes one line per pool and a total to `fd`, like HAProxy's
/// "show pools".
pub fn dump(fd: libc::c_int) {
    dump_sorted(fd, DumpOrder::Unsorted, 0);
}

/// Like `dump`, the pools in `order`, at most `max` of them (0: all); the
/// total covers every pool. Formats on the stack and sorts in a page
/// mapping: it calls no malloc (it runs at exit for `POOL_STATS=1`).
pub fn dump_sorted(fd: libc::c_int, order: DumpOrder, max: usize) {
    let reg = lock();
    let len = thread_cache::MAX_POOLS * core::mem::size_of::<(&Pool, usize)>();
    // Unsorted needs no table (and the dump at exit maps nothing).
    let table = if order == DumpOrder::Unsorted {
        None
    } else {
        os::map_zeroed(len)
    };
    let mut n = 0usize;
    let (mut total_alloc, mut total_used) = (0usize, 0usize);
    for p in reg.pools() {
        let s = p.stats(reg.cached(p));
        total_alloc += s.allocated * s.size;
        total_used += s.used * s.size;
        n += 1;
    }
    match table {
        Some(mem) => {
            let base = mem.as_ptr().cast::<(&Pool, usize)>();
            for (i, p) in reg.pools().enumerate() {
                let key = match order {
                    DumpOrder::Usage => p.stats(reg.cached(p)).allocated * p.size,
                    _ => p.size,
                };
                // SAFETY: `i < n <= MAX_POOLS` (the live pools, counted
                // above under the same lock): inside the fresh mapping,
                // which is page-aligned, so aligned for the entries.
                unsafe { base.add(i).write((p, key)) };
            }
            // SAFETY: the first `n` entries were written just above; the
            // mapping is ours until unmapped below.
            let entries = unsafe { core::slice::from_raw_parts_mut(base, n) };
            for (p, _) in sorted_for_dump(entries, order, max) {
                dump_line(&reg, p, fd);
            }
            // SAFETY: the mapping made above, no longer used.
            unsafe { os::unmap(mem, len) };
        }
        // Unsorted, or no memory for the table.
        None => {
            for p in reg.pools().take(if max == 0 { usize::MAX } else { max }) {
                dump_line(&reg, p, fd);
            }
        }
    }
    let mut line = Line::new();
    let _ = writeln!(
        line,
        "Total: {n} pools, {total_alloc} bytes allocated, {total_used} used, shared cache {}, \
         thread cache {} bytes",
        options::shared_cache_name(),
        options::cache_size(),
    );
    line.write_to(fd);
}

// ---- run-time debugging, profile, filtered dumps ------------------------

/// Applies a comma list of debugging options (`options::set_debugging`);
/// with a failure rate set, every live pool draws for it from now on.
pub fn set_debugging(opts: &[u8]) -> bool {
    init();
    if !options::set_debugging(opts) {
        return false;
    }
    if options::fail_rate() != 0 {
        enable_debug_all(options::DBG_FAIL);
    }
    true
}

/// Switches memory profiling on (every live pool and every pool created
/// afterwards records its calls, see `profile`) or off (the pools record
/// nothing more; the counts so far stay for the dump). `false` when the
/// tables cannot be mapped.
pub fn set_profiling(on: bool) -> bool {
    init();
    if on {
        if !crate::profile::enable() {
            return false;
        }
        options::set_profiling(true);
        enable_debug_all(options::DBG_PROFILE);
    } else {
        options::set_profiling(false);
    }
    true
}

/// Gives the run-time debugging bit `bit` to every live pool. Pools created
/// from now on get it from `options::runtime_debug`; those created before
/// the lock is taken here are in the list.
fn enable_debug_all(bit: u32) {
    let reg = lock();
    for p in reg.pools() {
        p.enable_debug(bit);
    }
}

/// Whether an allocation that takes no pool (the LD_PRELOAD malloc's large
/// blocks) is one of the `fail=N` percent to refuse. Off the plain path:
/// for callers that are about to map memory anyway.
pub fn injected_failure() -> bool {
    backing::injected_failure()
}

/// The times `pool_gc` asked the allocator underneath to give memory back.
pub fn trim_count() -> usize {
    backing::trims()
}

/// Writes the memory profile to `fd`: the `max` call sites (0: all) that
/// allocated the most bytes, with their pool and symbol, then a total.
/// Formats on the stack and merges in a mapping: no malloc.
///
/// The registry lock is held only to read a pool's name, not while the
/// site is symbolised: `dladdr` takes the dynamic loader's lock, which a
/// thread in `dlopen` holds while it mallocs (under the preload, into a
/// pool creation that takes the registry lock).
pub fn dump_profile(fd: libc::c_int, max: usize) {
    init();
    crate::profile::with_sites(|sites, dropped| {
        // By the larger of the two, so that a site that only frees shows.
        sites.sort_unstable_by_key(|s| {
            core::cmp::Reverse((s.alloc_bytes.max(s.free_bytes), s.alloc_bytes))
        });
        let shown = if max == 0 {
            sites.len()
        } else {
            max.min(sites.len())
        };
        let mut line = Line::new();
        let _ = writeln!(
            line,
            "Memory profile{}: {shown} of {} call sites, by bytes allocated:",
            if options::profiling() { "" } else { " (off)" },
            sites.len()
        );
        line.write_to(fd);
        for s in &sites[..shown] {
            let mut line = Line::new();
            let _ = write!(
                line,
                "  {:>9} allocs {:>12} bytes {:>9} frees {:>12} bytes  pool=",
                s.allocs, s.alloc_bytes, s.frees, s.free_bytes
            );
            if s.pool == crate::profile::UNPOOLED {
                let _ = write!(line, "(large)");
            } else {
                let reg = lock();
                match reg.pools().find(|p| p.slot == s.pool) {
                    Some(p) => {
                        let _ = write!(line, "{}", p.name().to_str().unwrap_or("?"));
                    }
                    None => {
                        let _ = write!(line, "(destroyed)");
                    }
                }
            }
            let _ = write!(line, " at {:#x} ", s.caller);
            crate::profile::write_site(&mut line, s.caller);
            let _ = writeln!(line);
            line.write_to(fd);
        }
        let (a, ab, f, fb) = sites.iter().fold((0, 0, 0, 0), |t, s| {
            (
                t.0 + s.allocs,
                t.1 + s.alloc_bytes,
                t.2 + s.frees,
                t.3 + s.free_bytes,
            )
        });
        let mut line = Line::new();
        let _ = writeln!(
            line,
            "Total: {} call sites, {a} allocs ({ab} bytes), {f} frees ({fb} bytes), \
             {dropped} calls not recorded (tables full)",
            sites.len()
        );
        line.write_to(fd);
    });
}

/// `dump_filtered` flag: one `key=value` line per pool, for scripts.
pub const DUMP_KV: u32 = 1;

/// Like `dump_sorted`, with only the pools whose name (or one of its merged
/// names) starts with `prefix` (HAProxy's "show pools match"), the total
/// covering those; with `DUMP_KV` in `flags`, one `key=value` line per
/// pool and one for the total instead of the sentences.
pub fn dump_filtered(fd: libc::c_int, order: DumpOrder, max: usize, prefix: &[u8], flags: u32) {
    let reg = lock();
    let matches = |p: &Pool| {
        p.name().to_bytes().starts_with(prefix)
            || p.also()
                .to_bytes()
                .split(|&b| b == b',')
                .any(|n| n.starts_with(prefix))
    };
    let len = thread_cache::MAX_POOLS * core::mem::size_of::<(&Pool, usize)>();
    let Some(mem) = os::map_zeroed(len) else {
        return;
    };
    let base = mem.as_ptr().cast::<(&Pool, usize)>();
    let mut n = 0usize;
    let (mut total_alloc, mut total_used) = (0usize, 0usize);
    for p in reg.pools().filter(|p| matches(p)) {
        let s = p.stats(reg.cached(p));
        total_alloc += s.allocated * s.size;
        total_used += s.used * s.size;
        let key = match order {
            DumpOrder::Usage => s.allocated * s.size,
            _ => p.size,
        };
        // SAFETY: at most the live pools (MAX_POOLS) are written, inside
        // the fresh page-aligned mapping.
        unsafe { base.add(n).write((p, key)) };
        n += 1;
    }
    // SAFETY: the first `n` entries were written just above; the mapping is
    // ours until unmapped below.
    let entries = unsafe { core::slice::from_raw_parts_mut(base, n) };
    for (p, _) in sorted_for_dump(entries, order, max) {
        if flags & DUMP_KV != 0 {
            dump_kv_line(&reg, p, fd);
        } else {
            dump_line(&reg, p, fd);
        }
    }
    // SAFETY: the mapping made above, no longer used.
    unsafe { os::unmap(mem, len) };
    let mut line = Line::new();
    if flags & DUMP_KV != 0 {
        let _ = writeln!(
            line,
            "total pools={n} allocated_bytes={total_alloc} used_bytes={total_used} \
             shared_cache={} thread_cache_bytes={}",
            options::shared_cache_name(),
            options::cache_size(),
        );
    } else {
        let _ = writeln!(
            line,
            "Total: {n} pools, {total_alloc} bytes allocated, {total_used} used, shared cache {}, \
             thread cache {} bytes",
            options::shared_cache_name(),
            options::cache_size(),
        );
    }
    line.write_to(fd);
}

/// Writes `bytes` as a value of a `key=value` line: bytes other than
/// printable ASCII, and ` `, `=`, `,` and `%`, as `%XX`.
fn write_kv_value(line: &mut Line, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_graphic() && !matches!(b, b'=' | b'%' | b',') {
            let _ = line.write_char(char::from(b));
        } else {
            let _ = write!(line, "%{b:02X}");
        }
    }
}

/// One pool's `key=value` line of `dump_filtered`.
fn dump_kv_line(reg: &Registry, p: &Pool, fd: libc::c_int) {
    let s = p.stats(reg.cached(p));
    let mut line = Line::new();
    let _ = write!(line, "pool name=");
    write_kv_value(&mut line, p.name().to_bytes());
    let _ = write!(line, " aliases=");
    let mut sep = "";
    for alias in p
        .also()
        .to_bytes()
        .split(|&b| b == b',')
        .filter(|a| !a.is_empty())
    {
        let _ = write!(line, "{sep}");
        write_kv_value(&mut line, alias);
        sep = ",";
    }
    let _ = write!(
        line,
        " size={} allocated={} allocated_bytes={} used={} cached={} shared={} failed={} \
         users={} minavail={} limit={} shared_flag={} debug=",
        s.size,
        s.allocated,
        s.allocated * s.size,
        s.used,
        s.cached,
        s.shared,
        s.failed,
        s.users,
        s.minavail,
        p.limit.load(Relaxed),
        u8::from(p.flags & POOL_F_SHARED != 0),
    );
    options::write_flag_names(&mut line, p.debug);
    let _ = writeln!(line);
    line.write_to(fd);
}

/// Like `dump_sorted`, into `buf`, the way snprintf does it (see
/// `line::into_buffer`). Calls no malloc.
pub fn dump_sorted_to_buffer(buf: &mut [u8], order: DumpOrder, max: usize) -> usize {
    line::into_buffer(buf, |fd| dump_sorted(fd, order, max))
}

// ---- fork ----------------------------------------------------------------
//
// The registry's part of the fork handlers (`fork`): its init lock, its
// lock and every shared-cache head of every pool (taken with the same xchg
// lock takers use; the lists wait in their buckets), held from prepare to
// the parent or the child handler. Thread caches of threads other than the
// forking one do not exist in the child (their owners were not copied, and
// one may have been mid-change), so the child forgets them: their owner
// gone, the forking thread drains them.

/// What the prepare handler holds until the parent or the child handler.
struct ForkState {
    guard: Option<MutexGuard<'static, Registry>>,
    init: Option<MutexGuard<'static, ()>>,
}

/// Only the forking thread touches it, between its prepare handler and its
/// parent or child handler; two forking threads are serialised by the
/// init lock that prepare takes before writing it.
struct ForkCell(core::cell::UnsafeCell<ForkState>);
// SAFETY: see the type's comment: one thread at a time, under the locks.
unsafe impl Sync for ForkCell {}

static FORK: ForkCell = ForkCell(core::cell::UnsafeCell::new(ForkState {
    guard: None,
    init: None,
}));

/// Inside this thread's fork window: the registry its handlers hold.
fn fork_window_registry() -> Option<RegistryGuard> {
    if !crate::sync::inside_window() {
        return None;
    }
    // SAFETY: inside its window the forking thread is the only one that
    // touches FORK (its prepare handler holds the registry lock).
    let st = unsafe { &mut *FORK.0.get() };
    let g = st.guard.as_mut()?;
    Some(RegistryGuard::ForkWindow(NonNull::from(&mut **g)))
}

/// First step of prepare: a first initialisation under way in another
/// thread finishes (a child forked in the middle would find it running
/// forever), and none starts until the parent and child handlers; one that
/// has not started is left to the child (which may have its own
/// environment). The forking thread's cache is made now if needed (it
/// cannot be once the registry lock is held, which creation takes).
pub(crate) fn fork_lock_init() {
    let init_guard = INIT_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    if INIT.is_completed() {
        let _ = ThreadCache::current();
    }
    // SAFETY: we hold the init lock: no other thread touches FORK.
    unsafe { (*FORK.0.get()).init = Some(init_guard) };
}

/// Takes the registry lock and every pool's shared-cache heads.
pub(crate) fn fork_lock() {
    let reg = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    for p in reg.pools() {
        p.shared.lock_for_fork();
    }
    // SAFETY: we hold the locks: no other thread touches FORK.
    unsafe { (*FORK.0.get()).guard = Some(reg) };
}

/// Puts back what `fork_lock_init` and `fork_lock` took.
pub(crate) fn fork_unlock() {
    // SAFETY: the forking thread, still holding the locks.
    let (reg, init_guard) = unsafe {
        let st = &mut *FORK.0.get();
        (st.guard.take(), st.init.take())
    };
    drop(init_guard);
    if let Some(reg) = reg {
        for p in reg.pools() {
            p.shared.unlock_after_fork();
        }
    }
}

/// The dump's entries (a pool and its sort key) in `order`, the first
/// `max` of them (0: all).
fn sorted_for_dump<'a>(
    entries: &'a mut [(&'static Pool, usize)],
    order: DumpOrder,
    max: usize,
) -> &'a [(&'static Pool, usize)] {
    match order {
        DumpOrder::Unsorted => {}
        DumpOrder::Name => entries.sort_unstable_by(|a, b| a.0.name().cmp(b.0.name())),
        DumpOrder::Size | DumpOrder::Usage => {
            entries.sort_unstable_by_key(|e| core::cmp::Reverse(e.1))
        }
    }
    let shown = if max == 0 {
        entries.len()
    } else {
        max.min(entries.len())
    };
    &entries[..shown]
}

/// One pool's line of the dump.
fn dump_line(reg: &Registry, p: &Pool, fd: libc::c_int) {
    let s = p.stats(reg.cached(p));
    let mut line = Line::new();
    let _ = write!(
        line,
        "  - Pool {}{}{} ({} bytes) : {} allocated ({} bytes), {} used, {} cached, {} shared, \
         {} failures, {} users, minavail {}",
        p.name().to_str().unwrap_or("?"),
        if p.also().is_empty() { "" } else { "," },
        p.also().to_str().unwrap_or("?"),
        s.size,
        s.allocated,
        s.allocated * s.size,
        s.used,
        s.cached,
        s.shared,
        s.failed,
        s.users,
        s.minavail,
    );
    let limit = p.limit.load(Relaxed);
    if limit != 0 {
        let _ = write!(line, ", limit {limit}");
    }
    if p.flags & POOL_F_SHARED != 0 {
        let _ = write!(line, " [SHARED]");
    }
    if p.debug != 0 {
        let _ = write!(line, " [DEBUG ");
        options::write_flag_names(&mut line, p.debug);
        let _ = write!(line, "]");
    }
    let _ = writeln!(line);
    line.write_to(fd);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_refused() {
        assert_eq!(create(c"zero", 0, 0).err(), Some(Error::Invalid));
        assert_eq!(
            create(c"huge", POOL_MAX_SIZE + 1, 0).err(),
            Some(Error::Invalid)
        );
        assert_eq!(create(c"flags", 64, 4).err(), Some(Error::Invalid));
        assert!(create(c"max", POOL_MAX_SIZE, POOL_F_EXACT).is_ok());
    }

    #[test]
    fn sizes_round_to_16_unless_exact() {
        assert_eq!(create(c"r1", 1, 0).unwrap().size, 16);
        assert_eq!(create(c"r33", 33, 0).unwrap().size, 48);
        assert_eq!(create(c"e33", 33, POOL_F_EXACT).unwrap().size, 33);
        let tiny = create(c"e1", 1, POOL_F_EXACT).unwrap();
        let o = tiny.alloc().unwrap();
        assert_eq!(o.as_ptr() as usize % os::OBJECT_ALIGN, 0);
        // SAFETY: an object of `tiny`, given back once.
        unsafe { tiny.free(o) };
    }

    #[test]
    fn shared_pools_of_one_size_merge() {
        // A size no other test uses, so that merging is only with ourselves.
        let a = create(c"merge-a", 4000, POOL_F_SHARED).unwrap();
        let b = create(c"merge-b", 3999, POOL_F_SHARED).unwrap();
        let c = create(c"merge-c", 4000, 0).unwrap();
        assert!(ptr::eq(a, b));
        assert!(!ptr::eq(a, c));
        assert_eq!(stats(a).users, 2);
        assert_eq!(a.name(), c"merge-a");
        assert_eq!(destroy(a), Ok(Destroyed::Released));
        assert_eq!(stats(b).users, 1);
        assert_eq!(destroy(b), Ok(Destroyed::Released));
        assert_eq!(destroy(c), Ok(Destroyed::Released));
    }

    #[test]
    fn a_span_tag_has_one_pool() {
        // A reserved tag no other test binds (span's tests bind the last).
        let tag = span::RESERVED_TAGS as u32 - 2;
        let p = create_span_pool(c"tag-a", 48, tag).unwrap();
        let q = create_span_pool(c"tag-b", 48, tag).unwrap();
        assert!(core::ptr::eq(p, q));
        assert_eq!(stats(p).users, 2);
        assert!(matches!(
            create_span_pool(c"tag-c", 64, tag),
            Err(Error::Invalid)
        ));
    }

    #[test]
    fn destroy_is_refused_while_objects_are_held() {
        let p = create(c"in-use", 96, 0).unwrap();
        let o = p.alloc().unwrap();
        assert_eq!(destroy(p), Ok(Destroyed::InUse));
        assert_eq!(stats(p).used, 1);
        // SAFETY: the object came from `p`, given back once.
        unsafe { p.free(o) };
        assert_eq!(destroy(p), Ok(Destroyed::Released));
        // A second destroy is refused only while the head is not recycled,
        // which a test running in parallel may do at any time: the
        // single-threaded c-tests/test_errors.c checks it.
    }

    #[test]
    fn gc_keeps_minavail_idle_objects() {
        let p = create(c"gc", 8192, 0).unwrap();
        let objs: Vec<_> = (0..20).map(|_| p.alloc().unwrap()).collect();
        for o in objs {
            // SAFETY: objects of `p`, each given back once.
            unsafe { p.free(o) };
        }
        crate::evict_local_cache();
        assert_eq!(stats(p).shared, 20);
        p.minavail.store(5, Relaxed);
        gc();
        let s = stats(p);
        assert_eq!((s.shared, s.allocated, s.used), (5, 5, 0));
        p.flush();
        assert_eq!(stats(p).allocated, 0);
        assert_eq!(destroy(p), Ok(Destroyed::Released));
    }

    #[test]
    fn destroyed_heads_are_recycled_with_their_slot() {
        let p = create(c"recycle-1", 16, 0).unwrap();
        let slot = p.slot;
        assert_eq!(destroy(p), Ok(Destroyed::Released));
        // The head comes back once more than QUARANTINE other heads died
        // after it (other tests recycle heads concurrently, so allow more).
        let mut found = false;
        for _ in 0..8 * QUARANTINE {
            let q = create(c"recycle-2", 16, 0).unwrap();
            assert_eq!(q.name(), c"recycle-2");
            assert_eq!(stats(q).allocated, 0);
            found |= q.slot == slot;
            assert_eq!(destroy(q), Ok(Destroyed::Released));
            if found {
                break;
            }
        }
        assert!(found, "head not reused");
    }

    /// A destroyed head is not handed to the next pools: a stale handle
    /// keeps failing with EINVAL instead of reaching a new pool.
    #[test]
    fn destroyed_heads_wait_in_quarantine() {
        let _serial = QUARANTINE_TEST.lock().unwrap();
        let p = create(c"quarantined", 48, 0).unwrap();
        assert_eq!(destroy(p), Ok(Destroyed::Released));
        let fresh: Vec<_> = (0..QUARANTINE / 2)
            .map(|_| create(c"quarantine-2", 48, 0).unwrap())
            .collect();
        // SAFETY: heads are never unmapped.
        assert!(
            unsafe { Pool::from_handle(p) }.is_none(),
            "head reused early"
        );
        assert!(fresh.iter().all(|q| !ptr::eq(*q, p)));
        for q in fresh {
            assert_eq!(destroy(q), Ok(Destroyed::Released));
        }
    }

    /// Tests that count on the free list not being drained meanwhile.
    static QUARANTINE_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn dump_names_every_pool_and_totals() {
        let p = create(c"dumped", 160, 0).unwrap();
        let o = p.alloc().unwrap();
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid out-array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        dump(fds[1]);
        // SAFETY: closing our own write end once.
        unsafe { libc::close(fds[1]) };
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        // SAFETY: closing our own read end once.
        unsafe { libc::close(fds[0]) };
        let out = String::from_utf8(out).unwrap();
        let line = out
            .lines()
            .find(|l| l.contains("Pool dumped "))
            .expect("pool line");
        assert!(
            line.contains("(160 bytes)") && line.contains("1 used"),
            "{line}"
        );
        assert!(out.lines().last().unwrap().starts_with("Total: "));
        // SAFETY: the object came from `p`, given back once.
        unsafe { p.free(o) };
    }

    #[test]
    fn dump_to_buffer_is_the_dump_cut_like_snprintf() {
        let p = create(c"buffered", 176, 0).unwrap();
        let o = p.alloc().unwrap();
        let mut big = [0xffu8; 1 << 16];
        let len = dump_sorted_to_buffer(&mut big, DumpOrder::Name, 0);
        assert!(len > 0 && len < big.len(), "{len}");
        assert_eq!(big[len], 0, "NUL after the dump");
        let out = core::str::from_utf8(&big[..len]).unwrap();
        assert!(
            out.lines()
                .any(|l| l.contains("Pool buffered ") && l.contains("(176 bytes)")),
            "{out}"
        );
        assert!(out.lines().last().unwrap().starts_with("Total: "), "{out}");
        // Other tests create pools meanwhile: compare what every dump starts
        // with, not two dumps.
        let mut small = [0xffu8; 10];
        let need = dump_sorted_to_buffer(&mut small, DumpOrder::Unsorted, 0);
        assert!(need > small.len(), "{need}");
        assert_eq!(&small[..9], b"  - Pool ");
        assert_eq!(small[9], 0);
        assert!(dump_sorted_to_buffer(&mut [], DumpOrder::Unsorted, 0) > 0);
        // SAFETY: the object came from `p`, given back once.
        unsafe { p.free(o) };
    }
}
