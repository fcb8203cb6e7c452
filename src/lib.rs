//! # libpools
//!
//! HAProxy-style memory pools for C programs, written in Rust.
//!
//! ```text
//!  pool_alloc / pool_free        ffi.rs: checks, errno; no logic
//!         |
//!  thread cache                  thread_cache.rs: per thread and pool, a
//!         |                      stack of pointers; byte budget granted on
//!         |                      the slow path, oldest evicted in clusters
//!  shared cache                  shared_cache.rs: per pool, buckets of
//!         |                      self-locked list heads (xchg to BUSY)
//!  backing allocator             os.rs: spans (span.rs, objects up to
//!                                32 KiB), posix_memalign/free, malloc_trim
//! ```
//!
//! `pool.rs` orchestrates one pool's path through these layers and
//! `registry.rs` keeps the process's pools and thread caches (create, merge,
//! destroy, gc, statistics); `lifecycle.rs` is how a destroy and the
//! thread caches agree on when a pool head may be reused (pins in one
//! atomic word, model-checked). `options.rs` holds the process-wide settings;
//! `debug.rs` and `profile.rs` what the debugging options and the memory
//! profile do on a debugging pool's path.

#![warn(unsafe_op_in_unsafe_fn)]

mod counters;
mod debug;
pub mod ffi;
pub mod fork;
mod legacy_cache;
mod lifecycle;
mod links;
mod meta;
mod options;
mod os;
pub mod pool;
pub mod profile;
pub mod registry;
mod shared_cache;
pub mod span;
mod sync;
mod thread_cache;
mod tls;

pub use options::{cache_size, shared_cache_name, POOL_DEFAULT_CACHE_SIZE};
pub use pool::{Pool, Stats, POOL_F_EXACT, POOL_F_SHARED, POOL_MAX_SIZE};

/// Sets the per-thread cache budget; the calling thread's cache fits it
/// at once, other threads' at their next grant (see `thread_cache`).
pub fn set_cache_size(bytes: usize) {
    options::set_cache_size(bytes);
    thread_cache::fit_budget();
}

/// Moves every object the calling thread caches to the shared caches.
pub fn evict_local_cache() {
    thread_cache::evict_all();
}
