//! Debugging: what the `POOL_DEBUG` options do to an object on its way
//! through `pool_alloc` and `pool_free`, the messages they abort with, the
//! valgrind and AddressSanitizer hooks, and `POOL_STATS=1`.
//!
//! Nothing here runs unless a pool was created with debugging flags
//! (`Pool::debug != 0`) or was given a run-time bit (`fail`, profiling) by
//! `Pool::enable_debug`: the hot path tests one word (`Pool::debug_live`)
//! and calls `Pool::alloc_debug` / `Pool::free_debug`, which call
//! [`on_alloc`] and [`on_free`] (and the `fail` draw and the `profile`).
//!
//! An object of a debugging pool, from its start (`base`, what the caches
//! hold) to its end (`Layout::total` bytes, what the backing allocator gives):
//!
//! ```text
//!  [prefix: 32 bytes, valgrind only] [the caller's `size` bytes, at least
//!  32 without prefix] [tag: 1 word] [callers: 2 words] [backup: size bytes]
//! ```
//!
//! The first 32 bytes of `base` hold the cache links while the object is
//! cached, so the integrity pattern and the backup comparison cover the
//! bytes from offset 32 on. Under valgrind the prefix moves the links out of
//! the caller's bytes, which can then all be marked inaccessible.

use crate::checkers::{
    self, vg, VG_CREATE_MEMPOOL, VG_DESTROY_MEMPOOL, VG_MAKE_MEM_DEFINED, VG_MEMPOOL_ALLOC,
    VG_MEMPOOL_FREE,
};
use crate::head::{Layout, Pool};
use crate::line::Line;
use crate::options::{
    DBG_BACKUP, DBG_CALLER, DBG_INTEGRITY, DBG_MEMCHECK, DBG_POISON, DBG_TAG, DBG_ZERO_ON_FREE,
};
use core::fmt::Write;

const WORD: usize = core::mem::size_of::<usize>();
/// Low half of every integrity pattern word: marks a filled (free) object.
const FILL_MARK: usize = 0xf1ee_d0ce;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

/// A new pool: valgrind learns of it as a memory pool.
pub(crate) fn on_create(pool: &Pool) {
    if pool.debug & DBG_MEMCHECK != 0 {
        vg(VG_CREATE_MEMPOOL, anchor(pool), 0, 0);
    }
}

/// A pool about to be recycled (every object released).
pub(crate) fn on_destroy(pool: &Pool) {
    if pool.debug & DBG_MEMCHECK != 0 {
        vg(VG_DESTROY_MEMPOOL, anchor(pool), 0, 0);
    }
}

fn anchor(pool: &Pool) -> usize {
    core::ptr::from_ref(pool) as usize
}

fn make_accessible(pool: &Pool, user: *mut u8) {
    if pool.debug & DBG_MEMCHECK != 0 {
        vg(VG_MEMPOOL_ALLOC, anchor(pool), user as usize, pool.size);
        if pool.debug & (DBG_INTEGRITY | DBG_BACKUP) != 0 {
            // The pattern (or the old content) is what we compare: defined.
            vg(VG_MAKE_MEM_DEFINED, user as usize, pool.size, 0);
        }
    }
    if pool.debug & crate::options::DBG_ASAN != 0 {
        checkers::asan_unpoison(user, pool.size);
    }
}

fn make_inaccessible(pool: &Pool, user: *mut u8) {
    if pool.debug & DBG_MEMCHECK != 0 {
        vg(VG_MEMPOOL_FREE, anchor(pool), user as usize, 0);
    }
    if pool.debug & crate::options::DBG_ASAN != 0 {
        checkers::asan_poison(user, pool.size);
    }
}

// ---- the alloc and free hooks --------------------------------------------

/// The tag of an object held by the application: its pool's address.
fn tag_used(pool: &Pool) -> usize {
    anchor(pool)
}

/// The tag of an object in a cache.
fn tag_free(pool: &Pool) -> usize {
    !anchor(pool)
}

/// Reads word `off` of the object at `base`.
///
/// # Safety
/// `base` is an object of a pool whose layout has a word at `off`.
unsafe fn word(base: *mut u8, off: usize) -> usize {
    // SAFETY: in bounds by the caller's contract; word-aligned offsets of a
    // 16-aligned object (read unaligned anyway, for POOL_F_EXACT sizes).
    unsafe { base.add(off).cast::<usize>().read_unaligned() }
}

/// Writes word `off` of the object at `base`.
///
/// # Safety
/// As for [`word`].
unsafe fn set_word(base: *mut u8, off: usize, v: usize) {
    // SAFETY: as for `word`.
    unsafe { base.add(off).cast::<usize>().write_unaligned(v) }
}

/// An object leaves the pool for the application. `base` is the object as
/// the caches hold it; `from_cache` says whether it was freed before (and so
/// carries the free tag, the pattern or the backup). Returns the caller's
/// pointer.
///
/// # Safety
/// `base` is an object of `pool`, owned by the caller.
pub(crate) unsafe fn on_alloc(
    pool: &Pool,
    base: NonNull<u8>,
    from_cache: bool,
    caller: usize,
) -> NonNull<u8> {
    let l = pool.layout;
    let d = pool.debug;
    let b = base.as_ptr();
    // SAFETY: `user` lies inside the object.
    let user = unsafe { b.add(l.user) };
    make_accessible(pool, user);
    // The offsets below come from the pool's layout; the object is ours.
    if from_cache {
        if d & DBG_TAG != 0 {
            // SAFETY: the tag word lies inside the object (pool layout with `tag`).
            let tag = unsafe { word(b, l.tag) };
            if tag != tag_free(pool) {
                let what = if tag == tag_used(pool) {
                    "an object still in use was found in the cache (freed twice, \
                     and handed out twice)"
                } else {
                    "the tag of a cached object was overwritten (an overflow from the \
                     object before it, or a write after free)"
                };
                die(pool, b, caller, Site::Alloc, what, Some(tag), None);
            }
        }
        let changed = if d & DBG_INTEGRITY != 0 {
            // SAFETY: the checked range lies inside the object.
            unsafe { first_unlike_pattern(b, l.checked(pool.size)) }
        } else if d & DBG_BACKUP != 0 {
            // SAFETY: the pool has a backup area (`backup` set), inside the object.
            unsafe { first_unlike_backup(b, &l, pool.size) }
        } else {
            None
        };
        if let Some(at) = changed {
            die(
                pool,
                b,
                caller,
                Site::Alloc,
                "write after free",
                None,
                Some(at),
            );
        }
    }
    if d & DBG_INTEGRITY != 0 {
        let range = l.checked(pool.size);
        if !range.is_empty() {
            // Break the pattern, so that a pool_free of this object before
            // the application writes into it is not taken for a double
            // free (an object fresh from the system may also hold a stale
            // pattern from an earlier life).
            // SAFETY: the checked range lies inside the object.
            unsafe { set_word(b, range.start, 0) };
        }
    }
    if d & DBG_TAG != 0 {
        // SAFETY: the tag word lies inside the object (pool layout with `tag`).
        unsafe { set_word(b, l.tag, tag_used(pool)) };
    }
    if d & DBG_CALLER != 0 {
        // SAFETY: the caller words lie inside the object (pool layout with `caller`).
        unsafe { set_word(b, l.caller, caller) };
    }
    if d & DBG_POISON != 0 {
        // SAFETY: the caller's bytes of an object we own.
        unsafe { user.write_bytes(pool.poison, pool.size) };
    }
    // SAFETY: inside a non-null object.
    unsafe { NonNull::new_unchecked(user) }
}

/// An object comes back from the application through `pool_free(pool, ..)`:
/// checks that it is one of `pool`'s objects in use, prepares it for the
/// cache and returns it as the caches hold it.
///
/// # Safety
/// `user` was returned by [`on_alloc`] of some pool (the checks are about
/// which one) and is given up by the caller.
pub(crate) unsafe fn on_free(pool: &Pool, user: NonNull<u8>, caller: usize) -> NonNull<u8> {
    let l = pool.layout;
    let d = pool.debug;
    // SAFETY: `user` is `l.user` bytes into an object of this layout (the
    // caller's contract); the offsets below come from the same layout.
    let b = unsafe { user.as_ptr().sub(l.user) };
    if d & DBG_TAG != 0 {
        // SAFETY: the tag word lies inside the object (pool layout with `tag`).
        let tag = unsafe { word(b, l.tag) };
        if tag != tag_used(pool) {
            let what = if tag == tag_free(pool) {
                "double free"
            } else {
                "the object is not one of this pool's objects in use (freed into \
                 the wrong pool, or its tag was overwritten by an overflow)"
            };
            die(pool, b, caller, Site::Free, what, Some(tag), None);
        }
    }
    // Under valgrind the caller's bytes may be undefined (never written):
    // reading them here would be reported; valgrind reports a double free
    // itself (the mempool chunk is not allocated).
    if d & DBG_INTEGRITY != 0 && d & DBG_MEMCHECK == 0 {
        let range = l.checked(pool.size);
        // SAFETY: the checked range lies inside the object.
        if !range.is_empty() && unsafe { first_unlike_pattern(b, range) }.is_none() {
            die(
                pool,
                b,
                caller,
                Site::Free,
                "double free (the object still holds the pattern of a cached object)",
                None,
                None,
            );
        }
    }
    if d & DBG_BACKUP != 0 {
        // SAFETY: the backup area has room for `size` bytes; no overlap.
        unsafe { core::ptr::copy_nonoverlapping(user.as_ptr(), b.add(l.backup), pool.size) };
        if d & DBG_MEMCHECK != 0 {
            // The copy is compared byte by byte on reuse: defined for
            // valgrind, whatever the caller wrote (or did not).
            // SAFETY: in bounds, as above.
            vg(
                VG_MAKE_MEM_DEFINED,
                unsafe { b.add(l.backup) } as usize,
                pool.size,
                0,
            );
        }
    }
    if d & DBG_ZERO_ON_FREE != 0 {
        // A second free of an object that is still free stops here, before
        // the zeroing would wipe the links it holds in the shared cache
        // (or, under ASan, write to bytes poisoned as cached).
        // SAFETY: `b` is an object of this pool that was handed out, so its
        // key word is initialised.
        if unsafe { crate::head::has_key(pool, NonNull::new_unchecked(b)) } {
            double_free(pool, unsafe { NonNull::new_unchecked(b) });
        }
        // All but the key word, which says the object is free (and which a
        // second free must still find).
        let key = crate::head::KEY_OFFSET;
        let (start, end) = (l.user, l.user + pool.size);
        // SAFETY: the caller's bytes, `[l.user, l.user + size)` of the
        // object, less the key word's 8 bytes.
        unsafe {
            if start < key {
                b.add(start).write_bytes(0, end.min(key) - start);
            }
            if end > key + 8 {
                let from = start.max(key + 8);
                b.add(from).write_bytes(0, end - from);
            }
        }
    }
    if d & DBG_INTEGRITY != 0 {
        let range = l.checked(pool.size);
        // A different pattern at every fill (half of the high bits change),
        // marked in the low bits as a free object's.
        // Relaxed: any spread of values will do.
        let n = pool.pattern.fetch_add(1, Relaxed);
        let fill = (n.wrapping_mul(0x5555_5555) << 32) | FILL_MARK;
        let mut off = range.start;
        while off < range.end {
            // SAFETY: `off` walks the checked range, inside the object.
            unsafe { set_word(b, off, fill) };
            off += WORD;
        }
    }
    if d & DBG_TAG != 0 {
        // SAFETY: the tag word lies inside the object (pool layout with `tag`).
        unsafe { set_word(b, l.tag, tag_free(pool)) };
    }
    if d & DBG_CALLER != 0 {
        // SAFETY: the caller words lie inside the object (pool layout with `caller`).
        unsafe { set_word(b, l.caller + WORD, caller) };
    }
    make_inaccessible(pool, user.as_ptr());
    // SAFETY: inside a non-null object.
    unsafe { NonNull::new_unchecked(b) }
}

/// The first offset in `range` whose word is not the object's pattern.
///
/// # Safety
/// `range` lies inside the object at `b`.
unsafe fn first_unlike_pattern(b: *mut u8, range: core::ops::Range<usize>) -> Option<usize> {
    if range.is_empty() {
        return None;
    }
    // SAFETY: inside the object (caller).
    let first = unsafe { word(b, range.start) };
    if first & 0xffff_ffff != FILL_MARK {
        return Some(range.start);
    }
    // SAFETY: as above.
    range
        .step_by(WORD)
        .find(|&off| unsafe { word(b, off) } != first)
}

/// The first offset of the checked range where the object differs from its
/// backup.
///
/// # Safety
/// `b` is an object with this layout, with a backup area.
unsafe fn first_unlike_backup(b: *mut u8, l: &Layout, size: usize) -> Option<usize> {
    let range = l.checked(size);
    // SAFETY: the backup holds `size` bytes from `l.user`, the checked range
    // lies inside them.
    range
        .clone()
        .find(|&off| unsafe { *b.add(off) != *b.add(l.backup + off - l.user) })
}

// ---- abort messages -----------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    Alloc,
    Free,
}

/// A free of `obj`, which already carries `pool`'s free-object key (see
/// `thread_cache`): aborts with a message naming the object and the pool.
#[cold]
#[inline(never)]
pub(crate) fn double_free(pool: &Pool, obj: NonNull<u8>) -> ! {
    die(
        pool,
        obj.as_ptr(),
        0,
        Site::Free,
        "double free (the object is already free)",
        None,
        None,
    )
}

/// A free of the object base `obj` (the caller's pointer less the parts in
/// front), which is not the start of an object of `pool` (a
/// pointer inside an object, or past one): aborts with a message naming
/// the pointer and the pool.
#[cold]
#[inline(never)]
pub(crate) fn invalid_free(pool: &Pool, obj: NonNull<u8>) -> ! {
    die(
        pool,
        obj.as_ptr(),
        0,
        Site::Free,
        "invalid free (not the start of an object of this pool)",
        None,
        None,
    )
}

/// Prints what went wrong with object `b` of `pool`, with the call sites
/// known, and aborts.
#[cold]
#[inline(never)]
fn die(
    pool: &Pool,
    b: *mut u8,
    caller: usize,
    site: Site,
    what: &str,
    tag: Option<usize>,
    offset: Option<usize>,
) -> ! {
    let l = pool.layout;
    let user = b as usize + l.user;
    let call = if site == Site::Alloc {
        "pool_alloc"
    } else {
        "pool_free"
    };
    let mut line = Line::new();
    let _ = write!(
        line,
        "libpools: {call}(\"{}\", {user:#x}): {what}",
        pool.name().to_str().unwrap_or("?"),
    );
    if let Some(at) = offset {
        // SAFETY: the offset lies inside the object (checked range).
        let got = unsafe { *b.add(at) };
        let _ = write!(
            line,
            ": first difference at offset {} (byte {got:#04x})",
            at - l.user.min(at)
        );
    }
    let _ = writeln!(line);
    line.write_to(2);
    if let Some(tag) = tag {
        let mut line = Line::new();
        let owner = crate::head::pool_at(tag).or_else(|| crate::head::pool_at(!tag));
        match owner {
            Some(other) if !core::ptr::eq(other, pool) => {
                let _ = writeln!(
                    line,
                    "libpools:   the object belongs to pool \"{}\" ({}), not to pool \"{}\"",
                    other.name().to_str().unwrap_or("?"),
                    if crate::head::pool_at(tag).is_some() {
                        "in use"
                    } else {
                        "cached there"
                    },
                    pool.name().to_str().unwrap_or("?"),
                );
            }
            Some(_) => {}
            None => {
                let _ = writeln!(line, "libpools:   tag {tag:#x} names no live pool");
            }
        }
        line.write_to(2);
    }
    let mut line = Line::new();
    let _ = write!(line, "libpools:   this call from ");
    symbol(&mut line, caller);
    if pool.debug & DBG_CALLER != 0 {
        // SAFETY: the object has a caller area in this layout.
        let (a, f) = unsafe { (word(b, l.caller), word(b, l.caller + WORD)) };
        let _ = write!(line, "; last allocated from ");
        symbol(&mut line, a);
        let _ = write!(line, "; last freed from ");
        symbol(&mut line, f);
    }
    let _ = writeln!(line);
    line.write_to(2);
    std::process::abort();
}

/// `0x5555... (file+0xoff, symbol)` where the dynamic loader knows it.
fn symbol(line: &mut Line, addr: usize) {
    if addr == 0 {
        let _ = write!(line, "(unknown)");
        return;
    }
    let _ = write!(line, "{addr:#x}");
    #[cfg(not(miri))]
    {
        // SAFETY: dladdr only reads the loaded objects' tables; `info` is a
        // valid out-pointer; the strings it returns live as long as the
        // object is loaded (we abort right after).
        unsafe {
            let mut info: libc::Dl_info = core::mem::zeroed();
            if libc::dladdr(addr as *const libc::c_void, &mut info) != 0
                && !info.dli_fname.is_null()
            {
                let file = core::ffi::CStr::from_ptr(info.dli_fname)
                    .to_str()
                    .unwrap_or("?");
                let file = file.rsplit('/').next().unwrap_or(file);
                let _ = write!(line, " ({file}+{:#x}", addr - info.dli_fbase as usize);
                if !info.dli_sname.is_null() {
                    let s = core::ffi::CStr::from_ptr(info.dli_sname)
                        .to_str()
                        .unwrap_or("?");
                    let _ = write!(line, ", {s}");
                }
                let _ = write!(line, ")");
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::head::MIN_OBJECT;

    #[test]
    fn plain_layout_is_the_plain_object() {
        for size in [1, 16, 32, 33, 4096] {
            let l = Layout::new(size, 0);
            assert_eq!((l.user, l.total), (0, size.max(MIN_OBJECT)));
        }
    }

    #[test]
    fn debug_parts_follow_the_object() {
        let l = Layout::new(33, DBG_TAG | DBG_CALLER | DBG_BACKUP);
        assert_eq!((l.user, l.tag, l.caller, l.backup), (0, 40, 48, 64));
        assert_eq!(l.total, 64 + 40);
        let l = Layout::new(64, DBG_TAG | DBG_MEMCHECK);
        assert_eq!((l.user, l.tag, l.total), (32, 96, 104));
        assert_eq!(l.checked(64), 32..96);
        let l = Layout::new(64, DBG_INTEGRITY);
        assert_eq!(l.checked(64), 32..64);
        assert!(Layout::new(16, DBG_INTEGRITY).checked(16).is_empty());
    }

    #[test]
    fn pattern_check_finds_the_first_difference() {
        let mut obj = [0usize; 8];
        let b = obj.as_mut_ptr().cast::<u8>();
        let fill = (7usize << 32) | FILL_MARK;
        // SAFETY: every offset lies inside `obj`, only used through `b`.
        unsafe {
            for off in (32..64).step_by(WORD) {
                set_word(b, off, fill);
            }
            assert_eq!(first_unlike_pattern(b, 32..64), None);
            set_word(b, 48, fill ^ 1);
            assert_eq!(first_unlike_pattern(b, 32..64), Some(48));
            set_word(b, 32, 0);
            assert_eq!(first_unlike_pattern(b, 32..64), Some(32));
        }
    }
}
