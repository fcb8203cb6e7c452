//! `fork()` support: the process's one set of `pthread_atfork` handlers,
//! registered at load time, which take every lock of the library (and of
//! the layer above the core that asks, the LD_PRELOAD malloc's large
//! cache) before a fork and release them after it, in the parent and in
//! the child.
//!
//! Prepare takes the locks in the order every other path takes them (the
//! registry's init lock, the outer layer's locks, the registry lock and
//! every pool's shared-cache heads, the lock of the list of thread caches,
//! the locks of the tags bound so far, the spans' reserve, the metadata arena),
//! then opens the *fork window* on the forking thread (see `sync`): another
//! handler that allocates inside it passes through the locks held for it.
//! A prepare handler registered before ours runs after it, and a child or
//! parent handler registered before ours runs before it, both inside the
//! window. In the child, the thread caches of the threads that were not
//! copied are drained by the only thread left, once every other lock is
//! released (draining may give objects back to the allocator underneath).
//! All of this only once the process has had a second thread: before, the
//! handlers take nothing and open no window ([`single_threaded`]).
//!
//! The handlers are registered by an ELF constructor, when the library is
//! loaded: before `main`, so before any handler an application registers
//! there (ours then run as glibc runs its own malloc's: prepare last, parent
//! and child first), and never from inside `malloc` (a `pthread_atfork`
//! that allocates would find its own lock held).

use crate::thread_cache::THREADS;
use crate::{meta, registry, span, sync};
use core::sync::atomic::AtomicPtr;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicBool, AtomicU8};

/// A pair of functions that take and release the locks of a layer above the
/// core (called by prepare before the core's locks, and by the parent and
/// child handlers after them).
type Hook = extern "C" fn();

static OUTER_LOCK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
static OUTER_UNLOCK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Makes the process's fork handlers also take `lock` in prepare and call
/// `unlock` in the parent and the child (the LD_PRELOAD malloc's large
/// cache). One layer only: a second call replaces the first. Call it from a
/// constructor, before any thread can fork.
pub fn cover_outer_locks(lock: Hook, unlock: Hook) {
    // Release: a forking thread that acquires `OUTER_UNLOCK` sees `lock`.
    OUTER_LOCK.store(lock as *mut (), Relaxed);
    OUTER_UNLOCK.store(unlock as *mut (), Release);
}

fn outer() -> Option<(Hook, Hook)> {
    // Acquire: pairs with the Release in `cover_outer_locks`.
    let unlock = OUTER_UNLOCK.load(Acquire);
    let lock = OUTER_LOCK.load(Relaxed);
    if lock.is_null() || unlock.is_null() {
        return None;
    }
    // SAFETY: both were stored from `Hook` values by `cover_outer_locks`.
    Some(unsafe {
        (
            core::mem::transmute::<*mut (), Hook>(lock),
            core::mem::transmute::<*mut (), Hook>(unlock),
        )
    })
}

/// Takes the outer layer's locks (first thing in prepare).
fn lock_outer() {
    if let Some((lock, _)) = outer() {
        lock();
    }
}

/// Releases them (last thing in the parent and child handlers).
fn unlock_outer() {
    if let Some((_, unlock)) = outer() {
        unlock();
    }
}

/// Registers the fork handlers, once per process; later calls do nothing.
pub fn register_handlers() {
    static DONE: AtomicU8 = AtomicU8::new(0);
    // Relaxed: only decides who registers; the handlers read nothing that
    // this publishes.
    if cfg!(miri) || DONE.swap(1, Relaxed) != 0 {
        return;
    }
    // SAFETY: the three handlers are `extern "C" fn()` that never unwind.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// The process had one thread when the prepare handler ran, so the
/// handlers take and release nothing (see [`single_threaded`]). Written by
/// prepare only when it changes: a store at every fork would make the
/// parent copy the page at its next fork.
//
// Relaxed: read and written by the forking thread only, from its prepare
// handler to its parent or child handler (forks of a single-threaded
// process cannot overlap; a multi-threaded one never stores true).
static UNLOCKED: AtomicBool = AtomicBool::new(false);

/// Whether the process has never had a second thread: glibc's
/// `__libc_single_threaded`, cleared by the first `pthread_create` and
/// never set again. Then no other thread can hold one of our locks at
/// `fork()` or take one during it, and the fork handlers skip them all,
/// as glibc's `fork` skips its own malloc's locks in that case. (A prepare
/// handler that runs after ours and starts a thread defeats both; creating
/// threads in a prepare handler is not supported.) Each lock taken is a
/// page written before the fork, copied by the parent and by the child
/// when released: about 30 faults per fork of a shell.
fn single_threaded() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(miri), not(loom)))]
    {
        extern "C" {
            static __libc_single_threaded: core::ffi::c_char;
        }
        // SAFETY: glibc's variable, valid for the life of the process;
        // read only (glibc writes it, once, when a second thread is made).
        unsafe { core::ptr::read_volatile(&raw const __libc_single_threaded) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", not(miri), not(loom))))]
    false
}

extern "C" fn prepare() {
    let alone = single_threaded();
    if UNLOCKED.load(Relaxed) != alone {
        UNLOCKED.store(alone, Relaxed);
    }
    if alone {
        return;
    }
    registry::fork_lock_init();
    lock_outer();
    registry::fork_lock();
    THREADS.lock_for_fork();
    span::fork_prepare();
    meta::fork_prepare();
    sync::open_window();
}

/// What the parent and the child both release before the registry.
fn release_below_registry() {
    sync::close_window();
    meta::fork_release();
    span::fork_release();
}

extern "C" fn parent() {
    if UNLOCKED.load(Relaxed) {
        return;
    }
    release_below_registry();
    THREADS.unlock_after_fork();
    registry::fork_unlock();
    unlock_outer();
}

extern "C" fn child() {
    if UNLOCKED.load(Relaxed) {
        return;
    }
    span::fork_child();
    release_below_registry();
    registry::fork_unlock();
    unlock_outer();
    THREADS.release_orphans_after_fork();
}

/// The library's constructor: runs when the object is loaded (the shared
/// library, or a static program's start-up), before `main`.
#[cfg(all(target_os = "linux", not(miri), not(loom)))]
extern "C" fn at_load() {
    register_handlers();
}

#[cfg(all(target_os = "linux", not(miri), not(loom)))]
#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;
