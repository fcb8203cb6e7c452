//! The spans mapped ahead of need, a batch at a time (see [`Reserve`]).

use super::*;

/// Spans mapped ahead, [`FIRST_BATCH`] the first time and [`BATCH`] at a
/// time after: one `mmap` per batch instead of one per span (the batch is
/// placed aligned, see `os::map_aligned`), so that a short process that
/// touches a few dozen size classes (each `git` command under the preload)
/// does not make a system call per class (BENCHMARKS.md has the counts).
/// Spans not handed out yet are only address space: nothing is resident
/// until a span is written.
pub(super) struct Reserve {
    pub(super) lock: SpinLock,
    /// The next span to hand out, how many follow it in the batch, and
    /// whether a batch was asked for before.
    inner: UnsafeCell<(*mut u8, usize, bool)>,
}

// SAFETY: `inner` is only touched under `lock`.
unsafe impl Sync for Reserve {}

/// Spans per batch of [`Reserve`] after the first.
const BATCH: usize = 16;
/// Spans of the first batch: every process of git's workload, `seq` and
/// `rm` included, takes more than 16 spans (BENCHMARKS.md), so that a
/// first batch of 16 meant a second `mmap` in each.
const FIRST_BATCH: usize = 32;

pub(super) static RESERVE: Reserve = Reserve {
    lock: SpinLock::new(),
    inner: UnsafeCell::new((ptr::null_mut(), 0, false)),
};

/// A fresh SPAN-aligned, zeroed mapping of SPAN bytes: the next one of the
/// reserve, mapping a new batch when it is empty (a smaller one, then a
/// single span, when a batch cannot be mapped). Called under a tag's lock:
/// the reserve's lock nests inside tag locks, never the other way round.
pub(super) fn reserved_span() -> Option<NonNull<u8>> {
    RESERVE.lock.lock();
    // SAFETY: we hold the reserve's lock.
    let st = unsafe { &mut *RESERVE.inner.get() };
    if st.1 == 0 {
        let sizes: &[usize] = if st.2 {
            &[BATCH]
        } else {
            &[FIRST_BATCH, BATCH]
        };
        st.2 = true;
        if let Some((batch, n)) = sizes
            .iter()
            .find_map(|&n| Some((map_aligned(SPAN * n, SPAN)?, n)))
        {
            *st = (batch.as_ptr(), n, true);
        }
    }
    let span = if st.1 == 0 {
        None
    } else {
        let span = st.0;
        st.1 -= 1;
        // SAFETY: when spans are left, the next one lies inside the batch
        // mapping; after the last, this points one past its end, unused.
        st.0 = unsafe { span.add(SPAN) };
        NonNull::new(span)
    };
    RESERVE.lock.unlock();
    let span = span.or_else(|| map_aligned(SPAN, SPAN));
    if span.is_some() {
        // Relaxed: a clock for a heuristic, read with no other data.
        FRESH_SPANS.fetch_add(1, Relaxed);
        os::fresh_span();
    }
    span
}

/// Fresh spans handed out so far.
static FRESH_SPANS: AtomicUsize = AtomicUsize::new(0);

/// How many fresh spans were handed out so far: the clock by which the
/// pools of the preload's classes tell an idle pool from one in use while
/// the heap grows (`Pool::release_if_idle`). Relaxed: only compared.
pub(crate) fn fresh_spans() -> usize {
    FRESH_SPANS.load(Relaxed)
}

/// Unmaps the spans of the reserve that were never handed out.
pub(super) fn trim_reserve() {
    RESERVE.lock.lock();
    // SAFETY: we hold the reserve's lock.
    let st = unsafe { &mut *RESERVE.inner.get() };
    let (next, left, _) = core::mem::replace(st, (ptr::null_mut(), 0, true));
    RESERVE.lock.unlock();
    if let Some(next) = NonNull::new(next).filter(|_| left > 0) {
        // SAFETY: the rest of a batch mapping that nobody was given.
        unsafe { os::unmap(next, left * SPAN) };
    }
}
