//! The list of every thread cache of the process, for the statistics and
//! the fork handlers, and the home buckets threads start at.

use super::{drain, unmap, ThreadCache};
use crate::head::Pool;
use crate::sync::SpinLock;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::Relaxed;

/// Every thread cache of the process, linked through `ThreadCache::next`.
/// Its lock is taken after the registry's (stats, dumps and gc count what
/// the caches hold) and by the fork handlers; the hit path never takes it.
pub(crate) struct ThreadList {
    lock: SpinLock,
    first: core::cell::UnsafeCell<*mut ThreadCache>,
}

// SAFETY: `first` and the `next` links are only touched under `lock`, and
// the caches they point to are not tied to any thread.
unsafe impl Sync for ThreadList {}

pub(crate) static THREADS: ThreadList = ThreadList {
    lock: SpinLock::new(),
    first: core::cell::UnsafeCell::new(ptr::null_mut()),
};

impl ThreadList {
    /// Runs `f` on the list's first link, under the lock.
    fn with<R>(&self, f: impl FnOnce(&mut *mut ThreadCache) -> R) -> R {
        self.lock.lock();
        // SAFETY: we hold the lock (or, inside the fork window, the fork
        // handlers hold it for this thread, which is then the only one).
        let r = f(unsafe { &mut *self.first.get() });
        self.lock.unlock();
        r
    }

    pub(super) fn add(&self, tc: NonNull<ThreadCache>) {
        self.with(|first| {
            // SAFETY: the cache is live; its link is ours under the lock.
            unsafe { tc.as_ref() }.next.set(*first);
            *first = tc.as_ptr();
        });
    }

    /// Unregisters a drained cache of an exiting thread and unmaps it.
    ///
    /// # Safety
    /// `tc` is the calling thread's cache, drained, never used again.
    pub(super) unsafe fn remove_and_unmap(&self, tc: NonNull<ThreadCache>) {
        self.with(|first| {
            let mut link: *mut *mut ThreadCache = first;
            // SAFETY: walking the list under its lock.
            unsafe {
                while !(*link).is_null() && *link != tc.as_ptr() {
                    link = (**link).next.as_ptr();
                }
                if !(*link).is_null() {
                    *link = tc.as_ref().next.get();
                }
            }
        });
        // SAFETY: drained and unregistered: nobody can reach the cache now.
        unsafe { unmap(tc) };
    }

    /// Objects of `pool` that all thread caches hold (a snapshot: exact at
    /// quiescence).
    pub(crate) fn cached(&self, pool: &Pool) -> usize {
        self.with(|first| {
            let mut n = 0;
            let mut cur = *first;
            // SAFETY: a registered cache stays mapped until its thread
            // unregisters it, which needs the lock we hold.
            while let Some(tc) = unsafe { cur.as_ref() } {
                n += tc.count_of(pool);
                cur = tc.next.get();
            }
            n
        })
    }

    /// The fork handlers' prepare: holds the lock across `fork()`.
    pub(crate) fn lock_for_fork(&self) {
        self.lock.lock();
    }

    /// The parent's handler: releases it.
    pub(crate) fn unlock_after_fork(&self) {
        self.lock.unlock();
    }

    /// The child's handler (the forking thread, the child's only one, still
    /// holding the lock): the caches of the threads that were not copied
    /// leave the list and are drained and unmapped by this thread, which
    /// acts as their owner; then the lock is released.
    pub(crate) fn release_orphans_after_fork(&self) {
        let keep = ThreadCache::existing().map_or(ptr::null(), ptr::from_ref);
        // SAFETY: this thread holds the lock (prepare took it).
        let first = unsafe { &mut *self.first.get() };
        let mut orphans: *mut ThreadCache = ptr::null_mut();
        let mut cur = *first;
        *first = ptr::null_mut();
        while let Some(tc) = NonNull::new(cur) {
            // SAFETY: a registered cache, mapped, under the lock.
            let tc_ref = unsafe { tc.as_ref() };
            cur = tc_ref.next.get();
            let list = if ptr::eq(tc.as_ptr(), keep) {
                &mut *first
            } else {
                &mut orphans
            };
            tc_ref.next.set(*list);
            *list = tc.as_ptr();
        }
        self.lock.unlock();
        while let Some(tc) = NonNull::new(orphans) {
            // SAFETY: unlisted, mapped, and owned by no thread of the child,
            // which has only this one: we act as its owner.
            unsafe {
                orphans = tc.as_ref().next.get();
                drain(tc.as_ref());
                unmap(tc);
            }
        }
    }
}

/// Gives each thread its home, round robin: its first shared-cache bucket
/// (the home modulo the buckets in use) and its carving slot in the spans
/// (modulo `span::CHUNK_SLOTS`), so that threads created one after the
/// other start at different buckets and carve new objects apart.
pub(super) fn next_home() -> usize {
    static NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
    const HOMES: usize = crate::span::CHUNK_SLOTS * crate::shared_cache::BUCKETS;
    // Relaxed: any spread of homes is correct.
    NEXT.fetch_add(1, Relaxed) % HOMES
}
