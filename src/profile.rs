//! Memory profiling by call site (`POOL_PROFILE=1`, `pool_set_profiling`):
//! for each pair of a call site and a pool, the allocation and free calls
//! made from there and their bytes, like HAProxy's "show profiling memory".
//!
//! A profiled pool takes the debug path (`DBG_PROFILE` in
//! `Pool::debug_live`), which calls [`on_alloc`] and [`on_free`]: pools
//! that are not profiled pay nothing. The call site is the return address
//! that reaches `pool_alloc` / `pool_free` (`caller`); a call that comes
//! without one (the LD_PRELOAD malloc, the Rust API) finds it by unwinding
//! the stack to the first frame outside this library.
//!
//! Memory is bounded: [`TABLES`] tables of [`ENTRIES`] entries each, in
//! one mapping made when profiling is first switched on and never
//! unmapped. A thread takes a table of its own at its first record (round
//! robin; past `TABLES` threads, tables are shared, which the atomic
//! entries allow). An entry's key is claimed with one CAS, its counters are
//! relaxed adds on a line no other thread writes while each thread has its
//! own table: no lock per call. A pair that finds no free entry within
//! [`PROBES`] slots counts in its table's `dropped`. The dump merges the
//! tables in a mapping of its own.

use crate::options;
use core::cell::Cell;
use core::ffi::c_void;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicPtr, AtomicUsize};

/// Tables, at most one per thread.
pub(crate) const TABLES: usize = 32;
/// Entries per table.
pub(crate) const ENTRIES: usize = 8192;
/// Slots tried from an entry's hash before a record is dropped.
const PROBES: usize = 32;
/// The pool id of blocks that come from no pool (the LD_PRELOAD malloc's
/// large blocks); pool ids are slots, below `thread_cache::MAX_POOLS`.
pub const UNPOOLED: usize = 0xfffe;
/// Bits of an address kept in a key (user-space addresses on x86-64 and
/// aarch64 fit in 48).
const ADDR_BITS: u32 = 48;

/// One call site into one pool. `key` is 0 while the entry is free.
#[repr(C)]
struct Entry {
    key: AtomicUsize,
    allocs: AtomicUsize,
    frees: AtomicUsize,
    alloc_bytes: AtomicUsize,
    free_bytes: AtomicUsize,
}

#[repr(C)]
struct Table {
    entries: [Entry; ENTRIES],
    /// Records that found no entry.
    dropped: AtomicUsize,
}

/// The tables, once mapped. Release/Acquire: a thread that sees the
/// pointer sees the zeroed mapping (mmap's zeroes need no publication,
/// but the ordering costs nothing on the profiled path).
static TABLES_MEM: AtomicPtr<Table> = AtomicPtr::new(core::ptr::null_mut());
/// Tables handed out so far (round robin). Relaxed: any spread is correct.
static NEXT_TABLE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's table (`usize::MAX` until its first record). Const
    /// and without a destructor, so touching it allocates nothing.
    static MY_TABLE: Cell<usize> = const { Cell::new(usize::MAX) };
    /// This thread is recording: a nested allocation (one the unwinder
    /// might make) is recorded without unwinding again.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Maps the tables if they are not yet; `false` when there is no memory.
pub(crate) fn enable() -> bool {
    if !TABLES_MEM.load(Acquire).is_null() {
        return true;
    }
    let len = TABLES * core::mem::size_of::<Table>();
    let Some(mem) = crate::os::map_zeroed(len) else {
        return false;
    };
    let t = mem.as_ptr().cast::<Table>();
    // Release: see TABLES_MEM. A thread that lost the race unmaps its own.
    if TABLES_MEM
        .compare_exchange(core::ptr::null_mut(), t, Release, Acquire)
        .is_err()
    {
        // SAFETY: our mapping, never published.
        unsafe { crate::os::unmap(mem, len) };
    }
    true
}

/// Whether the tables exist (profiling was switched on at some point).
pub(crate) fn recorded() -> bool {
    !TABLES_MEM.load(Acquire).is_null()
}

/// An allocation of `bytes` from pool `id` made from `caller` (0: find it).
#[inline]
pub(crate) fn on_alloc(id: usize, bytes: usize, caller: usize) {
    record(id, bytes, caller, false);
}

/// A free of `bytes` into pool `id` made from `caller` (0: find it).
#[inline]
pub(crate) fn on_free(id: usize, bytes: usize, caller: usize) {
    record(id, bytes, caller, true);
}

/// A block of `bytes` that comes from no pool (allocated, or freed when
/// `free`), for the LD_PRELOAD malloc's large blocks: recorded while
/// profiling is on, with the call site found by unwinding.
pub fn record_unpooled(bytes: usize, free: bool) {
    record(UNPOOLED, bytes, 0, free);
}

/// Whether profiling is on (calls are being recorded).
#[inline]
pub fn active() -> bool {
    options::profiling()
}

fn record(id: usize, bytes: usize, caller: usize, free: bool) {
    // Switched off: the pools keep their flag (and the debug path), the
    // tables keep their counts; nothing more is recorded.
    if active() {
        store(id, bytes, caller, free);
    }
}

/// Counts the call in this thread's table (if the tables exist).
fn store(id: usize, bytes: usize, caller: usize, free: bool) {
    let tables = TABLES_MEM.load(Acquire);
    if tables.is_null() {
        return;
    }
    let nested = BUSY.try_with(|b| b.replace(true)).unwrap_or(true);
    let caller = if caller == 0 && !nested {
        find_caller()
    } else {
        caller
    };
    let t = my_table();
    // SAFETY: `t < TABLES`, inside the mapping, which is never unmapped.
    let table = unsafe { &*tables.add(t) };
    let key = ((caller & ((1 << ADDR_BITS) - 1)) << 16) | ((id & 0xffff) + 1);
    match find_entry(table, key) {
        Some(e) => {
            // Relaxed: independent counters; a dump after the calls (the
            // program synchronised with their threads) sees them all.
            if free {
                e.frees.fetch_add(1, Relaxed);
                e.free_bytes.fetch_add(bytes, Relaxed);
            } else {
                e.allocs.fetch_add(1, Relaxed);
                e.alloc_bytes.fetch_add(bytes, Relaxed);
            }
        }
        None => {
            table.dropped.fetch_add(1, Relaxed);
        }
    }
    if !nested {
        let _ = BUSY.try_with(|b| b.set(false));
    }
}

/// This thread's table, taken at its first record.
fn my_table() -> usize {
    MY_TABLE
        .try_with(|c| {
            let t = c.get();
            if t != usize::MAX {
                return t;
            }
            let t = NEXT_TABLE.fetch_add(1, Relaxed) % TABLES;
            c.set(t);
            t
        })
        // A thread being torn down shares the first table.
        .unwrap_or(0)
}

/// The entry of `key` in `table`, claimed if it is new.
fn find_entry(table: &Table, key: usize) -> Option<&Entry> {
    let mut h = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    for i in 0..PROBES {
        let e = &table.entries[(h + i) % ENTRIES];
        // Relaxed: the key is the only word that says who owns the entry;
        // the counters are read independently of it.
        let k = e.key.load(Relaxed);
        if k == key {
            return Some(e);
        }
        if k == 0 {
            match e.key.compare_exchange(0, key, Relaxed, Relaxed) {
                Ok(_) => return Some(e),
                Err(won) if won == key => return Some(e),
                Err(_) => {}
            }
        }
    }
    None
}

/// One call site's totals, merged over the tables.
#[derive(Clone, Copy, Default)]
pub(crate) struct Site {
    /// The return address of the calls.
    pub(crate) caller: usize,
    /// The pool's slot, or [`UNPOOLED`].
    pub(crate) pool: usize,
    pub(crate) allocs: usize,
    pub(crate) frees: usize,
    pub(crate) alloc_bytes: usize,
    pub(crate) free_bytes: usize,
}

/// Calls `f` with every call site recorded so far (merged over the
/// tables, in no particular order) and the count of records dropped. The
/// merge works in a mapping of its own: no malloc. Nothing when profiling
/// was never on, or no memory is left for the merge.
pub(crate) fn with_sites(f: impl FnOnce(&mut [Site], usize)) {
    let tables = TABLES_MEM.load(Acquire);
    if tables.is_null() {
        return f(&mut [], 0);
    }
    let len = TABLES * ENTRIES * core::mem::size_of::<Site>();
    let Some(mem) = crate::os::map_zeroed(len) else {
        return;
    };
    let base = mem.as_ptr().cast::<Site>();
    let (mut n, mut dropped) = (0usize, 0usize);
    for t in 0..TABLES {
        // SAFETY: `t < TABLES`, inside the mapping of the tables.
        let table = unsafe { &*tables.add(t) };
        dropped += table.dropped.load(Relaxed);
        for e in &table.entries {
            let key = e.key.load(Relaxed);
            if key == 0 {
                continue;
            }
            let site = Site {
                caller: key >> 16,
                pool: (key & 0xffff) - 1,
                allocs: e.allocs.load(Relaxed),
                frees: e.frees.load(Relaxed),
                alloc_bytes: e.alloc_bytes.load(Relaxed),
                free_bytes: e.free_bytes.load(Relaxed),
            };
            // SAFETY: at most TABLES * ENTRIES entries are copied, the
            // room of the page-aligned mapping.
            unsafe { base.add(n).write(site) };
            n += 1;
        }
    }
    // SAFETY: the first `n` sites were written above; the mapping is ours
    // until unmapped below.
    let sites = unsafe { core::slice::from_raw_parts_mut(base, n) };
    sites.sort_unstable_by_key(|s| (s.caller, s.pool));
    let mut kept = 0;
    for i in 0..n {
        if kept > 0
            && (sites[kept - 1].caller, sites[kept - 1].pool) == (sites[i].caller, sites[i].pool)
        {
            let s = sites[i];
            let d = &mut sites[kept - 1];
            d.allocs += s.allocs;
            d.frees += s.frees;
            d.alloc_bytes += s.alloc_bytes;
            d.free_bytes += s.free_bytes;
        } else {
            sites[kept] = sites[i];
            kept += 1;
        }
    }
    f(&mut sites[..kept], dropped);
    // SAFETY: the mapping made above, no longer used.
    unsafe { crate::os::unmap(mem, len) };
}

/// Writes `symbol+0xOFF (file)` for `addr`, as far as the dynamic loader
/// knows it (`dladdr`, which reads the loaded objects' tables and calls no
/// malloc), or `?`.
pub(crate) fn write_site(w: &mut impl core::fmt::Write, addr: usize) {
    #[cfg(not(miri))]
    {
        // SAFETY: dladdr only reads the loaded objects' tables; `info` is a
        // valid out-pointer; the strings it returns live while the object
        // is loaded, and are used before this function returns.
        unsafe {
            let mut info: libc::Dl_info = core::mem::zeroed();
            if addr != 0 && libc::dladdr(addr as *const c_void, &mut info) != 0 {
                let file = if info.dli_fname.is_null() {
                    "?"
                } else {
                    core::ffi::CStr::from_ptr(info.dli_fname)
                        .to_str()
                        .unwrap_or("?")
                };
                let file = file.rsplit('/').next().unwrap_or(file);
                if !info.dli_sname.is_null() && !info.dli_saddr.is_null() {
                    let s = core::ffi::CStr::from_ptr(info.dli_sname)
                        .to_str()
                        .unwrap_or("?");
                    let _ = write!(w, "{s}+{:#x} ({file})", addr - info.dli_saddr as usize);
                } else {
                    let _ = write!(w, "{file}+{:#x}", addr - info.dli_fbase as usize);
                }
                return;
            }
        }
    }
    let _ = w.write_str("?");
}

/// The first return address on this thread's stack outside this library:
/// the call site of a call that came without one. 0 when the stack cannot
/// be walked.
#[cfg(all(target_os = "linux", not(miri)))]
fn find_caller() -> usize {
    #[repr(C)]
    struct UnwindContext {
        _opaque: [u8; 0],
    }
    type Trace = extern "C" fn(*mut UnwindContext, *mut c_void) -> libc::c_int;
    extern "C" {
        fn _Unwind_Backtrace(trace: Trace, arg: *mut c_void) -> libc::c_int;
        fn _Unwind_GetIP(ctx: *mut UnwindContext) -> usize;
    }
    const URC_NO_REASON: libc::c_int = 0;
    const URC_END_OF_STACK: libc::c_int = 5;
    const MAX_FRAMES: usize = 32;
    struct Walk {
        own: (usize, usize),
        frames: usize,
        found: usize,
    }
    extern "C" fn step(ctx: *mut UnwindContext, arg: *mut c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Walk` of `find_caller`, alive during the
        // walk; `ctx` is the unwinder's context of this frame.
        let (w, ip) = unsafe { (&mut *arg.cast::<Walk>(), _Unwind_GetIP(ctx)) };
        w.frames += 1;
        if ip == 0 || w.frames > MAX_FRAMES {
            return URC_END_OF_STACK;
        }
        if (w.own.0..w.own.1).contains(&ip) {
            return URC_NO_REASON;
        }
        w.found = ip;
        URC_END_OF_STACK
    }
    let own = own_range();
    if own.0 >= own.1 {
        return 0;
    }
    let mut w = Walk {
        own,
        frames: 0,
        found: 0,
    };
    // SAFETY: `step` matches the unwinder's callback type and only reads
    // the context it is given; `w` outlives the walk.
    unsafe { _Unwind_Backtrace(step, (&raw mut w).cast()) };
    w.found
}

#[cfg(not(all(target_os = "linux", not(miri))))]
fn find_caller() -> usize {
    0
}

/// The addresses `[lo, hi)` that the loadable segments of the object
/// holding this library's code span, found once with `dl_iterate_phdr`
/// (which reads the loader's list and allocates nothing): a frame whose
/// return address lies there is one of ours. A per-frame `dladdr` costs a
/// walk of a symbol table; this is two comparisons.
#[cfg(all(target_os = "linux", not(miri)))]
fn own_range() -> (usize, usize) {
    static LO: AtomicUsize = AtomicUsize::new(0);
    static HI: AtomicUsize = AtomicUsize::new(0);
    // Relaxed: each word is the same whoever computes it; a reader that
    // sees only one of them computes both again.
    let (lo, hi) = (LO.load(Relaxed), HI.load(Relaxed));
    if lo != 0 && hi != 0 {
        return (lo, hi);
    }
    extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the triple of `own_range`; `info` and its
        // program headers are the loader's, valid during the callback.
        let (d, info) = unsafe { (&mut *data.cast::<(usize, usize, usize)>(), &*info) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: as above: `dlpi_phnum` headers at `dlpi_phdr`.
        let phdrs =
            unsafe { core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let base = info.dlpi_addr as usize;
        let (mut lo, mut hi, mut ours) = (usize::MAX, 0, false);
        for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_LOAD) {
            let start = base + ph.p_vaddr as usize;
            let end = start + ph.p_memsz as usize;
            lo = lo.min(start);
            hi = hi.max(end);
            ours |= (start..end).contains(&d.0);
        }
        if ours {
            (d.1, d.2) = (lo, hi);
            return 1;
        }
        0
    }
    let mut d = (own_range as *const () as usize, 0usize, 0usize);
    // SAFETY: `each` matches the callback type and only reads what the
    // loader passes; `d` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut d).cast()) };
    LO.store(d.1, Relaxed);
    HI.store(d.2, Relaxed);
    (d.1, d.2)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "walks 262 k entries of the tables")]
    fn records_merge_by_site_and_pool() {
        assert!(enable());
        // Pool ids no other test uses (unit tests' pools have low slots),
        // and addresses no real caller has.
        let (a, b) = (0x10_0000_1000usize, 0x10_0000_2000usize);
        // `store`, not `on_alloc`: profiling stays off for the other tests.
        for _ in 0..5 {
            store(4000, 64, a, false);
        }
        store(4000, 64, a, true);
        store(4001, 32, a, false);
        std::thread::spawn(move || store(4000, 64, a, false))
            .join()
            .unwrap();
        store(4000, 16, b, false);
        let mut got = Vec::new();
        with_sites(|sites, _| {
            got.extend(
                sites
                    .iter()
                    .filter(|s| s.pool == 4000 || s.pool == 4001)
                    .map(|s| {
                        (
                            s.caller,
                            s.pool,
                            s.allocs,
                            s.frees,
                            s.alloc_bytes,
                            s.free_bytes,
                        )
                    }),
            )
        });
        got.sort_unstable();
        assert_eq!(
            got,
            [
                (a, 4000, 6, 1, 384, 64),
                (a, 4001, 1, 0, 32, 0),
                (b, 4000, 1, 0, 16, 0)
            ]
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "walks 262 k entries of the tables")]
    fn a_full_table_counts_what_it_drops() {
        assert!(enable());
        let dropped = || {
            let mut d = 0;
            with_sites(|_, n| d = n);
            d
        };
        let before = dropped();
        // A thread of its own, so a table of its own (the other tests that
        // record use a few threads, far fewer than TABLES).
        std::thread::spawn(|| {
            for k in 1..=2 * ENTRIES {
                store(4002, 8, 0x20_0000_0000 + 16 * k, false);
            }
        })
        .join()
        .unwrap();
        let mut kept = 0;
        with_sites(|sites, _| kept = sites.iter().filter(|s| s.pool == 4002).count());
        assert!(kept <= ENTRIES, "{kept}");
        assert!(dropped() - before >= 2 * ENTRIES - kept);
    }

    #[test]
    #[cfg_attr(miri, ignore = "half a million probes")]
    fn a_table_holds_its_entries_and_finds_old_keys() {
        let table = Table {
            entries: [const {
                Entry {
                    key: AtomicUsize::new(0),
                    allocs: AtomicUsize::new(0),
                    frees: AtomicUsize::new(0),
                    alloc_bytes: AtomicUsize::new(0),
                    free_bytes: AtomicUsize::new(0),
                }
            }; ENTRIES],
            dropped: AtomicUsize::new(0),
        };
        let found = (1..=ENTRIES * 2)
            .filter(|&k| find_entry(&table, k << 16 | 1).is_some())
            .count();
        assert!(found <= ENTRIES);
        assert!(found > ENTRIES / 2, "{found}");
        assert!(
            find_entry(&table, 1 << 16 | 1).is_some(),
            "an old key is found again"
        );
    }
}
