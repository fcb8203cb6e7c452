//! The registry's part of the fork handlers (`fork`): its init lock, its
//! lock and every shared-cache head of every pool (taken with the same xchg
//! lock takers use; the lists wait in their buckets), held from prepare to
//! the parent or the child handler. The thread caches are the
//! thread list's part (`thread_cache::ThreadList`).

use super::{Registry, RegistryGuard, INIT, INIT_LOCK, REGISTRY};
use crate::thread_cache::ThreadCache;
use core::ptr::NonNull;
use std::sync::{MutexGuard, PoisonError};

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
pub(super) fn fork_window_registry() -> Option<RegistryGuard> {
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
