//! The process-wide shared cache of one pool: a few buckets, each a
//! self-locked list of clusters.
//!
//! A bucket's head is NULL, a pointer to the first cluster, or [`BUSY`].
//! Taking a cluster locks the head with one `swap(BUSY)`, reads the first
//! cluster's `next` while nobody else can take that cluster, and stores
//! `next` back, which unlocks. This is the fix of
//! `shared/seeds/000_b08d1a0abe02ac16.txt`: the lockless pop it replaces read
//! `head->next` from an object that another thread could have popped and
//! already returned to the OS. Pushing needs no lock: a CAS from a non-BUSY
//! head can never overwrite BUSY, and pushing onto whatever the head is at the
//! moment of the CAS is ABA-safe.
//!
//! A cluster is up to [`CLUSTER`] objects of the pool chained through `down`;
//! clusters are chained through `next`. One atomic operation moves a whole
//! cluster. Objects in the shared cache hold an [`Item`] at their start.
//!
//! A cache uses the first 1, 2 or 4 of its buckets (`POOL_SHARED_BUCKETS`).
//! Each bucket also carries the heads of the legacy variants
//! (`legacy`), so that every variant runs over the same buckets and
//! clusters and differs from this one only in how a head is locked.

mod legacy;

use crate::counters::{count, touch, Event, LastCpu};
use crate::links;
use crate::sync::{peek, unlock, AtomicIsize, AtomicPtr, Backoff};
use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use legacy::{LegacyHead, LegacyLocks};

/// Buckets per pool, at most (`POOL_SHARED_BUCKETS` may use fewer). Threads
/// start at a bucket of their own, so that two threads rarely meet on one
/// head. Two under loom: enough for every path (a busy bucket sends a putter
/// to the next one), small enough to explore.
#[cfg(not(loom))]
pub(crate) const BUCKETS: usize = crate::options::MAX_SHARED_BUCKETS;
#[cfg(loom)]
pub(crate) const BUCKETS: usize = 2;

/// Objects moved by one atomic operation.
pub(crate) const CLUSTER: usize = 8;

/// The header an object carries while it sits in the shared cache. Both
/// links are stored protected (see `links`): read and write them through
/// [`Item::next`], [`Item::down`] and their setters.
#[repr(C)]
pub(crate) struct Item {
    /// Next cluster in the bucket (meaningful on a cluster's first object).
    pub(crate) next: *mut Item,
    /// Next object of the same cluster.
    pub(crate) down: *mut Item,
}

impl Item {
    /// The next cluster after `item`'s (its `next`, protected: `links`).
    ///
    /// # Safety
    /// `item` is an object of a cluster the caller may read.
    #[inline]
    pub(crate) unsafe fn next(item: *mut Item) -> *mut Item {
        // SAFETY: per the contract.
        unsafe { links::reveal(&raw const (*item).next, (*item).next) }
    }

    /// Sets `item`'s `next` to `to`, protected.
    ///
    /// # Safety
    /// The caller owns `item`.
    #[inline]
    pub(crate) unsafe fn set_next(item: *mut Item, to: *mut Item) {
        // SAFETY: per the contract.
        unsafe { (*item).next = links::protect(&raw const (*item).next, to) };
    }

    /// The next object of `item`'s cluster (its `down`, protected).
    ///
    /// # Safety
    /// The caller owns `item`'s cluster.
    #[inline]
    pub(crate) unsafe fn down(item: *mut Item) -> *mut Item {
        // SAFETY: per the contract.
        unsafe { links::reveal(&raw const (*item).down, (*item).down) }
    }

    /// Sets `item`'s `down` to `to`, protected.
    ///
    /// # Safety
    /// The caller owns `item`.
    #[inline]
    pub(crate) unsafe fn set_down(item: *mut Item, to: *mut Item) {
        // SAFETY: per the contract.
        unsafe { (*item).down = links::protect(&raw const (*item).down, to) };
    }
}

/// The head value that says "locked": no object lives at address 1.
fn busy() -> *mut Item {
    ptr::without_provenance_mut(1)
}

/// A chain of objects linked through `down`, owned by whoever holds it.
pub(crate) struct Cluster {
    pub(crate) first: NonNull<Item>,
    pub(crate) len: usize,
}

impl Cluster {
    /// The cluster that starts at `first`, its length counted.
    ///
    /// # Safety
    /// The caller owns every object of the cluster.
    pub(crate) unsafe fn owned(first: NonNull<Item>) -> Cluster {
        // SAFETY: forwarded from the caller.
        let len = unsafe { cluster_len(first) };
        Cluster { first, len }
    }

    /// Visits and detaches each object of the cluster.
    ///
    /// # Safety
    /// The caller owns every object of the cluster.
    pub(crate) unsafe fn for_each(self, mut f: impl FnMut(NonNull<Item>)) {
        let mut cur = self.first.as_ptr();
        while let Some(item) = NonNull::new(cur) {
            // SAFETY: the caller owns the cluster, so `item` is a live object
            // that nobody else reads or writes.
            cur = unsafe { Item::down(item.as_ptr()) };
            f(item);
        }
    }
}

// One cache line per bucket, so that threads on different buckets do not
// write the same line (each thread starts at a bucket of its own).
#[repr(align(64))]
pub(crate) struct Bucket {
    /// NULL, the first cluster, or BUSY while a taker holds the lock.
    head: AtomicPtr<Item>,
    /// Objects in this bucket's list (of whichever variant is in use).
    /// Updated next to the list operation, so exact only when no operation
    /// is in flight; hence signed.
    pub(crate) objects: AtomicIsize,
    /// Objects of the pool obtained from the backing allocator and not yet
    /// returned, counted on this bucket to spread the writes.
    allocated: AtomicIsize,
    /// The list, while the fork handlers hold the head (BUSY) from prepare
    /// to the parent or child handler. Only the forking thread touches it:
    /// the handlers, and inside its fork window its own puts and takes
    /// (see `crate::fork` and the fork window in `sync`).
    fork_list: UnsafeCell<*mut Item>,
    /// The head of a legacy variant, when one is selected, and its locks
    /// (in the same cache line, as this bucket's own head would be).
    pub(crate) legacy: LegacyHead,
    pub(crate) legacy_locks: LegacyLocks,
    /// The cache's buckets in use minus one (their count is a power of
    /// two), the same in each of its buckets, written once before the cache
    /// is shared: a thread reads it from the bucket it starts at, so that
    /// it reads no line that another bucket's threads write.
    mask: u32,
    /// Counting builds only: the CPU that used this bucket last.
    pub(crate) last: LastCpu,
}

#[cfg(not(any(loom, pools_counters)))]
const _: () = assert!(core::mem::size_of::<Bucket>() == 64);

impl Bucket {
    /// An empty, unlocked bucket with no objects counted, of a cache over
    /// `mask + 1` buckets.
    fn empty(mask: usize) -> Bucket {
        Bucket {
            head: AtomicPtr::new(ptr::null_mut()),
            objects: AtomicIsize::new(0),
            allocated: AtomicIsize::new(0),
            fork_list: UnsafeCell::new(ptr::null_mut()),
            legacy: LegacyHead::new(),
            legacy_locks: LegacyLocks::new(),
            mask: mask as u32,
            last: LastCpu::new(),
        }
    }
}

// SAFETY: `fork_list` is touched only by the forking thread while the
// bucket's head is held for it (see the field); the rest is atomics.
unsafe impl Sync for Bucket {}
// SAFETY: the fork list points to objects of the pool, not tied to a
// thread (as the atomic head's values are).
unsafe impl Send for Bucket {}

/// Where the list of a bucket locked by [`SharedCache::lock`] is: behind its
/// head, or (inside the fork window) in its fork list.
enum Locked<'a> {
    Head(&'a AtomicPtr<Item>),
    ForkList(&'a UnsafeCell<*mut Item>),
}

impl Locked<'_> {
    /// Stores the new first cluster, which unlocks the head.
    fn unlock(self, first: *mut Item) {
        match self {
            Locked::Head(head) => unlock(head, first),
            // SAFETY: inside the fork window the forking thread alone
            // touches the fork list (see `Bucket::fork_list`).
            Locked::ForkList(list) => unsafe { *list.get() = first },
        }
    }
}

/// The shared cache of one pool.
pub(crate) struct SharedCache {
    buckets: [Bucket; BUCKETS],
}

impl SharedCache {
    /// Buckets a new cache uses: `POOL_SHARED_BUCKETS` (all under loom).
    fn buckets_in_use() -> usize {
        if cfg!(loom) {
            BUCKETS
        } else {
            crate::options::shared_buckets()
        }
    }

    /// A cache over `POOL_SHARED_BUCKETS` buckets (all of them under loom),
    /// for the tests (pool heads are written in place: [`SharedCache::init`]).
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::with_buckets(Self::buckets_in_use())
    }

    /// A cache over its first `n` buckets (a power of two up to `BUCKETS`).
    #[cfg(test)]
    pub(crate) fn with_buckets(n: usize) -> Self {
        assert!(n.is_power_of_two() && n <= BUCKETS);
        SharedCache {
            buckets: core::array::from_fn(|_| Bucket::empty(n - 1)),
        }
    }

    /// Writes [`SharedCache::new`]'s value into `dst`, bucket by bucket: a
    /// pool head is built where it lives (`Pool::init`), not on the stack
    /// and copied.
    ///
    /// # Safety
    /// `dst` is valid for writes and aligned; its old value is not dropped.
    pub(crate) unsafe fn init(dst: *mut SharedCache) {
        let n = Self::buckets_in_use();
        assert!(n.is_power_of_two() && n <= BUCKETS);
        for i in 0..BUCKETS {
            // SAFETY: `dst` is valid for writes (caller); a place inside it.
            unsafe { (&raw mut (*dst).buckets[i]).write(Bucket::empty(n - 1)) };
        }
    }

    /// The buckets in use minus one, read from the bucket `b` starts at.
    #[inline]
    fn mask_at(&self, b: usize) -> usize {
        self.buckets[b & (BUCKETS - 1)].mask as usize
    }

    /// Bucket `b` modulo the buckets in use.
    #[inline]
    pub(crate) fn bucket(&self, b: usize) -> &Bucket {
        // `& (BUCKETS - 1)` changes nothing (`mask < BUCKETS`, both powers
        // of two less one) but lets the compiler drop the bounds check.
        &self.buckets[b & self.mask_at(b) & (BUCKETS - 1)]
    }

    /// The buckets in use.
    pub(crate) fn used(&self) -> &[Bucket] {
        &self.buckets[..=self.mask_at(0)]
    }

    /// Puts a cluster into the shared cache, starting at bucket `home`.
    ///
    /// Counter: `objects` of the bucket it lands in grows by `cluster.len`.
    /// Lock: none; a CAS on a head that is not BUSY.
    pub(crate) fn put(&self, home: usize, cluster: Cluster) {
        let first = cluster.first.as_ptr();
        count(Event::Put);
        let backoff = Backoff::new();
        let mut b = home;
        loop {
            let bucket = self.bucket(b);
            touch(&bucket.last);
            // Relaxed: the head is only stored into `first.next`, never read
            // through, and the CAS below re-checks it.
            let mut head = peek(&bucket.head);
            while head != busy() {
                // SAFETY: we own `first` until the CAS publishes it.
                unsafe { Item::set_next(first, head) };
                // Release on success: a taker's Acquire swap must see
                // `first.next` and everything written to the objects before.
                // Relaxed on failure: the value is only compared again.
                // Strong CAS: on x86 it is the same instruction, and a weak
                // one may fail spuriously forever under the model checker.
                match bucket.head.compare_exchange(head, first, Release, Relaxed) {
                    Ok(_) => {
                        // Relaxed: a statistic, exact once operations settle.
                        bucket.objects.fetch_add(cluster.len as isize, Relaxed);
                        return;
                    }
                    Err(now) => {
                        count(Event::Retry);
                        head = now;
                    }
                }
            }
            if crate::sync::inside_window() {
                // Held by the fork handlers for this thread: onto the list
                // they keep.
                // SAFETY: inside the window only this thread touches the
                // fork list (see `Bucket::fork_list`); `first` is ours.
                unsafe {
                    Item::set_next(first, *bucket.fork_list.get());
                    *bucket.fork_list.get() = first;
                }
                bucket.objects.fetch_add(cluster.len as isize, Relaxed);
                return;
            }
            // Locked by a taker: try the next bucket, pausing after a round.
            count(Event::Hop);
            b += 1;
            if (b ^ home) & self.mask_at(home) == 0 {
                backoff.snooze();
            }
        }
    }

    /// Takes one cluster, starting at bucket `home`, or `None` when every
    /// bucket was seen empty.
    ///
    /// Counter: `objects` of the bucket it came from drops by its length.
    /// Lock: the bucket's head, held for one load and one store.
    pub(crate) fn take(&self, home: usize) -> Option<Cluster> {
        count(Event::Take);
        // A half-open range: `0..=mask` costs more per step.
        for i in 0..self.mask_at(home) + 1 {
            let bucket = self.bucket(home + i);
            touch(&bucket.last);
            if let Some((first, locked)) = Self::lock(bucket) {
                count(Event::Hit);
                if i != 0 {
                    count(Event::Far);
                }
                crate::options::race_window();
                // SAFETY: we hold the bucket's lock, so nobody else can take
                // `first` (and return it to the OS) while we read its `next`.
                let next = unsafe { Item::next(first.as_ptr()) };
                // Release: unlocks, and hands the next taker what the putters
                // published (it acquired their writes through our swap).
                locked.unlock(next);
                // SAFETY: `first` left the list: its cluster is ours.
                let len = unsafe { cluster_len(first) };
                bucket.objects.fetch_sub(len as isize, Relaxed);
                return Some(Cluster { first, len });
            }
        }
        None
    }

    /// Takes every cluster of every bucket, leaving the cache empty, and
    /// hands each to `f`.
    ///
    /// Counter: each bucket's `objects` drops by what was taken from it.
    /// Lock: each head in turn, held for one swap and one store.
    pub(crate) fn take_all(&self, mut f: impl FnMut(Cluster)) {
        for bucket in self.used() {
            let Some((first, locked)) = Self::lock(bucket) else {
                continue;
            };
            // Release: unlocks; the list is now ours alone.
            locked.unlock(ptr::null_mut());
            let mut taken = 0;
            let mut cur = first.as_ptr();
            while let Some(c) = NonNull::new(cur) {
                // SAFETY: the whole list left the bucket while we held the
                // lock, so every cluster in it is ours.
                unsafe {
                    cur = Item::next(c.as_ptr());
                    let len = cluster_len(c);
                    taken += len;
                    f(Cluster { first: c, len });
                }
            }
            bucket.objects.fetch_sub(taken as isize, Relaxed);
        }
    }

    /// Locks `bucket`'s head and returns its first cluster, still linked;
    /// the caller must unlock by storing a new head. `None` (and no lock
    /// held) when the bucket is empty. Inside the fork window, a head held
    /// by the fork handlers gives its fork list instead.
    fn lock(bucket: &Bucket) -> Option<(NonNull<Item>, Locked<'_>)> {
        let backoff = Backoff::new();
        loop {
            // Relaxed: a peek to avoid writing to an empty or locked head.
            let head = peek(&bucket.head);
            if head.is_null() {
                return None;
            }
            if head == busy() {
                count(Event::Wait);
                if crate::sync::inside_window() {
                    // SAFETY: as in `put`.
                    let first = NonNull::new(unsafe { *bucket.fork_list.get() })?;
                    return Some((first, Locked::ForkList(&bucket.fork_list)));
                }
                backoff.snooze();
                continue;
            }
            // Acquire: pairs with the putters' Release CAS and the previous
            // taker's Release store, so the objects' contents and `next`
            // links are visible to us once we own the head.
            let head = bucket.head.swap(busy(), Acquire);
            if head == busy() {
                count(Event::Wait);
                backoff.snooze();
                continue;
            }
            match NonNull::new(head) {
                Some(first) => return Some((first, Locked::Head(&bucket.head))),
                None => {
                    // Emptied between our peek and the swap: unlock as found.
                    // Release: we publish nothing, but it keeps the head a
                    // plain lock hand-off for the next taker.
                    unlock(&bucket.head, ptr::null_mut());
                    return None;
                }
            }
        }
    }

    /// Objects in the shared cache now (exact at quiescence).
    pub(crate) fn objects(&self) -> usize {
        let n: isize = self.buckets.iter().map(|b| b.objects.load(Relaxed)).sum();
        n.max(0) as usize
    }

    /// Objects of the pool taken from the backing allocator and not returned.
    pub(crate) fn allocated(&self) -> usize {
        let n: isize = self.buckets.iter().map(|b| b.allocated.load(Relaxed)).sum();
        n.max(0) as usize
    }

    /// The objects counted allocated on bucket `home` (see
    /// [`SharedCache::count_allocated`]): of the pool's objects, about those
    /// that the threads of this bucket took; negative when others returned
    /// more of them here.
    pub(crate) fn allocated_on(&self, home: usize) -> isize {
        // Relaxed: a statistic, as in `count_allocated`.
        self.bucket(home).allocated.load(Relaxed)
    }

    /// Records `n` objects obtained from (positive) or returned to
    /// (negative) the backing allocator, on bucket `home`.
    pub(crate) fn count_allocated(&self, home: usize, n: isize) {
        // Relaxed: a statistic; readers sum the buckets and accept a value
        // that lags operations still in flight.
        self.bucket(home).allocated.fetch_add(n, Relaxed);
    }
}

// ---- fork ------------------------------------------------------------------

impl SharedCache {
    /// Locks every bucket's head, empty or not, for `fork()` (the atfork
    /// prepare handler): afterwards no taker is between its swap and its
    /// unlock, so the child inherits whole lists. Each list waits in its
    /// bucket's fork list for [`SharedCache::unlock_after_fork`].
    pub(crate) fn lock_for_fork(&self) {
        for bucket in &self.buckets {
            let backoff = Backoff::new();
            loop {
                // Acquire: as in `lock`, we take over the list.
                let head = bucket.head.swap(busy(), Acquire);
                if head != busy() {
                    // SAFETY: we hold the head: only we touch the fork list.
                    unsafe { *bucket.fork_list.get() = head };
                    break;
                }
                backoff.snooze();
            }
        }
    }

    /// Puts back the lists [`SharedCache::lock_for_fork`] took (in the
    /// parent and in the child). A head that is not held was not locked
    /// (its pool was created inside the fork window) and stays as it is.
    pub(crate) fn unlock_after_fork(&self) {
        for bucket in &self.buckets {
            if peek(&bucket.head) == busy() {
                // SAFETY: the head is held for this thread: only it touches
                // the fork list.
                let list =
                    unsafe { core::mem::replace(&mut *bucket.fork_list.get(), ptr::null_mut()) };
                // Release: as in `take`, hands the list to the next taker.
                unlock(&bucket.head, list);
            }
        }
    }
}

/// Length of the cluster starting at `first`.
///
/// # Safety
/// The caller owns the cluster.
unsafe fn cluster_len(first: NonNull<Item>) -> usize {
    let mut n = 0;
    let mut cur = first.as_ptr();
    while !cur.is_null() {
        n += 1;
        // SAFETY: the caller owns every object of the cluster.
        cur = unsafe { Item::down(cur) };
    }
    n
}

#[cfg(all(test, not(loom)))]
pub(crate) mod tests;

/// Model checks of this module's real code with loom:
/// `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`.
#[cfg(all(test, loom))]
mod loom_tests;
