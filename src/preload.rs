//! What the LD_PRELOAD malloc (`malloc/`, `libpools_malloc.so`) uses of the
//! core, and nothing else: its size classes are span pools, its large
//! blocks are the spans' large mappings, and it shares the core's lock, fork
//! handlers, option parser and memory profile rather than keeping its own.

pub use crate::head::Pool;
pub use crate::os::{on_fresh_span, FreshSpanHook};
pub use crate::registry::{create_span_pool, gc_pools, injected_failure};
pub use crate::span::{
    large_align, large_header_corrupt, large_obtain, large_offset, large_release, large_resize,
    owner, span_object, Owner,
};
pub use crate::sync::{inside_window, SpinLock};

/// How many fresh spans the span layer has handed out so far: it grows as
/// the heap does (see `Pool::release_if_idle`).
#[inline]
pub fn fresh_spans() -> usize {
    crate::span::fresh_spans()
}

/// Moves this thread's cached objects of `pool` to its shared cache if the
/// pool is idle (no thread took its objects past the thread caches through
/// the last few fresh spans): the step before `Pool::release_if_idle` for
/// the objects a thread holds itself (a single-threaded program holds all
/// of its own).
pub fn evict_own_if_idle(pool: &Pool) {
    if pool.is_idle() {
        crate::thread_cache::evict_own(pool);
    }
}

/// Makes the process's fork handlers also take `lock` in prepare and call
/// `unlock` in the parent and the child (the preload's large cache). Call it
/// from a constructor, before any thread can fork.
pub fn cover_outer_locks(lock: extern "C" fn(), unlock: extern "C" fn()) {
    crate::fork::cover_outer_locks(lock, unlock);
    crate::fork::register_handlers();
}

/// Makes `trim`, the LD_PRELOAD malloc's `malloc_trim`, what `pool_gc`
/// asks to give memory back (no lookup: see `backing::trim_if_found`).
/// Call it from a constructor.
pub fn trim_with(trim: unsafe extern "C" fn(usize) -> core::ffi::c_int) {
    crate::backing::set_malloc_trim(trim);
}

/// Whether the environment's `POOL_DEBUG` asks for `uaf`, by the core's own
/// parser (a list it refuses turns nothing on, as at the core's start-up).
/// Reads the environment only: the preload asks before the core starts.
pub fn uaf_requested() -> bool {
    crate::options::uaf_in_env()
}

/// Whether the environment's `POOL_DEBUG` asks for `canary`, as
/// [`uaf_requested`] does for `uaf`.
pub fn canary_requested() -> bool {
    crate::options::canary_in_env()
}

/// The memory profile is recording (see `profile`).
pub fn profiling() -> bool {
    crate::profile::active()
}

/// Records an allocation (or, with `free`, a release) of `bytes` that no
/// pool served, in the memory profile.
pub fn record_unpooled(bytes: usize, free: bool) {
    crate::profile::record_unpooled(bytes, free);
}

/// Writes one formatted line to stderr with the core's formatter: on the
/// stack, with write(2), no malloc (truncated past 512 bytes).
pub fn write_stderr(args: core::fmt::Arguments<'_>) {
    let mut line = crate::line::Line::new();
    let _ = core::fmt::Write::write_fmt(&mut line, args);
    line.write_to(2);
}
