//! One pool's entry in a thread's table (a stack of pointers with its
//! bounds, see the parent module) and the age marks kept in front of its
//! slots.

use crate::head::Pool;
use crate::options;
use core::cell::Cell;
use core::mem::size_of;
use core::sync::atomic::Ordering::{Acquire, Relaxed};
use core::sync::atomic::{AtomicPtr, AtomicU64};

/// One pool's free objects in one thread: a stack of pointers (module docs).
/// All-zero is "unbound". Fields the hit path reads come first.
#[repr(C, align(64))]
pub(crate) struct Entry {
    /// The key of the pool this entry serves, or 0 while unbound. Written by
    /// the owner; read by statistics (Relaxed: a plain load on x86-64).
    pub(super) key: AtomicU64,
    /// The next free slot: objects are `[bottom, top)`. Written by the
    /// owner; read by statistics.
    pub(super) top: AtomicPtr<*mut u8>,
    /// The low water, `bottom <= low <= top`: the bound of allocations.
    pub(super) low: Cell<*mut *mut u8>,
    /// The end of the grant, `top <= limit <= end`: the bound of frees.
    pub(super) limit: Cell<*mut *mut u8>,
    /// The oldest object. Written by the owner; read by statistics.
    pub(super) bottom: AtomicPtr<*mut u8>,
    /// The array.
    pub(super) start: Cell<*mut *mut u8>,
    pub(super) end: Cell<*mut *mut u8>,
    /// The pool served while bound. Written by the owner; read by
    /// statistics (which compare it before trusting the counts).
    pub(super) pool: AtomicPtr<Pool>,
}

const _: () = assert!(size_of::<Entry>() == 64);

/// The key of an entry of `pool` that is closed to frees (see
/// `ThreadCache::bound_entry`): no pool's stamp, so no hit matches it.
pub(super) fn closed(pool: &Pool) -> u64 {
    pool.key ^ 2
}

/// The key of an entry whose next free must check the budget again
/// (after `pool_set_cache_size`): no hit matches it either.
pub(super) fn recheck(pool: &Pool) -> u64 {
    pool.key ^ 4
}

impl Entry {
    /// `key`, read by its owner thread, the only writer: a plain load,
    /// which the compiler may fold into the comparison.
    #[inline(always)]
    pub(super) fn own_key(&self) -> u64 {
        // SAFETY: only this thread writes `key`; other threads only read it,
        // so this non-atomic read races with no write.
        unsafe { *self.key.as_ptr() }
    }

    /// `top`, read by its owner thread (see `own_key`).
    #[inline(always)]
    pub(super) fn own_top(&self) -> *mut *mut u8 {
        // SAFETY: as in `own_key`.
        unsafe { *self.top.as_ptr() }
    }

    /// Objects cached, read by the owner or, as a statistic that may lag,
    /// by another thread: only the two atomic bounds are read, `bottom`
    /// first and again after `top`. Whoever moves `bottom` within the
    /// array (`compact`, evictions, `unbind`) has set `top` first, and
    /// publishes it with the Release store of `bottom`: a reader that
    /// acquires the new `bottom` sees a `top` at least as new, so it may
    /// count fewer objects while a move is under way, never more. A move
    /// to another array (`grow`) stores [`MOVING`] in `bottom` (Release),
    /// then the new `top` (Release), then the new `bottom`, then a Release
    /// fence: a reader whose `top` is the new one, or one pushed after it
    /// (Relaxed, but after the fence), synchronised with the move, so its
    /// second load of `bottom` finds `MOVING` or the new value, and a first
    /// load of the old one does not match it; a `bottom` of `MOVING` counts
    /// nothing. Binding (`bound_entry`) ends with the same fence, and a
    /// null `bottom` (the unbound entry, still seen by the reader) counts
    /// nothing.
    pub(super) fn objects(&self) -> usize {
        let bottom = self.bottom.load(Acquire);
        // Acquire: pairs with `grow`'s Release store of the new top, and
        // with the fences that end `grow` and binding for later tops.
        let top = self.top.load(Acquire);
        // Relaxed: ordered after the Acquire load of `top` (see above).
        if self.bottom.load(Relaxed) != bottom || bottom.is_null() {
            return 0;
        }
        (top as usize).saturating_sub(bottom as usize) / size_of::<*mut u8>()
    }

    /// The pool this entry serves, while bound.
    pub(super) fn bound_pool(&self) -> Option<&'static Pool> {
        // SAFETY: a bound entry names a pool head, and heads are never
        // unmapped (nor recycled while an entry is bound to them).
        unsafe { self.pool.load(Relaxed).as_ref() }
    }
}

/// `bottom` while the stack moves to another array (`grow`): above every
/// `top`, so that a reader counts nothing. Never dereferenced.
pub(super) const MOVING: *mut *mut u8 = core::ptr::without_provenance_mut(usize::MAX);

/// Bytes of an entry's first block: its marks and room for one of the
/// pool's clusters (`cluster_len`, at most [`MAX_CLUSTER`](super::MAX_CLUSTER)
/// objects), a power of two, at most its full size ([`array_block`]). Such
/// blocks share pages of the metadata arena (four of 1 KiB for the smallest
/// objects, eight of 512 bytes from 128-byte objects up), so the first use
/// of a pool costs no mapping and no page of its own; the array grows
/// fourfold when full (`grow`), up to the full size.
pub(super) fn first_block(pool: &Pool) -> usize {
    let one_cluster = size_of::<Marks>() + super::cluster_len(pool) * size_of::<*mut u8>();
    array_block(pool)
        .min(one_cluster.next_power_of_two())
        .min(FIRST_BLOCK)
}

const FIRST_BLOCK: usize = 1024;
const _: () =
    assert!((FIRST_BLOCK - size_of::<Marks>()) / size_of::<*mut u8>() >= super::MAX_CLUSTER);

/// Bytes of an entry's full block: its marks, then room for twice the most
/// objects the budget lets it hold (so that the stack can slide).
pub(super) fn array_block(pool: &Pool) -> usize {
    let slots = 2 * options::cache_size() / pool.obj_size;
    (size_of::<Marks>() + slots * size_of::<*mut u8>()).next_power_of_two()
}

/// Most age marks per entry.
pub(super) const MARKS: usize = 15;

/// The ages of an entry's objects, kept in front of its slots: mark `k`
/// says that the objects from slot `slot` (up to the next mark) were pushed
/// no earlier than the thread's slow event `tick`. Ticks count the slow
/// events (grants and evictions), so ages are known to within a grant step
/// of the thread (module docs). Only the owner reads or writes them.
#[repr(C)]
pub(super) struct Marks {
    pub(super) n: usize,
    pub(super) mark: [(usize, u64); MARKS],
}

impl Marks {
    pub(super) const EMPTY: Marks = Marks {
        n: 0,
        mark: [(0, 0); MARKS],
    };

    /// Objects pushed from slot `slot` on are no older than `tick`.
    pub(super) fn push(&mut self, slot: usize, tick: u64) {
        if self.n > 0 && self.mark[self.n - 1].0 >= slot {
            // Marks at or past `slot` cover no object: replace them.
            while self.n > 0 && self.mark[self.n - 1].0 >= slot {
                self.n -= 1;
            }
        }
        if self.n == MARKS {
            // Merge the two neighbouring ranges whose ticks are closest,
            // under the older tick: the least age is lost, and objects
            // only ever look older than they are (they leave sooner).
            // (Of equal gaps, the newest: the bottom ages matter most.)
            let k = (1..MARKS)
                .rev()
                .min_by_key(|&k| self.mark[k].1 - self.mark[k - 1].1)
                .expect("MARKS > 1");
            self.mark.copy_within(k + 1..MARKS, k);
            self.n -= 1;
        }
        self.mark[self.n] = (slot, tick);
        self.n += 1;
    }

    /// The slots below `bottom` left: the first range starts there.
    pub(super) fn cut_below(&mut self, bottom: usize) {
        let dead = (1..self.n)
            .take_while(|&k| self.mark[k].0 <= bottom)
            .count();
        self.mark.copy_within(dead..self.n, 0);
        self.n -= dead;
        if self.n > 0 {
            self.mark[0].0 = self.mark[0].0.max(bottom);
        }
    }

    /// Every object from slot `from` on is no older than `tick`.
    pub(super) fn no_older_than(&mut self, from: usize, tick: u64) {
        let covering = (0..self.n).rev().find(|&k| self.mark[k].0 <= from);
        let Some(k) = covering else { return };
        if self.mark[k].1 >= tick {
            return;
        }
        let upper = self.mark[k + 1..self.n]
            .iter()
            .map(|m| (m.0, m.1.max(tick)));
        let mut rest = [(0, 0); MARKS];
        let mut m = 0;
        for x in upper {
            rest[m] = x;
            m += 1;
        }
        self.n = k + 1;
        self.push(from, tick);
        for &(slot, t) in &rest[..m] {
            self.push(slot, t);
        }
    }

    /// Slot indexes move down by `d` (the stack moved to the array start).
    pub(super) fn shift(&mut self, d: usize) {
        for m in &mut self.mark[..self.n] {
            m.0 -= d;
        }
    }

    /// The tick of the oldest object.
    pub(super) fn oldest(&self) -> u64 {
        if self.n == 0 {
            0
        } else {
            self.mark[0].1
        }
    }
}
