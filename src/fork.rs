//! `fork()` support below the registry: the load-time registration of the
//! process's one set of `pthread_atfork` handlers, the locks of layers above
//! the core that they cover (the LD_PRELOAD malloc's large cache), and the
//! *fork window*.
//!
//! The prepare handler (`registry::fork_prepare`) takes every lock of the
//! library, then opens the window on the forking thread; the parent and
//! child handlers close it, then release the locks. Inside the window the
//! forking thread owns every lock, so when it meets one of them held it goes
//! on as if it had taken it (and does not release it): it is the only thread
//! that can run through the library until the window closes. That is what
//! lets other `pthread_atfork` handlers allocate wherever they run relative
//! to ours: a prepare handler registered before ours runs after it, and a
//! child or parent handler registered before ours runs before it, both
//! inside the window.
//!
//! The handlers are registered by an ELF constructor, when the library is
//! loaded: before `main`, so before any handler an application registers
//! there (ours then run as glibc runs its own malloc's: prepare last, parent
//! and child first), and never from inside `malloc` (a `pthread_atfork`
//! that allocates would find its own lock held).

use core::cell::Cell;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8};

/// Whether some thread's fork window is open: the cheap test before the
/// thread-local one.
static OPEN: AtomicBool = AtomicBool::new(false);

std::thread_local! {
    /// This thread is inside its fork window. Const and without a
    /// destructor, so reading it registers nothing. The child's only thread
    /// inherits the forking thread's value.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is inside its fork window, so that a lock of
/// the library that it finds held is held for it (see the module comment).
/// Callers test it only after finding a lock held: never on a fast path.
#[inline]
pub fn inside_window() -> bool {
    // Relaxed: the forking thread itself stored `OPEN` (program order); for
    // any other thread a stale `true` only costs the thread-local read,
    // which says false.
    OPEN.load(Relaxed) && INSIDE.try_with(Cell::get).unwrap_or(false)
}

/// Opens the window on the calling thread (the prepare handler, holding
/// every lock).
pub(crate) fn open_window() {
    let _ = INSIDE.try_with(|f| f.set(true));
    OPEN.store(true, Relaxed);
}

/// Closes it (the parent and child handlers, before releasing the locks).
pub(crate) fn close_window() {
    let _ = INSIDE.try_with(|f| f.set(false));
    OPEN.store(false, Relaxed);
}

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
pub(crate) fn lock_outer() {
    if let Some((lock, _)) = outer() {
        lock();
    }
}

/// Releases them (last thing in the parent and child handlers).
pub(crate) fn unlock_outer() {
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
    crate::registry::register_fork_handlers();
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
