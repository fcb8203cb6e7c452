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

use crate::options::{
    DBG_BACKUP, DBG_CALLER, DBG_INTEGRITY, DBG_MEMCHECK, DBG_POISON, DBG_TAG, DBG_ZERO_ON_FREE,
};
use crate::pool::Pool;
use crate::registry::Line;
use crate::thread_cache::MIN_OBJECT;
use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU8;
use core::sync::atomic::Ordering::Relaxed;

const WORD: usize = core::mem::size_of::<usize>();
/// Bytes before the caller's bytes under valgrind: room for the cache links.
const PREFIX: usize = MIN_OBJECT;
/// Low half of every integrity pattern word: marks a filled (free) object.
const FILL_MARK: usize = 0xf1ee_d0ce;

/// The flags that change where the caller's bytes are or add words around
/// them (see [`Layout`]).
pub(crate) const LAYOUT_FLAGS: u32 = DBG_TAG | DBG_CALLER | DBG_BACKUP | DBG_MEMCHECK;

/// Where the parts of a debugging pool's object are, from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The caller's bytes.
    pub(crate) user: usize,
    /// The tag word (with `tag`).
    pub(crate) tag: usize,
    /// The last alloc and free call sites (with `caller`).
    pub(crate) caller: usize,
    /// The copy of the freed object (with `backup`).
    pub(crate) backup: usize,
    /// Bytes obtained per object.
    pub(crate) total: usize,
}

impl Layout {
    /// The layout of an object of `size` bytes under the flags `debug`.
    /// Without layout flags, exactly what a plain pool uses.
    pub(crate) fn new(size: usize, debug: u32) -> Layout {
        let user = if debug & DBG_MEMCHECK != 0 { PREFIX } else { 0 };
        let area = (user + size).max(MIN_OBJECT);
        if debug & (DBG_TAG | DBG_CALLER | DBG_BACKUP) == 0 {
            return Layout {
                user,
                tag: area,
                caller: area,
                backup: area,
                total: area,
            };
        }
        let tag = area.next_multiple_of(WORD);
        let caller = tag + if debug & DBG_TAG != 0 { WORD } else { 0 };
        let backup = caller + if debug & DBG_CALLER != 0 { 2 * WORD } else { 0 };
        let total = backup
            + if debug & DBG_BACKUP != 0 {
                size.next_multiple_of(WORD)
            } else {
                0
            };
        Layout {
            user,
            tag,
            caller,
            backup,
            total,
        }
    }

    /// The word-aligned bytes the integrity pattern and the backup check
    /// cover: the caller's bytes past the cache links.
    fn checked(&self, size: usize) -> core::ops::Range<usize> {
        let start = MIN_OBJECT.max(self.user);
        let end = ((self.user + size) / WORD * WORD).max(start);
        start..end
    }
}

// ---- valgrind and ASan -------------------------------------------------

const TOOL_VALGRIND: u8 = 1;
const TOOL_ASAN: u8 = 2;
/// The memory checkers found at start-up. Relaxed: written once in `init`,
/// which every pool creation happens after (registry's Once).
static TOOLS: AtomicU8 = AtomicU8::new(0);

type AsanFn = unsafe extern "C" fn(*const u8, usize);
static ASAN_POISON: once_cell::sync::OnceCell<(AsanFn, AsanFn)> = once_cell::sync::OnceCell::new();

/// The flags every pool gets because of a memory checker: `DBG_MEMCHECK`
/// under valgrind (a layout flag: the 32-byte prefix), `DBG_ASAN` (no
/// layout change: ASan does not see the library's own accesses).
pub(crate) fn tool_flags() -> u32 {
    let t = TOOLS.load(Relaxed);
    (if t & TOOL_VALGRIND != 0 {
        DBG_MEMCHECK
    } else {
        0
    }) | (if t & TOOL_ASAN != 0 {
        crate::options::DBG_ASAN
    } else {
        0
    })
}

/// Valgrind's client request: the magic preamble of valgrind.h for amd64
/// (rotations of rdi by 128 bits in all, then `xchg rbx,rbx`), which is a
/// no-op on real hardware and a call into the tool under valgrind.
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn client_request(default: usize, request: usize, args: [usize; 5]) -> usize {
    let block: [usize; 6] = [request, args[0], args[1], args[2], args[3], args[4]];
    let result: usize;
    // SAFETY: the sequence leaves every register as it was (rdi is rotated
    // by 3+13+61+51 = 128 bits) except rdx, declared as the output; under
    // valgrind the tool reads the six words `block` points to, which live
    // until the statement ends.
    unsafe {
        core::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            inout("rdx") default => result,
            in("rax") block.as_ptr(),
            inout("rdi") 0usize => _,
            options(nostack, preserves_flags),
        );
    }
    result
}

#[cfg(not(all(target_arch = "x86_64", not(miri))))]
fn client_request(default: usize, _request: usize, _args: [usize; 5]) -> usize {
    default
}

const VG_RUNNING_ON_VALGRIND: usize = 0x1001;
const VG_CREATE_MEMPOOL: usize = 0x1303;
const VG_DESTROY_MEMPOOL: usize = 0x1304;
const VG_MEMPOOL_ALLOC: usize = 0x1305;
const VG_MEMPOOL_FREE: usize = 0x1306;
/// memcheck.h: VG_USERREQ_TOOL_BASE('M','C') + 2.
const VG_MAKE_MEM_DEFINED: usize = (((b'M' as usize) << 24) | ((b'C' as usize) << 16)) + 2;

fn vg(request: usize, a: usize, b: usize, c: usize) {
    client_request(0, request, [a, b, c, 0, 0]);
}

// Weak references to ASan's functions: the dynamic linker resolves them at
// load time, to null when no object of the process defines them (and a
// static link does so at link time).
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
core::arch::global_asm!(
    ".weak __asan_poison_memory_region",
    ".weak __asan_unpoison_memory_region",
);

/// ASan's poisoning functions, if its runtime is in the process.
///
/// Read from weak references rather than with `dlsym`: a `dlsym` that finds
/// nothing makes glibc format an error message with `malloc`, which under
/// the LD_PRELOAD malloc is the preload itself, in the middle of creating
/// its first pool (three nested blocks, ten system calls per process).
#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri)))]
fn find_asan() -> Option<(AsanFn, AsanFn)> {
    let (p, u): (*const (), *const ());
    // SAFETY: loads the two GOT slots of the weak references, which the
    // dynamic linker fills in before any code of this module runs (or the
    // static linker, with null). Reads memory only.
    unsafe {
        core::arch::asm!(
            "mov {p}, qword ptr [rip + __asan_poison_memory_region@GOTPCREL]",
            "mov {u}, qword ptr [rip + __asan_unpoison_memory_region@GOTPCREL]",
            p = out(reg) p,
            u = out(reg) u,
            options(nostack, readonly, preserves_flags, pure),
        );
    }
    if p.is_null() || u.is_null() {
        return None;
    }
    // SAFETY: both are ASan's `void f(void const volatile *, size_t)`.
    unsafe {
        Some((
            core::mem::transmute::<*const (), AsanFn>(p),
            core::mem::transmute::<*const (), AsanFn>(u),
        ))
    }
}

#[cfg(all(not(miri), not(all(target_arch = "x86_64", target_os = "linux"))))]
fn find_asan() -> Option<(AsanFn, AsanFn)> {
    // SAFETY: dlsym only reads the symbol tables; the names are literals.
    // A static musl program has no dynamic symbols: dlsym returns NULL.
    unsafe {
        let p = libc::dlsym(libc::RTLD_DEFAULT, c"__asan_poison_memory_region".as_ptr());
        let u = libc::dlsym(
            libc::RTLD_DEFAULT,
            c"__asan_unpoison_memory_region".as_ptr(),
        );
        if p.is_null() || u.is_null() {
            return None;
        }
        // SAFETY: both are ASan's `void f(void const volatile *, size_t)`.
        Some((
            core::mem::transmute::<*mut libc::c_void, AsanFn>(p),
            core::mem::transmute::<*mut libc::c_void, AsanFn>(u),
        ))
    }
}

#[cfg(miri)]
fn find_asan() -> Option<(AsanFn, AsanFn)> {
    None
}

/// Once, at the registry's initialisation: finds valgrind and ASan, and
/// registers the `POOL_STATS=1` dump at exit.
/// Whether the valgrind tool running us is memcheck, the one that needs the
/// mempool requests (callgrind and cachegrind must see the plain path, so
/// that their counts are those of a normal run): valgrind preloads each
/// tool's own library, named after it.
fn under_memcheck() -> bool {
    // SAFETY: getenv returns null or a NUL-terminated string of the
    // environment (no allocation: this may run inside the LD_PRELOAD malloc).
    let p = unsafe { libc::getenv(c"LD_PRELOAD".as_ptr()) };
    // SAFETY: as above.
    !p.is_null()
        && unsafe { core::ffi::CStr::from_ptr(p) }
            .to_bytes()
            .windows(b"vgpreload_memcheck".len())
            .any(|w| w == b"vgpreload_memcheck")
}

pub(crate) fn init() {
    let mut tools = 0;
    if client_request(0, VG_RUNNING_ON_VALGRIND, [0; 5]) != 0 && under_memcheck() {
        tools |= TOOL_VALGRIND;
    }
    if let Some(f) = find_asan() {
        let _ = ASAN_POISON.set(f);
        tools |= TOOL_ASAN;
    }
    TOOLS.store(tools, Relaxed);
    if crate::options::profiling() && !crate::profile::enable() {
        // No memory for the tables: profiling stays off.
        crate::options::set_profiling(false);
    }
    if crate::options::stats_at_exit() {
        // SAFETY: registering a function that lives as long as the library
        // (glibc runs handlers of a shared object at its dlclose).
        unsafe { libc::atexit(stats_at_exit) };
    }
}

/// `POOL_STATS=1`: the pools on stderr at exit, and the memory profile
/// when profiling was on. The dumps format on the stack, write with
/// write(2) and map their tables with mmap: they call no malloc, which may
/// be torn down by now.
extern "C" fn stats_at_exit() {
    crate::registry::dump_sorted(2, crate::registry::DumpOrder::Unsorted, 0);
    if crate::profile::recorded() {
        crate::registry::dump_profile(2, PROFILE_AT_EXIT);
    }
}

/// Call sites `POOL_STATS=1` prints at exit when profiling was on.
const PROFILE_AT_EXIT: usize = 30;

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

/// An idle object about to go back to the backing allocator: its bytes
/// become ordinary memory again for ASan (a later mapping at this address
/// must not inherit the poison).
pub(crate) fn before_release(pool: &Pool, base: NonNull<u8>) {
    if pool.debug & crate::options::DBG_ASAN != 0 {
        if let Some((_, unpoison)) = ASAN_POISON.get() {
            // SAFETY: the object's bytes are ours, of at least this size.
            unsafe { unpoison(base.as_ptr().add(pool.layout.user), pool.size) };
        }
    }
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
        if let Some((_, unpoison)) = ASAN_POISON.get() {
            // SAFETY: the caller's bytes of an object we own.
            unsafe { unpoison(user, pool.size) };
        }
    }
}

fn make_inaccessible(pool: &Pool, user: *mut u8) {
    if pool.debug & DBG_MEMCHECK != 0 {
        vg(VG_MEMPOOL_FREE, anchor(pool), user as usize, 0);
    }
    if pool.debug & crate::options::DBG_ASAN != 0 {
        if let Some((poison, _)) = ASAN_POISON.get() {
            // SAFETY: the caller's bytes of an object we own.
            unsafe { poison(user, pool.size) };
        }
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
        // All but the key word, which says the object is free (and which a
        // second free must still find: the double-free check follows).
        let key = crate::thread_cache::KEY_OFFSET;
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
        let owner = crate::registry::pool_at(tag).or_else(|| crate::registry::pool_at(!tag));
        match owner {
            Some(other) if !core::ptr::eq(other, pool) => {
                let _ = writeln!(
                    line,
                    "libpools:   the object belongs to pool \"{}\" ({}), not to pool \"{}\"",
                    other.name().to_str().unwrap_or("?"),
                    if crate::registry::pool_at(tag).is_some() {
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

    #[test]
    fn client_requests_are_harmless_outside_valgrind() {
        assert_eq!(client_request(7, VG_RUNNING_ON_VALGRIND, [0; 5]), 7);
    }
}
