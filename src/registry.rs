//! The registry: every pool and every thread cache of the process.
//!
//! One mutex guards the list of pools (create, merge, destroy, gc, stats,
//! dump), the list of free heads and the list of thread caches (thread
//! start and exit). Nothing on the alloc/free hot path takes it, and no
//! object goes back to the allocator underneath while it is held (that
//! allocator may be the process's malloc, which may be these very pools).

mod dump;
mod fork;

pub(crate) use dump::DUMP_KV;
pub use dump::{dump, dump_filtered, dump_profile, dump_sorted, dump_sorted_to_buffer, DumpOrder};
use fork::fork_window_registry;
pub(crate) use fork::{fork_lock, fork_lock_init, fork_unlock};

use crate::backing::{self, Backend};
use crate::head::{
    Layout, Pool, Stats, KNOWN_FLAGS, MIN_OBJECT, POOL_F_EXACT, POOL_F_SHARED, POOL_MAX_SIZE,
};
use crate::thread_cache::{self, MAX_POOLS, THREADS};
use crate::{meta, options, os, span};
use core::ffi::CStr;
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
        gc: gc_on_failure,
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
    create_with(Name::Copied(name), size, flags, None)
}

/// The pool whose objects come from the spans of `tag` (see `span`): a
/// size class of the LD_PRELOAD malloc, one of the tags below
/// `span::RESERVED_TAGS`, bound to this size by the first call. The first
/// call creates it; a later one (two threads racing to create a class on
/// its first use) returns the same pool, counted as one more user, as a
/// merge is. Never merged with any other pool. The name is kept as it is,
/// not copied.
pub fn create_span_pool(
    name: &'static CStr,
    size: usize,
    tag: u32,
) -> Result<&'static Pool, Error> {
    create_with(Name::Static(name), size, 0, Some(Backend::Span(tag)))
}

/// The name a pool is created with: the caller's, copied (and freed at
/// destroy), or one that lives as long as the process, kept as it is.
#[derive(Clone, Copy)]
enum Name<'a> {
    Copied(&'a CStr),
    Static(&'static CStr),
}

impl Name<'_> {
    fn get(&self) -> &CStr {
        match *self {
            Name::Copied(n) => n,
            Name::Static(n) => n,
        }
    }
}

/// Largest object a pool takes from spans by default: one span holds at
/// least 7 of them; the end of a span that no object fills is never
/// written, so it costs address space, not memory.
pub(crate) const SPAN_POOL_MAX: usize = 32 * 1024;

/// Where a pool of `size`-byte objects created now gets them: a debugging
/// backend if one is selected (`uaf`); otherwise, up to [`SPAN_POOL_MAX`],
/// the spans of the tag of its object size (given back to the OS when
/// empty, which glibc's per-thread arenas do not do), unless
/// `POOL_BACKEND=malloc` or every tag is bound to other sizes; from a huge
/// page up (`backing::HUGE_PAGE`), a mapping per object that huge pages
/// can back, unless `POOL_BACKEND=malloc`; otherwise malloc.
fn default_backend(size: usize) -> Backend {
    if options::guarded_objects() {
        Backend::Guarded
    } else if options::spans_enabled() && size <= SPAN_POOL_MAX {
        span::tag_for_size(size.max(MIN_OBJECT)).map_or(Backend::Malloc, Backend::Span)
    } else if options::spans_enabled() && size >= backing::HUGE_PAGE {
        Backend::Huge
    } else {
        Backend::Malloc
    }
}

/// Destroyed heads kept out of reuse (see `create_with`).
const QUARANTINE: usize = 16;

fn create_with(
    name_arg: Name<'_>,
    size: usize,
    flags: u32,
    backend: Option<Backend>,
) -> Result<&'static Pool, Error> {
    if size == 0 || size > POOL_MAX_SIZE || flags & !KNOWN_FLAGS != 0 {
        return Err(Error::Invalid);
    }
    let name = name_arg.get();
    let size = if flags & POOL_F_EXACT != 0 {
        size
    } else {
        size.next_multiple_of(os::OBJECT_ALIGN)
    };
    let mut reg = lock();
    // Tags are bound under the registry lock only (here, and by
    // `default_backend` below): the fork handlers lock the tags bound when
    // they take the registry lock (`span::fork_prepare`).
    // A reserved tag bound by this call has no pool yet.
    let mut fresh_tag = false;
    if let Some(Backend::Span(tag)) = backend {
        match span::reserve(tag, size.max(MIN_OBJECT)) {
            Some(fresh) => fresh_tag = fresh,
            None => return Err(Error::Invalid),
        }
    }
    reg.created = true;
    // A pool made with `uaf` does not merge with one made without, nor
    // pools with different debugging flags (layout or behaviour); with
    // `no-merge`, only pools of the same name merge (as in HAProxy).
    let mut debug = options::pool_debug() | crate::checkers::tool_flags();
    if let Some(tag) = backend {
        // A size class of the LD_PRELOAD malloc (`create_span_pool`): one
        // pool per tag, whoever asks first creates it. A tag this call bound
        // has none (tags are bound here only, under the registry lock): no
        // walk of every pool for each class a process starts using.
        let existing = if fresh_tag {
            None
        } else {
            reg.pools().find(|p| p.backend == tag)
        };
        if let Some(p) = existing {
            // Relaxed: `users` changes under the registry lock we hold.
            p.users.fetch_add(1, Relaxed);
            return Ok(p);
        }
        // Its objects must start at their span slot, since the preload
        // finds their pool from the address and hands them out as they
        // are: no option that moves the caller's bytes or adds words
        // around them.
        debug &= !crate::head::LAYOUT_FLAGS;
        if options::canary() {
            // Nor, under the preload's `canary`, one that writes over a
            // free object's bytes, where its marks are (it checks writes
            // after free itself).
            debug &= !(options::DBG_INTEGRITY | options::DBG_POISON | options::DBG_ZERO_ON_FREE);
        }
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
    // A static name is not copied; `name_owned` below says which it is.
    let name_copy = match name_arg {
        Name::Copied(n) => copy_name(n).ok_or(Error::NoMemory)?,
        Name::Static(n) => NonNull::from(n).cast(),
    };
    let owned = matches!(name_arg, Name::Copied(_));
    let drop_name = |copy| {
        if owned {
            // SAFETY: the copy is ours and unused.
            unsafe { release_name(copy) };
        }
    };
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
            unsafe { Pool::init(head, slot, size, flags, backend, debug, poison, next_key()) };
            head
        }
        None => {
            if reg.slots == MAX_POOLS {
                drop_name(name_copy);
                return Err(Error::NoMemory);
            }
            // From mmap, not malloc: see `meta`. Its blocks are aligned to
            // their power-of-two size, far beyond a Pool's alignment.
            let Some(mem) = meta::obtain(core::mem::size_of::<Pool>()) else {
                drop_name(name_copy);
                return Err(Error::NoMemory);
            };
            debug_assert!(mem.cast::<Pool>().is_aligned());
            let head = mem.cast::<Pool>();
            // SAFETY: fresh memory of the right size and alignment.
            unsafe {
                Pool::init(
                    head,
                    reg.slots,
                    size,
                    flags,
                    backend,
                    debug,
                    poison,
                    next_key(),
                )
            };
            reg.slots += 1;
            head
        }
    };
    // SAFETY: initialised above; 'static because heads are never unmapped.
    let pool: &'static Pool = unsafe { &*head.as_ptr() };
    pool.name.set(Some(name_copy));
    pool.name_owned.set(owned);
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
        if unsafe { Pool::from_handle(pool.handle) }.is_none() {
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
        if let Some(name) = pool.name.take().filter(|_| pool.name_owned.get()) {
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
/// flight. So it is asked again: a few times after a short spin, then
/// after yielding the CPU, so that a mover preempted in the middle of its
/// move (another thread's eviction, on a loaded machine) can finish it. A
/// pool that is in use costs its `pool_destroy` these retries, about
/// `IN_USE_YIELDS` system calls.
fn in_use(reg: &Registry, pool: &Pool) -> bool {
    const IN_USE_SPINS: usize = 4;
    const IN_USE_YIELDS: usize = 64;
    (0..IN_USE_SPINS + IN_USE_YIELDS).all(|i| {
        if i < IN_USE_SPINS {
            for _ in 0..i * 64 {
                core::hint::spin_loop();
            }
        } else {
            std::thread::yield_now();
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

/// [`gc`] for an allocation that failed (the upcall of `head`): inside
/// malloc, where the dynamic loader must not be called (see
/// `backing::trim_if_found`).
fn gc_on_failure() {
    gc_pools();
    backing::trim_if_found();
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

#[cfg(all(test, not(loom)))]
mod tests;
