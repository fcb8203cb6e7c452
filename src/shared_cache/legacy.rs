//! The shared-cache designs libpools replaced, kept only to be measured and
//! to show, in a test, the crash the default design fixes. Never the
//! default; selected with `POOL_SHARED_CACHE=dwcas|rwlock|locked`.
//!
//! They run over the default's buckets and clusters (a [`LegacyHead`] and
//! its [`LegacyLocks`] sit in each [`Bucket`], beside the default's own
//! head, in the same cache line), with the same choice
//! of bucket (a thread's home first, then the next ones) and the same
//! release policy, so that they differ from `xchg` only in how a head is
//! locked. `POOL_SHARED_BUCKETS=1` gives each of them, and `xchg`, a single
//! head: the seed's layout.
//!
//! - `dwcas`: the lockless pop of HAProxy before the fix. It reads the head,
//!   then `head->next`, then swings head and a sequence number with one
//!   double-word CAS (`cmpxchg16b`). The sequence number defeats ABA, but
//!   nothing stops another thread from popping `head` and handing it back to
//!   the OS between the two reads: the read of `next` then faults. This is
//!   the bug of `shared/seeds/000_b08d1a0abe02ac16.txt`. A push is a DWCAS
//!   loop and never waits.
//! - `rwlock`: the same pop under the bucket's read lock, while flush and gc
//!   take the write locks to detach what they free (`shared/seeds/002_...`):
//!   correct, but every pop writes the lock's word (a spinning read-write
//!   lock of one word, as HAProxy's are). A release write-holds
//!   every bucket's lock, not only the one it takes from: an object a pop
//!   still reads the `next` of (under bucket A's read lock) may have been
//!   taken and put into bucket B meanwhile, and released from there.
//! - `locked`: a plain list under the bucket's mutex. A putter that finds
//!   its home's mutex held tries the next bucket, as an `xchg` putter does
//!   on a BUSY head, and after a round waits on its home.

use super::{Bucket, Cluster, Item, SharedCache, BUCKETS};
use crate::counters::{count, touch, Event};
use crate::links;
use crate::options::{self, SharedMode};
use crate::sync::{AtomicU32, Backoff};
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::{self, Acquire, Relaxed, Release};
use portable_atomic::AtomicU128;
use std::sync::{Mutex, MutexGuard, TryLockError};

/// The head of the legacy variants in one bucket (one is used, by the
/// variant selected for the process): the first cluster's address (low 64
/// bits) and, for `dwcas` and `rwlock`, a sequence number bumped by every
/// change (high 64 bits). `locked` reads and writes it under its mutex,
/// with a sequence of 0.
pub(crate) struct LegacyHead {
    dw: AtomicU128,
}

/// The locks of the legacy variants in one bucket, apart from the head so
/// that a bucket with both fits one cache line (a struct holding the
/// 16-byte head would be padded to a multiple of 16).
pub(crate) struct LegacyLocks {
    /// `locked`: held around every list operation.
    mutex: Mutex<()>,
    /// `rwlock`: read-held by pops, write-held by whoever frees objects.
    flush_lock: FlushLock,
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

/// A reader-writer spin lock in one word: the count of readers, and
/// [`WRITER`] while a writer holds it or waits for the readers to leave (no
/// reader enters then). HAProxy's read-write locks spin as well.
struct FlushLock(AtomicU32);

const WRITER: u32 = 1 << 31;

/// A read hold of a [`FlushLock`], released on drop.
struct ReadGuard<'a>(&'a AtomicU32);

/// A write hold of a [`FlushLock`], released on drop.
struct WriteGuard<'a>(&'a AtomicU32);

impl FlushLock {
    fn new() -> Self {
        FlushLock(AtomicU32::new(0))
    }

    /// The lock word, read to spin on. Under loom a read-modify-write that
    /// changes nothing (see `sync::peek`): a load may go on returning an
    /// old value there, and the spinner never see the holder leave.
    fn current(&self, order: Ordering) -> u32 {
        #[cfg(not(loom))]
        return self.0.load(order);
        #[cfg(loom)]
        return self.0.fetch_or(0, order);
    }

    /// The read lock, counting a wait when it was not free.
    fn read(&self) -> ReadGuard<'_> {
        let backoff = Backoff::new();
        let mut waited = false;
        // Relaxed: only the CAS below takes the lock.
        let mut cur = self.current(Relaxed);
        loop {
            if cur & WRITER == 0 {
                // Acquire on success: what the last writer did (detaching
                // lists) happens before our pop.
                if self
                    .0
                    .compare_exchange(cur, cur + 1, Acquire, Relaxed)
                    .is_ok()
                {
                    return ReadGuard(&self.0);
                }
                // Another reader came or went, or a writer came.
                cur = self.current(Relaxed);
                continue;
            }
            if !waited {
                count(Event::Wait);
                waited = true;
            }
            backoff.snooze();
            cur = self.current(Relaxed);
        }
    }

    /// The write lock, counting a wait when it was not free.
    fn write(&self) -> WriteGuard<'_> {
        let backoff = Backoff::new();
        // Acquire: the readers' Release on leaving (awaited below) orders
        // their reads of the objects before what we free.
        let mut cur = self.0.fetch_or(WRITER, Acquire);
        if cur != 0 {
            count(Event::Wait);
        }
        while cur & WRITER != 0 {
            // Another writer holds it: wait for it to leave, then claim it.
            backoff.snooze();
            cur = self.0.fetch_or(WRITER, Acquire);
        }
        while cur & !WRITER != 0 {
            // Readers still inside; no new one enters.
            backoff.snooze();
            // Acquire: pairs with each reader's Release on leaving.
            cur = self.current(Acquire);
        }
        WriteGuard(&self.0)
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        // Release: our reads of the list happen before a writer's frees.
        self.0.fetch_sub(1, Release);
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // Release: what we detached is seen by the next holder's Acquire.
        // While we held it, no reader entered and no writer claimed it.
        // Under loom a swap, for the reason `sync::unlock` gives: a spinning
        // writer's `fetch_or` must read this store, not its own.
        #[cfg(not(loom))]
        self.0.store(0, Release);
        #[cfg(loom)]
        self.0.swap(0, Release);
    }
}

impl LegacyLocks {
    pub(crate) fn new() -> Self {
        LegacyLocks {
            mutex: Mutex::new(()),
            flush_lock: FlushLock::new(),
        }
    }

    /// The mutex, counting a wait when it was held.
    fn lock(&self) -> MutexGuard<'_, ()> {
        match self.mutex.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                count(Event::Wait);
                self.mutex.lock().unwrap_or_else(|e| e.into_inner())
            }
        }
    }
}

impl LegacyHead {
    pub(crate) const fn new() -> Self {
        LegacyHead {
            dw: AtomicU128::new(0),
        }
    }

    /// Pushes a cluster with a DWCAS loop (`dwcas`, `rwlock`).
    fn push_dw(&self, first: *mut Item) {
        // Relaxed: the value is only a CAS's expectation.
        let mut cur = self.dw.load(Relaxed);
        loop {
            let (head, seq) = unpack(cur);
            // SAFETY: we own `first` until the CAS publishes it.
            unsafe { Item::set_next(first, head) };
            // Release: a popper's Acquire must see `next` and the objects.
            match self
                .dw
                .compare_exchange_weak(cur, pack(first, seq + 1), Release, Relaxed)
            {
                Ok(_) => return,
                Err(now) => {
                    count(Event::Retry);
                    cur = now;
                }
            }
        }
    }

    /// The lockless pop: read head, read `head->next`, DWCAS.
    fn pop_dw(&self) -> Option<NonNull<Item>> {
        // Acquire: pairs with the putters' Release CAS (see `push_dw`).
        let mut cur = self.dw.load(Acquire);
        loop {
            let (head, seq) = unpack(cur);
            let first = NonNull::new(head)?;
            options::race_window();
            // SAFETY: NOT guaranteed, and that is the point of `dwcas`:
            // another thread may have popped `first` and returned it to the
            // OS since we read the head. Under `rwlock` nobody can free it
            // meanwhile (releases hold the write lock), so the read is sound
            // there. Volatile keeps the read where the original C had it.
            let at = unsafe { &raw const (*first.as_ptr()).next };
            // SAFETY: as above. Decoded unchecked: a racing read may see
            // anything; the link is checked once the DWCAS proved it current.
            let next = links::decode(at, unsafe { ptr::read_volatile(at) });
            // Acquire on success: we own the cluster and must see its
            // objects as the putter left them.
            match self
                .dw
                .compare_exchange_weak(cur, pack(next, seq + 1), Acquire, Acquire)
            {
                Ok(_) => {
                    links::check(at, next);
                    return Some(first);
                }
                Err(now) => {
                    count(Event::Retry);
                    cur = now;
                }
            }
        }
    }

    /// Detaches the whole DWCAS list.
    fn detach_dw(&self) -> *mut Item {
        // Relaxed: the value is only a CAS's expectation.
        let mut cur = self.dw.load(Relaxed);
        loop {
            let (head, seq) = unpack(cur);
            if head.is_null() {
                return head;
            }
            // Acquire: pairs with the putters' Release, so the objects'
            // links are visible to us.
            match self.dw.compare_exchange_weak(
                cur,
                pack(ptr::null_mut(), seq + 1),
                Acquire,
                Relaxed,
            ) {
                Ok(_) => return head,
                Err(now) => {
                    count(Event::Retry);
                    cur = now;
                }
            }
        }
    }

    /// Pushes a cluster on the `locked` list; the caller holds the mutex.
    fn push_locked(&self, first: *mut Item, _held: &MutexGuard<'_, ()>) {
        // Relaxed: the mutex orders every access to the list.
        let (head, _) = unpack(self.dw.load(Relaxed));
        // SAFETY: we own `first` until it is linked in.
        unsafe { Item::set_next(first, head) };
        self.dw.store(pack(first, 0), Relaxed);
    }

    /// Pops a cluster off the `locked` list; the caller holds the mutex.
    fn pop_locked(&self, _held: &MutexGuard<'_, ()>) -> Option<NonNull<Item>> {
        // Relaxed: the mutex orders every access to the list.
        let first = NonNull::new(unpack(self.dw.load(Relaxed)).0)?;
        options::race_window();
        // SAFETY: we hold the mutex, so `first` is in the list and nobody
        // can take it (or free it) while we read its `next`.
        let next = unsafe { Item::next(first.as_ptr()) };
        self.dw.store(pack(next, 0), Relaxed);
        Some(first)
    }

    /// Detaches the whole `locked` list; the caller holds the mutex.
    fn detach_locked(&self, _held: &MutexGuard<'_, ()>) -> *mut Item {
        // Relaxed: the mutex orders every access to the list.
        unpack(self.dw.swap(0, Relaxed)).0
    }

    /// Whether the `locked` list looks empty, read without the mutex: a
    /// peek, which the pop checks again under it.
    fn looks_empty(&self) -> bool {
        // Relaxed: only a hint.
        unpack(self.dw.load(Relaxed)).0.is_null()
    }
}

/// Takes `first`'s cluster out of the bucket's count.
///
/// # Safety
/// `first` left the bucket's list: its cluster is ours.
unsafe fn taken(bucket: &Bucket, first: NonNull<Item>) -> Cluster {
    // SAFETY: forwarded.
    let cluster = unsafe { Cluster::owned(first) };
    // Relaxed: a statistic, exact once operations settle.
    bucket.objects.fetch_sub(cluster.len as isize, Relaxed);
    cluster
}

impl SharedCache {
    /// Puts a cluster into a legacy variant's list, starting at bucket
    /// `home` (see the module for where `locked` goes when it is held).
    ///
    /// Counter: `objects` of the bucket it lands in grows by `cluster.len`.
    pub(crate) fn put_legacy(&self, mode: SharedMode, home: usize, cluster: Cluster) {
        count(Event::Put);
        let first = cluster.first.as_ptr();
        let bucket = match mode {
            SharedMode::Locked => {
                let mut b = home;
                loop {
                    let bucket = self.bucket(b);
                    touch(&bucket.last);
                    if let Ok(held) = bucket.legacy_locks.mutex.try_lock() {
                        bucket.legacy.push_locked(first, &held);
                        break bucket;
                    }
                    count(Event::Hop);
                    b += 1;
                    if b - home == self.used().len() {
                        let bucket = self.bucket(home);
                        touch(&bucket.last);
                        let held = bucket.legacy_locks.lock();
                        bucket.legacy.push_locked(first, &held);
                        break bucket;
                    }
                }
            }
            _ => {
                let bucket = self.bucket(home);
                touch(&bucket.last);
                bucket.legacy.push_dw(first);
                bucket
            }
        };
        // Relaxed: a statistic, exact once operations settle.
        bucket.objects.fetch_add(cluster.len as isize, Relaxed);
    }

    /// Takes a cluster from a legacy variant's list, starting at bucket
    /// `home`, to hand its objects to a thread; `None` when every bucket
    /// was seen empty.
    ///
    /// Counter: `objects` of the bucket it came from drops by its length.
    /// Lock: `rwlock` read-holds the bucket's flush lock, `locked` holds its
    /// mutex, `dwcas` takes none (and may read a freed object: see the
    /// module).
    pub(crate) fn take_legacy(&self, mode: SharedMode, home: usize) -> Option<Cluster> {
        count(Event::Take);
        for i in 0..self.used().len() {
            let bucket = self.bucket(home + i);
            touch(&bucket.last);
            let head = &bucket.legacy;
            let first = match mode {
                SharedMode::Rwlock => {
                    let _read = bucket.legacy_locks.flush_lock.read();
                    head.pop_dw()
                }
                SharedMode::Locked => {
                    // A peek to skip an empty list without locking, as
                    // `xchg` skips an empty head.
                    if head.looks_empty() {
                        None
                    } else {
                        head.pop_locked(&bucket.legacy_locks.lock())
                    }
                }
                _ => head.pop_dw(),
            };
            if let Some(first) = first {
                count(Event::Hit);
                if i != 0 {
                    count(Event::Far);
                }
                // SAFETY: the pop detached `first`: its cluster is ours.
                return Some(unsafe { taken(bucket, first) });
            }
        }
        None
    }

    /// Write-locks every bucket's flush lock in use, in bucket order (pops
    /// hold one read lock at a time, so the order cannot deadlock).
    fn write_all(&self) -> [Option<WriteGuard<'_>>; BUCKETS] {
        let used = self.used();
        // `from_fn` calls in index order: the locks are taken in order.
        core::array::from_fn(|b| {
            used.get(b)
                .map(|bucket| bucket.legacy_locks.flush_lock.write())
        })
    }

    /// Takes a cluster to return its objects to the OS: like
    /// [`take_legacy`](Self::take_legacy) from bucket 0, but `rwlock`
    /// write-holds every bucket's flush lock, so no pop can be reading the
    /// cluster's `next` when it is freed (see the module).
    pub(crate) fn take_legacy_to_release(&self, mode: SharedMode) -> Option<Cluster> {
        if mode != SharedMode::Rwlock {
            return self.take_legacy(mode, 0);
        }
        let _write = self.write_all();
        for bucket in self.used() {
            let first = bucket.legacy.pop_dw();
            if let Some(first) = first {
                // SAFETY: the pop detached `first`: its cluster is ours.
                return Some(unsafe { taken(bucket, first) });
            }
        }
        None
    }

    /// Detaches every bucket's list and hands each cluster to `f`.
    ///
    /// Counter: each bucket's `objects` drops by what was taken from it.
    /// Lock: `rwlock` write-holds every bucket's flush lock while detaching
    /// (see the module), `locked` holds each bucket's mutex in turn.
    pub(crate) fn take_all_legacy(&self, mode: SharedMode, mut f: impl FnMut(Cluster)) {
        let lists: [*mut Item; BUCKETS] = {
            let _write = (mode == SharedMode::Rwlock).then(|| self.write_all());
            let used = self.used();
            core::array::from_fn(|b| match used.get(b) {
                None => ptr::null_mut(),
                Some(bucket) if mode == SharedMode::Locked => {
                    bucket.legacy.detach_locked(&bucket.legacy_locks.lock())
                }
                Some(bucket) => bucket.legacy.detach_dw(),
            })
        };
        // The lists are detached: a pop that starts now cannot reach them,
        // and under `rwlock` none that started before is still reading.
        for (bucket, list) in self.used().iter().zip(lists) {
            let mut cur = list;
            while let Some(c) = NonNull::new(cur) {
                // SAFETY: the list left the bucket: every cluster in it is
                // ours.
                let cluster = unsafe {
                    cur = Item::next(c.as_ptr());
                    taken(bucket, c)
                };
                f(cluster);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::shared_cache::tests::{collect, free_all, make_cluster};
    use std::sync::Arc;

    /// Every mode, over one bucket and over all of them, passes clusters
    /// between threads (each with its own home) without losing or
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
            for buckets in [1, BUCKETS] {
                let cache = Arc::new(SharedCache::with_buckets(buckets));
                let mut objs = Vec::new();
                for i in 0..4 {
                    cache.put_legacy(mode, i, make_cluster(&mut objs, 1 + i));
                }
                let rounds = if cfg!(miri) { 20 } else { 5_000 };
                let threads: Vec<_> = (0..3)
                    .map(|t| {
                        let cache = Arc::clone(&cache);
                        std::thread::spawn(move || {
                            for _ in 0..rounds {
                                let c = if t == 0 {
                                    cache.take_legacy_to_release(mode)
                                } else {
                                    cache.take_legacy(mode, t)
                                };
                                if let Some(c) = c {
                                    cache.put_legacy(mode, t, c);
                                }
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
                let mut got = Vec::new();
                cache.take_all_legacy(mode, |c| collect(c, &mut got));
                got.sort();
                let mut want = objs.clone();
                want.sort();
                assert_eq!(got, want, "{mode:?} over {buckets} buckets");
                assert_eq!(cache.objects(), 0);
                assert!(cache.take_legacy(mode, 0).is_none());
                free_all(&objs);
            }
        }
    }

    /// A take finds what was put on any bucket in use, and puts land on the
    /// home bucket modulo the buckets in use.
    #[test]
    fn every_mode_takes_from_other_buckets() {
        for mode in [SharedMode::Dwcas, SharedMode::Rwlock, SharedMode::Locked] {
            for buckets in [1, 2, BUCKETS] {
                let cache = SharedCache::with_buckets(buckets);
                let mut objs = Vec::new();
                for home in 0..BUCKETS {
                    cache.put_legacy(mode, home, make_cluster(&mut objs, 2));
                }
                for (b, bucket) in cache.used().iter().enumerate() {
                    let want = (BUCKETS / buckets * 2) as isize;
                    assert_eq!(bucket.objects.load(Relaxed), want, "{mode:?} bucket {b}");
                }
                let mut got = Vec::new();
                while let Some(c) = cache.take_legacy(mode, 3) {
                    collect(c, &mut got);
                }
                assert_eq!(got.len(), objs.len(), "{mode:?} over {buckets} buckets");
                assert_eq!(cache.objects(), 0);
                free_all(&objs);
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::FlushLock;
    use crate::shared_cache::loom_tests::model_bounded;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    /// Two threads take `lock` (a write lock in the main thread, the lock
    /// `spawned_reads` says in the other) and each adds one to a cell under
    /// a write lock or reads it under a read lock: loom's cell reports any
    /// two accesses that overlap. Afterwards the cell holds what the
    /// writers added. Every interleaving (the bound of the shared cache's
    /// two-thread models).
    fn check(spawned_reads: bool) {
        model_bounded(30, move || {
            let lock = Arc::new(FlushLock::new());
            let data = Arc::new(UnsafeCell::new(0usize));
            let other = {
                let (lock, data) = (Arc::clone(&lock), Arc::clone(&data));
                thread::spawn(move || {
                    if spawned_reads {
                        let _r = lock.read();
                        // SAFETY: a read lock excludes writers.
                        data.with(|p| unsafe { *p });
                    } else {
                        let _w = lock.write();
                        // SAFETY: a write lock excludes every other holder.
                        data.with_mut(|p| unsafe { *p += 1 });
                    }
                })
            };
            {
                let _w = lock.write();
                // SAFETY: as in the spawned writer.
                data.with_mut(|p| unsafe { *p += 1 });
            }
            other.join().unwrap();
            let _r = lock.read();
            // SAFETY: as in the spawned reader.
            let want = if spawned_reads { 1 } else { 2 };
            assert_eq!(data.with(|p| unsafe { *p }), want);
        });
    }

    /// The `rwlock` variant's lock: a writer excludes a reader.
    #[test]
    fn loom_flush_lock_writer_excludes_reader() {
        check(true);
    }

    /// ... and another writer.
    #[test]
    fn loom_flush_lock_writer_excludes_writer() {
        check(false);
    }
}
