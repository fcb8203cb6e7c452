//! # libpools
//!
//! HAProxy-style memory pools for C programs, written in Rust.
//!
//! An object's way: `pool_alloc` pops the newest pointer of this thread's
//! stack for the pool (`thread_cache`); a miss takes a cluster from the
//! pool's shared cache, buckets of heads each locked by one `xchg` to BUSY
//! (`shared_cache`); a miss there asks the backing allocator (`backing`:
//! spans, malloc, guarded or huge-page mappings). `pool_free` pushes it
//! back; a full budget evicts the thread's oldest objects to the shared
//! cache in clusters; `pool_flush` and `pool_gc` give what is idle back to
//! the system.
//!
//! ## Layers
//!
//! Each module imports only modules of its own layer or of lower ones, and
//! none of a layer's modules import one another in a cycle;
//! `scripts/check-layers.py` (in `make lint`) checks the code against this
//! diagram. The three calls that go up (a failing allocation's `pool_gc`, the
//! recycling of a dead pool's head, the owner of a misplaced object in a
//! debugging message) go through one table, `head::Upcalls`, that the
//! registry installs.
//!
//! ```text
//!  8  ffi fork preload       the C edge (checks, errno, CStr; nothing else
//!                            knows them); the fork handlers; the LD_PRELOAD
//!                            malloc's one way into the core
//!  7  registry               every pool: create, merge, destroy, gc, dumps
//!  6  pool                   one pool's alloc and free across the layers
//!                            below, the debugging path, gc of idle objects
//!  5  debug profile          what the POOL_DEBUG options do to an object,
//!                            through the five calls the pool makes; the
//!                            memory profile by call site
//!  4  thread_cache           per-thread stacks of pointers, the byte budget,
//!                            oldest-first eviction, the exit drain
//!  3  head                   the pool head: sizes, key, counters, the free
//!                            object's key word, the paths out of the caches
//!  2  shared_cache lifecycle  the xchg-locked buckets and their legacy
//!                            variants; the pin word a destroy waits on
//!                            (both model-checked with loom)
//!  1  backing span           where objects come from: malloc, spans and the
//!                            region map, guarded and huge-page mappings,
//!                            fail=N, trim
//!  0  os sync tls line links options counters meta checkers
//!                            the floor: system calls and mappings, locks
//!                            and the fork window, the TLS word, the stack
//!                            formatter, protected free-list links,
//!                            settings as data, event counters,
//!                            the metadata arena, valgrind and ASan
//! ```

#![warn(unsafe_op_in_unsafe_fn)]

mod backing;
mod checkers;
mod counters;
mod debug;
pub mod ffi;
mod fork;
mod head;
mod lifecycle;
mod line;
mod links;
mod meta;
mod options;
mod os;
mod pool;
pub mod preload;
mod profile;
pub mod registry;
mod shared_cache;
mod span;
mod sync;
mod thread_cache;
mod tls;

pub use head::{Handle, Pool, Stats, POOL_F_EXACT, POOL_F_SHARED, POOL_MAX_SIZE};
pub use options::{cache_size, shared_cache_name, POOL_DEFAULT_CACHE_SIZE};

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
