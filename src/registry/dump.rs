//! The dumps of the registry's pools: `pool_dump` and its sorted,
//! filtered, key=value and into-a-buffer forms, and the memory profile.
//! Each line is formatted on the stack (`line`) and written with write(2):
//! no malloc, so that a dump works inside the LD_PRELOAD malloc and at exit.

use super::{init, lock, Registry};
use crate::head::{Pool, POOL_F_SHARED};
use crate::line::{self, Line};
use crate::{options, os, thread_cache};
use core::fmt::Write;
use core::sync::atomic::Ordering::Relaxed;

/// The order of `dump_sorted`'s lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpOrder {
    /// Newest pool first.
    Unsorted,
    /// By name, A to Z.
    Name,
    /// By object size, largest first.
    Size,
    /// By bytes allocated, largest first.
    Usage,
}

/// Writes one line per pool and a total to `fd`, like HAProxy's
/// "show pools".
pub fn dump(fd: libc::c_int) {
    dump_sorted(fd, DumpOrder::Unsorted, 0);
}

/// Like `dump`, the pools in `order`, at most `max` of them (0: all); the
/// total covers every pool. Formats on the stack and sorts in a page
/// mapping: it calls no malloc (it runs at exit for `POOL_STATS=1`).
pub fn dump_sorted(fd: libc::c_int, order: DumpOrder, max: usize) {
    let reg = lock();
    let len = thread_cache::MAX_POOLS * core::mem::size_of::<(&Pool, usize)>();
    // Unsorted needs no table (and the dump at exit maps nothing).
    let table = if order == DumpOrder::Unsorted {
        None
    } else {
        os::map_zeroed(len)
    };
    let mut n = 0usize;
    let (mut total_alloc, mut total_used) = (0usize, 0usize);
    for p in reg.pools() {
        let s = p.stats(reg.cached(p));
        total_alloc += s.allocated * s.size;
        total_used += s.used * s.size;
        n += 1;
    }
    match table {
        Some(mem) => {
            let base = mem.as_ptr().cast::<(&Pool, usize)>();
            for (i, p) in reg.pools().enumerate() {
                let key = match order {
                    DumpOrder::Usage => p.stats(reg.cached(p)).allocated * p.size,
                    _ => p.size,
                };
                // SAFETY: `i < n <= MAX_POOLS` (the live pools, counted
                // above under the same lock): inside the fresh mapping,
                // which is page-aligned, so aligned for the entries.
                unsafe { base.add(i).write((p, key)) };
            }
            // SAFETY: the first `n` entries were written just above; the
            // mapping is ours until unmapped below.
            let entries = unsafe { core::slice::from_raw_parts_mut(base, n) };
            for (p, _) in sorted_for_dump(entries, order, max) {
                dump_line(&reg, p, fd);
            }
            // SAFETY: the mapping made above, no longer used.
            unsafe { os::unmap(mem, len) };
        }
        // Unsorted, or no memory for the table.
        None => {
            for p in reg.pools().take(if max == 0 { usize::MAX } else { max }) {
                dump_line(&reg, p, fd);
            }
        }
    }
    let mut line = Line::new();
    let _ = writeln!(
        line,
        "Total: {n} pools, {total_alloc} bytes allocated, {total_used} used, shared cache {}, \
         thread cache {} bytes",
        options::shared_cache_name(),
        options::cache_size(),
    );
    line.write_to(fd);
}

/// Writes the memory profile to `fd`: the `max` call sites (0: all) that
/// allocated the most bytes, with their pool and symbol, then a total.
/// Formats on the stack and merges in a mapping: no malloc.
///
/// The registry lock is held only to read a pool's name, not while the
/// site is symbolised: `dladdr` takes the dynamic loader's lock, which a
/// thread in `dlopen` holds while it mallocs (under the preload, into a
/// pool creation that takes the registry lock).
pub fn dump_profile(fd: libc::c_int, max: usize) {
    init();
    crate::profile::with_sites(|sites, dropped| {
        // By the larger of the two, so that a site that only frees shows.
        sites.sort_unstable_by_key(|s| {
            core::cmp::Reverse((s.alloc_bytes.max(s.free_bytes), s.alloc_bytes))
        });
        let shown = if max == 0 {
            sites.len()
        } else {
            max.min(sites.len())
        };
        let mut line = Line::new();
        let _ = writeln!(
            line,
            "Memory profile{}: {shown} of {} call sites, by bytes allocated:",
            if options::profiling() { "" } else { " (off)" },
            sites.len()
        );
        line.write_to(fd);
        for s in &sites[..shown] {
            let mut line = Line::new();
            let _ = write!(
                line,
                "  {:>9} allocs {:>12} bytes {:>9} frees {:>12} bytes  pool=",
                s.allocs, s.alloc_bytes, s.frees, s.free_bytes
            );
            if s.pool == crate::profile::UNPOOLED {
                let _ = write!(line, "(large)");
            } else {
                let reg = lock();
                match reg.pools().find(|p| p.slot == s.pool) {
                    Some(p) => {
                        let _ = write!(line, "{}", p.name().to_str().unwrap_or("?"));
                    }
                    None => {
                        let _ = write!(line, "(destroyed)");
                    }
                }
            }
            let _ = write!(line, " at {:#x} ", s.caller);
            crate::profile::write_site(&mut line, s.caller);
            let _ = writeln!(line);
            line.write_to(fd);
        }
        let (a, ab, f, fb) = sites.iter().fold((0, 0, 0, 0), |t, s| {
            (
                t.0 + s.allocs,
                t.1 + s.alloc_bytes,
                t.2 + s.frees,
                t.3 + s.free_bytes,
            )
        });
        let mut line = Line::new();
        let _ = writeln!(
            line,
            "Total: {} call sites, {a} allocs ({ab} bytes), {f} frees ({fb} bytes), \
             {dropped} calls not recorded (tables full)",
            sites.len()
        );
        line.write_to(fd);
    });
}

/// `dump_filtered` flag: one `key=value` line per pool, for scripts.
pub(crate) const DUMP_KV: u32 = 1;

/// Like `dump_sorted`, with only the pools whose name (or one of its merged
/// names) starts with `prefix` (HAProxy's "show pools match"), the total
/// covering those; with `DUMP_KV` in `flags`, one `key=value` line per
/// pool and one for the total instead of the sentences.
pub fn dump_filtered(fd: libc::c_int, order: DumpOrder, max: usize, prefix: &[u8], flags: u32) {
    let reg = lock();
    let matches = |p: &Pool| {
        p.name().to_bytes().starts_with(prefix)
            || p.also()
                .to_bytes()
                .split(|&b| b == b',')
                .any(|n| n.starts_with(prefix))
    };
    let len = thread_cache::MAX_POOLS * core::mem::size_of::<(&Pool, usize)>();
    let Some(mem) = os::map_zeroed(len) else {
        return;
    };
    let base = mem.as_ptr().cast::<(&Pool, usize)>();
    let mut n = 0usize;
    let (mut total_alloc, mut total_used) = (0usize, 0usize);
    for p in reg.pools().filter(|p| matches(p)) {
        let s = p.stats(reg.cached(p));
        total_alloc += s.allocated * s.size;
        total_used += s.used * s.size;
        let key = match order {
            DumpOrder::Usage => s.allocated * s.size,
            _ => p.size,
        };
        // SAFETY: at most the live pools (MAX_POOLS) are written, inside
        // the fresh page-aligned mapping.
        unsafe { base.add(n).write((p, key)) };
        n += 1;
    }
    // SAFETY: the first `n` entries were written just above; the mapping is
    // ours until unmapped below.
    let entries = unsafe { core::slice::from_raw_parts_mut(base, n) };
    for (p, _) in sorted_for_dump(entries, order, max) {
        if flags & DUMP_KV != 0 {
            dump_kv_line(&reg, p, fd);
        } else {
            dump_line(&reg, p, fd);
        }
    }
    // SAFETY: the mapping made above, no longer used.
    unsafe { os::unmap(mem, len) };
    let mut line = Line::new();
    if flags & DUMP_KV != 0 {
        let _ = writeln!(
            line,
            "total pools={n} allocated_bytes={total_alloc} used_bytes={total_used} \
             shared_cache={} thread_cache_bytes={}",
            options::shared_cache_name(),
            options::cache_size(),
        );
    } else {
        let _ = writeln!(
            line,
            "Total: {n} pools, {total_alloc} bytes allocated, {total_used} used, shared cache {}, \
             thread cache {} bytes",
            options::shared_cache_name(),
            options::cache_size(),
        );
    }
    line.write_to(fd);
}

/// Writes `bytes` as a value of a `key=value` line: bytes other than
/// printable ASCII, and ` `, `=`, `,` and `%`, as `%XX`.
fn write_kv_value(line: &mut Line, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_graphic() && !matches!(b, b'=' | b'%' | b',') {
            let _ = line.write_char(char::from(b));
        } else {
            let _ = write!(line, "%{b:02X}");
        }
    }
}

/// One pool's `key=value` line of `dump_filtered`.
fn dump_kv_line(reg: &Registry, p: &Pool, fd: libc::c_int) {
    let s = p.stats(reg.cached(p));
    let mut line = Line::new();
    let _ = write!(line, "pool name=");
    write_kv_value(&mut line, p.name().to_bytes());
    let _ = write!(line, " aliases=");
    let mut sep = "";
    for alias in p
        .also()
        .to_bytes()
        .split(|&b| b == b',')
        .filter(|a| !a.is_empty())
    {
        let _ = write!(line, "{sep}");
        write_kv_value(&mut line, alias);
        sep = ",";
    }
    let _ = write!(
        line,
        " size={} allocated={} allocated_bytes={} used={} cached={} shared={} failed={} \
         users={} minavail={} limit={} shared_flag={} debug=",
        s.size,
        s.allocated,
        s.allocated * s.size,
        s.used,
        s.cached,
        s.shared,
        s.failed,
        s.users,
        s.minavail,
        p.limit.load(Relaxed),
        u8::from(p.flags & POOL_F_SHARED != 0),
    );
    options::write_flag_names(&mut line, p.debug);
    let _ = writeln!(line);
    line.write_to(fd);
}

/// Like `dump_sorted`, into `buf`, the way snprintf does it (see
/// `line::into_buffer`). Calls no malloc.
pub fn dump_sorted_to_buffer(buf: &mut [u8], order: DumpOrder, max: usize) -> usize {
    line::into_buffer(buf, |fd| dump_sorted(fd, order, max))
}

/// The dump's entries (a pool and its sort key) in `order`, the first
/// `max` of them (0: all).
fn sorted_for_dump<'a>(
    entries: &'a mut [(&'static Pool, usize)],
    order: DumpOrder,
    max: usize,
) -> &'a [(&'static Pool, usize)] {
    match order {
        DumpOrder::Unsorted => {}
        DumpOrder::Name => entries.sort_unstable_by(|a, b| a.0.name().cmp(b.0.name())),
        DumpOrder::Size | DumpOrder::Usage => {
            entries.sort_unstable_by_key(|e| core::cmp::Reverse(e.1))
        }
    }
    let shown = if max == 0 {
        entries.len()
    } else {
        max.min(entries.len())
    };
    &entries[..shown]
}

/// One pool's line of the dump.
fn dump_line(reg: &Registry, p: &Pool, fd: libc::c_int) {
    let s = p.stats(reg.cached(p));
    let mut line = Line::new();
    let _ = write!(
        line,
        "  - Pool {}{}{} ({} bytes) : {} allocated ({} bytes), {} used, {} cached, {} shared, \
         {} failures, {} users, minavail {}",
        p.name().to_str().unwrap_or("?"),
        if p.also().is_empty() { "" } else { "," },
        p.also().to_str().unwrap_or("?"),
        s.size,
        s.allocated,
        s.allocated * s.size,
        s.used,
        s.cached,
        s.shared,
        s.failed,
        s.users,
        s.minavail,
    );
    let limit = p.limit.load(Relaxed);
    if limit != 0 {
        let _ = write!(line, ", limit {limit}");
    }
    if p.flags & POOL_F_SHARED != 0 {
        let _ = write!(line, " [SHARED]");
    }
    if p.debug != 0 {
        let _ = write!(line, " [DEBUG ");
        options::write_flag_names(&mut line, p.debug);
        let _ = write!(line, "]");
    }
    let _ = writeln!(line);
    line.write_to(fd);
}
