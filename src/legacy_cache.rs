//! The shared-cache designs libpools replaced, kept only to be measured and
//! to show, in a test, the crash the default design fixes. Never the
//! default; selected with `POOL_SHARED_CACHE=dwcas|rwlock|locked`.
//!
//! All three keep one list of clusters (the same [`Item`] links as the
//! default) under one head:
//! - `dwcas`: the lockless pop of HAProxy before the fix. It reads the head,
//!   then `head->next`, then swings head and a sequence number with one
//!   double-word CAS (`cmpxchg16b`). The sequence number defeats ABA, but
//!   nothing stops another thread from popping `head` and handing it back to
//!   the OS between the two reads: the read of `next` then faults. This is
//!   the bug of `shared/seeds/000_b08d1a0abe02ac16.txt`.
//! - `rwlock`: the same pop under a read lock, while flush and gc take the
//!   write lock to detach what they free (`shared/seeds/002_...`): correct,
//!   but every pop writes the lock's cache line.
//! - `locked`: one mutex around the list.

use crate::options::{self, SharedMode};
use crate::shared_cache::{Cluster, Item};
use core::ptr::{self, NonNull};
use core::sync::atomic::AtomicIsize;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use portable_atomic::AtomicU128;
use std::sync::{Mutex, MutexGuard, RwLock};

/// The single list of a legacy shared cache.
pub(crate) struct LegacyCache {
    /// The first cluster's address (low 64 bits) and a sequence number
    /// bumped by every change (high 64 bits).
    head: AtomicU128,
    /// `rwlock`: read-held by pops, write-held by whoever frees objects.
    flush_lock: RwLock<()>,
    /// `locked`: held around every list operation.
    lock: Mutex<()>,
    /// Objects in the list (exact when no operation is in flight).
    objects: AtomicIsize,
}

fn pack(first: *mut Item, seq: u64) -> u128 {
    first.expose_provenance() as u128 | (seq as u128) << 64
}

fn unpack(v: u128) -> (*mut Item, u64) {
    (
        ptr::with_exposed_provenance_mut(v as u64 as usize),
        (v >> 64) as u64,
    )
}

impl LegacyCache {
    pub(crate) const fn new() -> Self {
        LegacyCache {
            head: AtomicU128::new(0),
            flush_lock: RwLock::new(()),
            lock: Mutex::new(()),
            objects: AtomicIsize::new(0),
        }
    }

    /// Puts a cluster at the head of the list.
    ///
    /// Counter: objects grows by the cluster's length.
    /// Lock: the mutex for `locked`; none otherwise (a DWCAS push).
    pub(crate) fn put(&self, mode: SharedMode, cluster: Cluster) {
        let _held = (mode == SharedMode::Locked).then(|| self.mutex());
        let first = cluster.first.as_ptr();
        // Relaxed: the value is only a CAS's expectation.
        let mut cur = self.head.load(Relaxed);
        loop {
            let (head, seq) = unpack(cur);
            // SAFETY: we own `first` until the CAS publishes it.
            unsafe { (*first).next = head };
            // Release: a popper's Acquire must see `next` and the objects.
            match self
                .head
                .compare_exchange_weak(cur, pack(first, seq + 1), Release, Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        // Relaxed: a statistic, exact once operations settle.
        self.objects.fetch_add(cluster.len as isize, Relaxed);
    }

    /// Takes the first cluster, to hand its objects to a thread.
    ///
    /// Counter: objects drops by its length.
    /// Lock: `rwlock` read-holds the flush lock, `locked` holds the mutex,
    /// `dwcas` takes none (and may read a freed object: see the module).
    pub(crate) fn take(&self, mode: SharedMode) -> Option<Cluster> {
        match mode {
            SharedMode::Rwlock => {
                let _read = self.flush_lock.read().unwrap_or_else(|e| e.into_inner());
                self.pop()
            }
            SharedMode::Locked => {
                let _held = self.mutex();
                self.pop()
            }
            _ => self.pop(),
        }
    }

    /// Takes the first cluster, to return its objects to the OS: like
    /// [`take`](Self::take), but `rwlock` write-holds the flush lock, so no
    /// pop can be reading the cluster's `next` when it is freed.
    pub(crate) fn take_to_release(&self, mode: SharedMode) -> Option<Cluster> {
        match mode {
            SharedMode::Rwlock => {
                let _write = self.flush_lock.write().unwrap_or_else(|e| e.into_inner());
                self.pop()
            }
            _ => self.take(mode),
        }
    }

    /// Detaches the whole list and hands each cluster to `f`.
    ///
    /// Counter: objects drops by what was taken.
    /// Lock: `rwlock` write-holds the flush lock while detaching, `locked`
    /// holds the mutex.
    pub(crate) fn take_all(&self, mode: SharedMode, mut f: impl FnMut(Cluster)) {
        let list = {
            let _write = (mode == SharedMode::Rwlock)
                .then(|| self.flush_lock.write().unwrap_or_else(|e| e.into_inner()));
            let _held = (mode == SharedMode::Locked).then(|| self.mutex());
            // Relaxed: the value is only a CAS's expectation.
            let mut cur = self.head.load(Relaxed);
            loop {
                let (head, seq) = unpack(cur);
                // Acquire: pairs with the putters' Release, so the objects'
                // links are visible to us.
                match self.head.compare_exchange_weak(
                    cur,
                    pack(ptr::null_mut(), seq + 1),
                    Acquire,
                    Relaxed,
                ) {
                    Ok(_) => break head,
                    Err(now) => cur = now,
                }
            }
        };
        let mut taken = 0;
        let mut cur = list;
        while let Some(c) = NonNull::new(cur) {
            // SAFETY: the list left the cache: every cluster in it is ours.
            let cluster = unsafe {
                cur = (*c.as_ptr()).next;
                Cluster::owned(c)
            };
            taken += cluster.len;
            f(cluster);
        }
        self.objects.fetch_sub(taken as isize, Relaxed);
    }

    /// Objects in the list now (exact at quiescence).
    pub(crate) fn objects(&self) -> usize {
        self.objects.load(Relaxed).max(0) as usize
    }

    fn mutex(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lockless pop: read head, read `head->next`, DWCAS.
    fn pop(&self) -> Option<Cluster> {
        // Acquire: pairs with the putters' Release CAS (see `put`).
        let mut cur = self.head.load(Acquire);
        loop {
            let (head, seq) = unpack(cur);
            let first = NonNull::new(head)?;
            options::race_window();
            // SAFETY: NOT guaranteed, and that is the point of this variant:
            // another thread may have popped `first` and returned it to the
            // OS since we read the head. Under `rwlock` and `locked` nobody
            // can free it meanwhile (releases hold the write lock or the
            // mutex), so the read is sound there. Volatile keeps the read
            // where the original C had it.
            let next = unsafe { ptr::read_volatile(&raw const (*first.as_ptr()).next) };
            // Acquire on success: we own the cluster and must see its
            // objects as the putter left them.
            match self
                .head
                .compare_exchange_weak(cur, pack(next, seq + 1), Acquire, Acquire)
            {
                Ok(_) => {
                    // SAFETY: the CAS detached `first`: its cluster is ours.
                    let cluster = unsafe { Cluster::owned(first) };
                    self.objects.fetch_sub(cluster.len as isize, Relaxed);
                    return Some(cluster);
                }
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::shared_cache::tests::{collect, free_all, make_cluster};
    use std::sync::Arc;

    /// Every mode passes clusters between threads without losing or
    /// duplicating an object. Under Miri and ThreadSanitizer only `locked`
    /// runs: the lockless pop of `dwcas` and of `rwlock` (whose read lock
    /// lets poppers run together) reads the `next` of an object that another
    /// popper may already have taken and be rewriting. Under `rwlock` the
    /// memory stays mapped (releases need the write lock), so on hardware
    /// the stale value only makes the CAS fail; `dwcas` is the seed's crash.
    /// Both are data races to the language, and both tools say so (Miri
    /// reported the `rwlock` one on 2026-11-23).
    #[test]
    fn every_mode_loses_and_duplicates_nothing() {
        let modes: &[SharedMode] = if cfg!(any(miri, pools_tsan)) {
            &[SharedMode::Locked]
        } else {
            &[SharedMode::Dwcas, SharedMode::Rwlock, SharedMode::Locked]
        };
        for &mode in modes {
            let cache = Arc::new(LegacyCache::new());
            let mut objs = Vec::new();
            for i in 0..4 {
                cache.put(mode, make_cluster(&mut objs, 1 + i));
            }
            let rounds = if cfg!(miri) { 20 } else { 5_000 };
            let threads: Vec<_> = (0..3)
                .map(|t| {
                    let cache = Arc::clone(&cache);
                    std::thread::spawn(move || {
                        for _ in 0..rounds {
                            let c = if t == 0 {
                                cache.take_to_release(mode)
                            } else {
                                cache.take(mode)
                            };
                            if let Some(c) = c {
                                cache.put(mode, c);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let mut got = Vec::new();
            cache.take_all(mode, |c| collect(c, &mut got));
            got.sort();
            let mut want = objs.clone();
            want.sort();
            assert_eq!(got, want, "{mode:?}");
            assert_eq!(cache.objects(), 0);
            assert!(cache.take(mode).is_none());
            free_all(&objs);
        }
    }
}
