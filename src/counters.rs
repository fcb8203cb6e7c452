//! Event counters of the shared cache, for measurements only.
//!
//! Built with `RUSTFLAGS="--cfg pools_counters"` (the bench builds a second
//! musl library so, see `mk/bench.mk`), every [`count`] adds to a block of
//! counters owned by the calling thread, and at exit one line goes to
//! stderr:
//!
//! ```text
//! libpools counters: take=.. hit=.. far=.. wait=.. retry=.. put=.. hop=.. moved=.. obtained=.. released=..
//! ```
//!
//! In every other build [`count`] is an empty inline function: the plain
//! paths carry no counter.

/// What is counted.
#[derive(Clone, Copy)]
#[cfg_attr(not(pools_counters), allow(dead_code))]
#[repr(usize)]
pub(crate) enum Event {
    /// A take from the shared cache (a thread cache refill, a direct take).
    Take,
    /// A take that got a cluster.
    Hit,
    /// A take whose cluster came from a bucket other than its home.
    Far,
    /// A head found held by another thread: an xchg head seen BUSY, a
    /// mutex or rwlock that was not free at the first try.
    Wait,
    /// A failed compare-and-swap on a head (push or pop).
    Retry,
    /// A put into the shared cache.
    Put,
    /// A put that moved on from a held head to the next bucket.
    Hop,
    /// A head used on another CPU than the last time it was used: its
    /// cache line had to move between cores (see [`touch`]).
    Moved,
    /// An object obtained from the backing allocator.
    Obtained,
    /// An object returned to the backing allocator.
    Released,
}

#[cfg_attr(not(pools_counters), allow(dead_code))]
const NAMES: [&str; 10] = [
    "take", "hit", "far", "wait", "retry", "put", "hop", "moved", "obtained", "released",
];

/// Counts one `e`.
#[inline(always)]
pub(crate) fn count(e: Event) {
    #[cfg(pools_counters)]
    imp::add(e, 1);
    #[cfg(not(pools_counters))]
    let _ = e;
}

/// The CPU that last used a head (only in counting builds).
#[derive(Default)]
pub(crate) struct LastCpu {
    #[cfg(pools_counters)]
    cpu: core::sync::atomic::AtomicU32,
}

impl LastCpu {
    pub(crate) const fn new() -> Self {
        LastCpu {
            #[cfg(pools_counters)]
            cpu: core::sync::atomic::AtomicU32::new(u32::MAX),
        }
    }
}

/// Records that this CPU uses the head `last` belongs to, and counts
/// [`Event::Moved`] when another CPU used it last. The CPU number comes
/// from `rdtscp` (Linux keeps it in `IA32_TSC_AUX`). It counts moves of the
/// head's line between the CPUs that used it, not every coherence miss.
#[inline(always)]
pub(crate) fn touch(last: &LastCpu) {
    #[cfg(pools_counters)]
    {
        let cpu = imp::cpu();
        // Relaxed: a statistic; the swap makes every use one step in the
        // word's modification order.
        if last.cpu.swap(cpu, core::sync::atomic::Ordering::Relaxed) != cpu {
            imp::add(Event::Moved, 1);
        }
    }
    #[cfg(not(pools_counters))]
    let _ = last;
}

#[cfg(pools_counters)]
mod imp {
    use super::{Event, NAMES};
    use core::cell::Cell;
    use core::ptr;
    use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
    use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64};

    /// One thread's counters. Blocks are never freed: the report at exit
    /// reads those of threads that are gone too.
    struct Block {
        n: [AtomicU64; NAMES.len()],
        next: *mut Block,
    }

    /// Every thread's block.
    static BLOCKS: AtomicPtr<Block> = AtomicPtr::new(ptr::null_mut());
    static REPORTING: AtomicBool = AtomicBool::new(false);

    std::thread_local! {
        // No destructor, so the block is reachable until the thread is
        // gone (a thread cache drained at thread exit still counts).
        static MINE: Cell<*const Block> = const { Cell::new(ptr::null()) };
    }

    /// The CPU this thread runs on now (low 12 bits of `IA32_TSC_AUX`).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn cpu() -> u32 {
        let mut aux = 0u32;
        // SAFETY: rdtscp has no preconditions on x86_64 Linux (the kernel
        // enables it and sets TSC_AUX to node << 12 | cpu).
        unsafe { core::arch::x86_64::__rdtscp(&mut aux) };
        aux & 0xfff
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub(super) fn cpu() -> u32 {
        // SAFETY: sched_getcpu has no preconditions.
        unsafe { libc::sched_getcpu() as u32 }
    }

    pub(super) fn add(e: Event, k: u64) {
        let b = MINE.try_with(|m| {
            if m.get().is_null() {
                m.set(new_block());
            }
            m.get()
        });
        if let Ok(b) = b {
            // SAFETY: blocks are leaked, so `b` lives for the process.
            let c = unsafe { &(*b).n[e as usize] };
            // Relaxed load and store, not an RMW: only this thread writes
            // its block; the report at exit reads a value at least as
            // recent as the last join.
            c.store(c.load(Relaxed) + k, Relaxed);
        }
    }

    fn new_block() -> *const Block {
        let b = Box::leak(Box::new(Block {
            n: Default::default(),
            next: ptr::null_mut(),
        }));
        // Acquire on failure, AcqRel on success: the list is only read
        // at exit, but each link must be seen with its block.
        let mut head = BLOCKS.load(Acquire);
        loop {
            b.next = head;
            match BLOCKS.compare_exchange(head, b, AcqRel, Acquire) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        if !REPORTING.swap(true, Relaxed) {
            // SAFETY: `report` is an extern "C" fn with no arguments.
            unsafe { libc::atexit(report) };
        }
        b
    }

    extern "C" fn report() {
        let mut sum = [0u64; NAMES.len()];
        let mut cur = BLOCKS.load(Acquire);
        while !cur.is_null() {
            // SAFETY: blocks are leaked, never freed.
            let b = unsafe { &*cur };
            for (s, c) in sum.iter_mut().zip(&b.n) {
                *s += c.load(Relaxed);
            }
            cur = b.next;
        }
        let mut line = crate::line::Line::new();
        let _ = core::fmt::Write::write_str(&mut line, "libpools counters:");
        for (name, s) in NAMES.iter().zip(sum) {
            let _ = core::fmt::Write::write_fmt(&mut line, format_args!(" {name}={s}"));
        }
        let _ = core::fmt::Write::write_str(&mut line, "\n");
        line.write_to(2);
    }
}
