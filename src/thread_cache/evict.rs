//! The thread cache's slow side of a free: growing an entry's grant within
//! the byte budget, and when the budget is spent, evicting the oldest
//! objects across the thread's entries to the shared cache, in clusters
//! (see the parent module for the order kept).

use super::{array_block, Entry, Marks, ThreadCache, MOVING};
use crate::head::{mark_discarded, Pool, MIN_OBJECT};
use crate::shared_cache::{Cluster, Item, CLUSTER};
use crate::{meta, options, os};
use core::ptr::{self, NonNull};
use core::sync::atomic::fence;
use core::sync::atomic::Ordering::{Relaxed, Release};

impl ThreadCache {
    /// Makes `top < limit` for `e`, growing its grant by up to a cluster;
    /// a free (`evict`) may evict to get it, a refill may not. Returns
    /// whether there is room.
    pub(super) fn make_room(&self, e: &Entry, pool: &Pool, evict: bool) -> bool {
        let budget = options::cache_size();
        // (Grants above the budget: it shrank since they were made.)
        if e.top.load(Relaxed) < e.limit.get() && self.granted.get() <= budget {
            return true;
        }
        let size = pool.obj_size;
        // A grant is a step of a cluster: when the budget has no room for
        // one, the grants of entries that hold nothing come back, then the
        // oldest objects leave, until the grants (objects and the room the
        // other entries were granted) are down to 7/8 of the budget
        // counting the step, so that the next eviction is at least an
        // eighth of the budget away. Only then, if that was not enough (the
        // other entries' room alone fills the budget), does every entry's
        // unused room come back. Taking it back earlier would make every
        // entry that frees near the budget ask again after a few frees:
        // with many pools freeing in turn, one free in four took this path.
        let len = cluster_len(pool);
        let step = len * size;
        if self.granted.get() + step > budget {
            self.take_back_empty_grants();
        }
        if self.granted.get() + step > budget && evict {
            self.evict_to((budget - budget / 8).saturating_sub(step));
            if self.granted.get() + step > budget {
                self.take_back_unused_grants();
            }
        }
        if self.capacity_left(e) < len {
            // Less than a step of room left past the grant: the stack moves
            // back to the start of its array, or to a larger array, so that
            // grants stay whole steps.
            self.compact(e);
            if self.capacity_left(e) < len && !self.grow(e, pool) && e.limit.get() == e.end.get() {
                // The array is full at its full size (the budget grew
                // since it was sized), or no memory for a larger one: its
                // oldest cluster leaves.
                if !evict {
                    return false;
                }
                self.evict_from(e, len);
                self.compact(e);
            }
        }
        let room = (budget.saturating_sub(self.granted.get()) / size)
            .min(len)
            .min(self.capacity_left(e));
        if room == 0 {
            return false;
        }
        let tick = self.next_tick();
        self.marks(e).push(Self::index(e, e.limit.get()), tick);
        // SAFETY: `room` slots past `limit` are inside the array.
        e.limit.set(unsafe { e.limit.get().add(room) });
        self.granted.set(self.granted.get() + room * size);
        true
    }

    /// Moves `e`'s stack, its marks and its bounds to an array four times
    /// as large, at most the full size ([`array_block`]); `false` if it has
    /// that size already or no memory is left (then nothing changed).
    /// Statistics readers count nothing while it moves (`Entry::objects`).
    fn grow(&self, e: &Entry, pool: &Pool) -> bool {
        let old = size_of::<Marks>() + self.capacity(e) * size_of::<*mut u8>();
        let full = array_block(pool);
        if old.next_power_of_two() >= full {
            return false;
        }
        let block = (old.next_power_of_two() * 4).min(full);
        let Some(array) = meta::obtain_array(block) else {
            return false;
        };
        let cap = (block - size_of::<Marks>()) / size_of::<*mut u8>();
        let start = e.start.get();
        let top = e.top.load(Relaxed);
        // SAFETY: the old block holds the marks, then the slots up to
        // `top`, `used` bytes in all, and the new one is larger; both are
        // ours (the owner's), distinct. Every bound keeps its index in the
        // new array, whose slots are `cap` from its marks on.
        unsafe {
            let used = size_of::<Marks>() + Self::index(e, top) * size_of::<*mut u8>();
            let old_block = start.cast::<u8>().sub(size_of::<Marks>());
            ptr::copy_nonoverlapping(old_block, array.as_ptr(), used);
            let ns = array.as_ptr().add(size_of::<Marks>()).cast::<*mut u8>();
            let at = |p: *mut *mut u8| ns.add(Self::index(e, p));
            let (bottom, low, limit) = (
                at(e.bottom.load(Relaxed)),
                at(e.low.get()),
                at(e.limit.get()),
            );
            // The order a statistics reader relies on (`Entry::objects`);
            // the fence makes every later (Relaxed) store of `top` carry it.
            e.bottom.store(MOVING, Release);
            e.top.store(at(top), Release);
            e.bottom.store(bottom, Release);
            fence(Release);
            e.low.set(low);
            e.limit.set(limit);
            e.start.set(ns);
            e.end.set(ns.add(cap));
            meta::release_array(NonNull::new_unchecked(old_block), old);
        }
        true
    }

    pub(super) fn capacity_left(&self, e: &Entry) -> usize {
        (e.end.get() as usize - e.limit.get() as usize) / size_of::<*mut u8>()
    }

    /// Moves `e`'s stack to the start of its array (bounds move with it).
    pub(super) fn compact(&self, e: &Entry) {
        let (start, bottom) = (e.start.get(), e.bottom.load(Relaxed));
        if bottom == start {
            return;
        }
        let n = e.objects();
        // SAFETY: `[bottom, limit)` lies inside the array; the copy may
        // overlap; every bound moves down by the same distance.
        unsafe {
            let d = bottom.offset_from(start) as usize;
            self.marks(e).shift(d);
            ptr::copy(bottom, start, n);
            e.top.store(start.add(n), Relaxed);
            e.bottom.store(start, Release);
            e.low.set(e.low.get().sub(d));
            e.limit.set(e.limit.get().sub(d));
        }
    }

    /// The grant of every entry that holds no object comes back.
    pub(super) fn take_back_empty_grants(&self) {
        for i in 0..self.nlisted.get() {
            let e = &self.table[self.listed[i].get() as usize];
            if e.bound_pool().is_some() && e.objects() == 0 {
                self.take_back_grant(e);
            }
        }
    }

    /// Every entry's grant shrinks to the objects it holds.
    pub(super) fn take_back_unused_grants(&self) {
        for i in 0..self.nlisted.get() {
            self.take_back_grant(&self.table[self.listed[i].get() as usize]);
        }
    }

    /// `e`'s grant shrinks to the objects it holds.
    fn take_back_grant(&self, e: &Entry) {
        let Some(pool) = e.bound_pool() else { return };
        let top = e.top.load(Relaxed);
        let unused = (e.limit.get() as usize - top as usize) / size_of::<*mut u8>();
        e.limit.set(top);
        self.granted
            .set(self.granted.get() - unused * pool.obj_size);
    }

    /// Evicts oldest-first (module docs) until the thread's grants (what
    /// it caches, and the room granted to entries) are at most `target`
    /// bytes, or nothing is cached; then starts a new low-water period.
    #[cold]
    pub(crate) fn evict_to(&self, target: usize) {
        self.sweep_if_destroyed();
        self.age_by_low_water();
        loop {
            if self.granted.get() <= target {
                break;
            }
            let mut oldest: Option<(&Entry, u64)> = None;
            for i in 0..self.nlisted.get() {
                let e = &self.table[self.listed[i].get() as usize];
                let Some(pool) = e.bound_pool() else { continue };
                if e.objects() == 0 || pool.is_dead() {
                    continue;
                }
                let t = self.marks(e).oldest();
                if oldest.is_none_or(|(_, o)| t < o) {
                    oldest = Some((e, t));
                }
            }
            let Some((e, _)) = oldest else {
                break;
            };
            let pool = e.bound_pool().expect("listed entries are bound");
            self.evict_from(e, cluster_len(pool));
        }
        let tick = self.next_tick();
        self.evicted_at.set(tick);
        for i in 0..self.nlisted.get() {
            let e = &self.table[self.listed[i].get() as usize];
            if e.bound_pool().is_some() {
                let top = e.top.load(Relaxed);
                e.low.set(top);
                // What hits push from here on is no older than now.
                self.marks(e).push(Self::index(e, top), tick);
            }
        }
        self.sweep_if_destroyed();
    }

    /// Objects above an entry's low water were pushed again since the last
    /// eviction (allocations took the stack down to the low water after
    /// it): their marks must not say they are older.
    pub(super) fn age_by_low_water(&self) {
        let since = self.evicted_at.get();
        for i in 0..self.nlisted.get() {
            let e = &self.table[self.listed[i].get() as usize];
            if e.bound_pool().is_some() && e.low.get() < e.top.load(Relaxed) {
                let low = e.low.get().max(e.bottom.load(Relaxed));
                self.marks(e).no_older_than(Self::index(e, low), since);
            }
        }
    }

    /// Takes up to `max` objects from the bottom of `e` and gives them to
    /// the pool's shared cache as one cluster (the pages of large buffers
    /// first to the system: [`discard_pages`]).
    pub(super) fn evict_from(&self, e: &Entry, max: usize) {
        let Some(pool) = e.bound_pool() else { return };
        let n = max.min(e.objects());
        if n == 0 {
            return;
        }
        let bottom = e.bottom.load(Relaxed);
        // SAFETY: `n` objects from `bottom` are cached; the bounds move past
        // them before they leave, so the entry is consistent meanwhile.
        unsafe {
            let nb = bottom.add(n);
            self.marks(e).cut_below(Self::index(e, nb));
            e.bottom.store(nb, Release);
            if e.low.get() < nb {
                e.low.set(nb);
            }
            self.granted.set(self.granted.get() - n * pool.obj_size);
            discard_pages(pool, bottom, n);
            give_back(pool, self.home, bottom, n);
        }
    }
}

/// Gives the system the whole pages of `n` objects of `pool` (pointers
/// from `slots`) past each one's first [`MIN_OBJECT`] bytes (its links and
/// its key, which every free state keeps), when the objects span two pages
/// or more and the pool has at most a cluster of objects in all: buffers (a
/// buffer that grew through several classes, for one) rather than a
/// population that threads ask for again and again, whose pages would be
/// faulted in anew each time (a pool of objects that flow between threads
/// soon has more than a cluster). Objects leave a thread cache when they
/// are its oldest, or at its end; idle in a shared cache, such buffers
/// then cost no memory, and a later allocation finds the pages zero, as
/// fresh memory. Each such object is marked (`head::mark_discarded`): a
/// pool whose marked objects were taken from the shared cache again
/// `KEEP_PAGES_AFTER` times is in use after all, and keeps its pages from
/// then on (`Pool::keeps_pages`), so that a pool of few buffers that the thread
/// cache cannot hold, in use all along, does not fault them in anew at
/// each turn (git's `pack-objects`). Not for a pool with debugging
/// options, which keep what they wrote into free objects, nor for one
/// backed by `malloc` (`Pool::may_discard`), nor under the preload's
/// `POOL_DEBUG=canary`, whose free blocks keep marks up to their end,
/// checked when they are handed out again.
///
/// # Safety
/// The `n` pointers are objects of `pool` that the caller owns.
unsafe fn discard_pages(pool: &Pool, slots: *mut *mut u8, n: usize) {
    let page = os::page();
    if !pool.may_discard()
        || pool.shared.allocated() > CLUSTER
        || pool.keeps_pages()
        || options::canary_in_env()
    {
        return;
    }
    for j in 0..n {
        // SAFETY: `j < n`: one of the caller's pointers, to a free object
        // that the caller owns, whose mark word no free state uses.
        let obj = unsafe {
            let obj = *slots.add(j);
            mark_discarded(obj);
            obj
        };
        let from = obj.map_addr(|a| (a + MIN_OBJECT).next_multiple_of(page));
        let end = obj.addr() + pool.alloc_size;
        if end & !(page - 1) > from.addr() {
            let len = (end & !(page - 1)) - from.addr();
            // SAFETY: `[from, from + len)` lies inside the object, past its
            // first MIN_OBJECT bytes; the caller owns it and nobody reads it
            // until it is handed out again. Not null (past `obj`).
            unsafe { os::discard(NonNull::new_unchecked(from), len) };
        }
    }
}

/// Gives `n` objects whose pointers start at `slots` to `pool`: to its
/// shared cache as clusters while it is live, else to the system.
///
/// # Safety
/// The `n` pointers are objects of `pool` that the caller owns; the slots
/// are not written meanwhile (the entry no longer covers them).
pub(super) unsafe fn give_back(pool: &Pool, home: usize, slots: *mut *mut u8, n: usize) {
    let len = cluster_len(pool);
    let mut i = 0;
    while i < n {
        let m = len.min(n - i);
        let mut first: *mut Item = ptr::null_mut();
        for j in (i..i + m).rev() {
            // SAFETY: per the contract; the object becomes an Item.
            unsafe {
                let it = (*slots.add(j)).cast::<Item>();
                Item::set_down(it, first);
                first = it;
            }
        }
        // SAFETY: `m > 0`, so `first` is an object.
        let first = unsafe { NonNull::new_unchecked(first) };
        pool.release_from_cache(home, Cluster { first, len: m });
        i += m;
    }
}

/// Objects of `pool` moved to the shared cache as one cluster: about
/// `CLUSTER_BYTES` (at most a sixteenth of the budget), and at least
/// `CLUSTER` objects. Small objects move many at a time, so that the shared
/// cache's atomic operations (one per cluster) stay rare per object; large
/// ones move few, so that one eviction does not empty most of the budget.
pub(crate) fn cluster_len(pool: &Pool) -> usize {
    let bytes = CLUSTER_BYTES.min(options::cache_size() / 16);
    (bytes / pool.obj_size).clamp(CLUSTER, MAX_CLUSTER)
}

/// Bytes moved to the shared cache per cluster, for small objects.
pub(super) const CLUSTER_BYTES: usize = 4096;
/// Most objects in one cluster.
pub(super) const MAX_CLUSTER: usize = 64;
