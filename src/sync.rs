//! Locks and the atomics the model-checked protocols are written with: the
//! fork window, the spin lock that fork handlers can carry across `fork()`,
//! and the atomics of the shared cache and a pool's lifecycle word.
//!
//! ## The fork window
//!
//! The prepare handler (`fork`) takes every lock of the library, then opens
//! the window on the forking thread; the parent and child handlers close
//! it, then release the locks. Inside the window the forking thread owns
//! every lock, so when it meets one of them held it goes on as if it had
//! taken it (and does not release it): it is the only thread that can run
//! through the library until the window closes. That is what lets other
//! `pthread_atfork` handlers allocate wherever they run relative to ours.
//!
//! ## The atomics
//!
//! Under `--cfg loom` they are loom's, so the model checker explores every
//! interleaving of the real code (see `shared_cache::loom_tests`,
//! `lifecycle::loom_tests` and the legacy variants' read-write lock in
//! `shared_cache::legacy`). Everything else in the crate uses `core`
//! atomics directly: only those protocols are model-checked, and loom
//! atomics cannot live in statics.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicIsize, AtomicPtr, AtomicU32, AtomicUsize};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicIsize, AtomicPtr, AtomicU32, AtomicUsize};

/// Spinning on a lock: crossbeam's backoff, or under loom a yield that lets
/// the model checker run the lock's holder.
#[cfg(not(loom))]
pub(crate) use crossbeam_utils::Backoff;

#[cfg(loom)]
pub(crate) struct Backoff;

#[cfg(loom)]
impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff
    }

    pub(crate) fn snooze(&self) {
        loom::thread::yield_now();
    }
}

/// Unlocks a self-locked head by storing its new value with Release.
///
/// On hardware (and in the C++ model) a plain store is enough: the swap of
/// any thread that found the head BUSY read the holder's BUSY, so by the
/// atomicity of read-modify-writes it sits right after the holder's swap in
/// modification order, before the holder's unlock. loom's modification
/// order is built from causality and misses that, then lets the spinner
/// read its own BUSY forever. Under loom the unlock is therefore a swap,
/// which loom orders after every store it could read: the same semantics,
/// stated in a way the model checker understands.
#[inline]
pub(crate) fn unlock<T>(head: &AtomicPtr<T>, new: *mut T) {
    #[cfg(not(loom))]
    head.store(new, core::sync::atomic::Ordering::Release);
    #[cfg(loom)]
    head.swap(new, core::sync::atomic::Ordering::Release);
}

/// Reads a head to decide whether to try it: a Relaxed load.
///
/// Under loom a Relaxed load may go on returning any older value of the
/// head, so a spinner can keep reading a stale BUSY and the model never ends
/// (real hardware makes stores visible in bounded time, which loom does not
/// model). Under loom the peek is therefore a read-modify-write that cannot
/// change the value, which always reads the latest one.
#[inline]
pub(crate) fn peek<T>(head: &AtomicPtr<T>) -> *mut T {
    #[cfg(not(loom))]
    return head.load(core::sync::atomic::Ordering::Relaxed);
    #[cfg(loom)]
    {
        use core::sync::atomic::Ordering::Relaxed;
        let null = core::ptr::null_mut();
        match head.compare_exchange(null, null, Relaxed, Relaxed) {
            Ok(v) | Err(v) => v,
        }
    }
}

/// A lock that can be taken in a `pthread_atfork` prepare handler and
/// released in the parent and the child (a std mutex guard cannot). Inside
/// its fork window (see the module comment) the forking thread finds every such
/// lock held for it: `lock` and `unlock` then leave it alone.
pub struct SpinLock(core::sync::atomic::AtomicBool);

impl Default for SpinLock {
    fn default() -> Self {
        Self::new()
    }
}

impl SpinLock {
    pub const fn new() -> Self {
        SpinLock(core::sync::atomic::AtomicBool::new(false))
    }

    pub fn lock(&self) {
        use core::sync::atomic::Ordering::{Acquire, Relaxed};
        let backoff = crossbeam_utils::Backoff::new();
        // Acquire: see what the previous holder wrote under the lock.
        while self
            .0
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            if inside_window() {
                return;
            }
            backoff.snooze();
        }
    }

    /// Takes the lock if it is free; `false` (and nothing taken) if anyone
    /// holds it, even for this thread's fork window.
    pub fn try_lock(&self) -> bool {
        use core::sync::atomic::Ordering::{Acquire, Relaxed};
        // Acquire: as in `lock`.
        self.0
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
    }

    pub fn unlock(&self) {
        if inside_window() {
            return;
        }
        // Release: hand our writes to the next holder.
        self.0.store(false, core::sync::atomic::Ordering::Release);
    }
}

/// Whether some thread's fork window is open: the cheap test before the
/// thread-local one.
static WINDOW_OPEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

std::thread_local! {
    /// This thread is inside its fork window. Const and without a
    /// destructor, so reading it registers nothing. The child's only thread
    /// inherits the forking thread's value.
    static INSIDE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Whether the calling thread is inside its fork window, so that a lock of
/// the library that it finds held is held for it (see the module comment).
/// Callers test it only after finding a lock held: never on a fast path.
#[inline]
pub fn inside_window() -> bool {
    // Relaxed: the forking thread itself stored `WINDOW_OPEN` (program
    // order); for any other thread a stale `true` only costs the
    // thread-local read, which says false.
    WINDOW_OPEN.load(core::sync::atomic::Ordering::Relaxed)
        && INSIDE.try_with(core::cell::Cell::get).unwrap_or(false)
}

/// Opens the window on the calling thread (the prepare handler, holding
/// every lock).
pub(crate) fn open_window() {
    let _ = INSIDE.try_with(|f| f.set(true));
    WINDOW_OPEN.store(true, core::sync::atomic::Ordering::Relaxed);
}

/// Closes it (the parent and child handlers, before releasing the locks).
pub(crate) fn close_window() {
    let _ = INSIDE.try_with(|f| f.set(false));
    WINDOW_OPEN.store(false, core::sync::atomic::Ordering::Relaxed);
}
