//! Process-wide settings, read once from the environment when the first
//! pool is created and changeable through the C API afterwards.
//!
//! - `POOL_CACHE_SIZE`: per-thread cache budget in bytes (suffix `k` or `m`
//!   allowed), default 512 KiB.
//! - `POOL_SHARED_CACHE`: the shared-cache variant, [`SharedMode`]: `xchg`
//!   (the default self-locked heads), `none` (what overflows a thread cache
//!   goes back to the allocator), and the earlier designs kept only to be
//!   measured and to show the race they had: `dwcas`, `rwlock`, `locked`.
//! - `POOL_SHARED_BUCKETS`: how many buckets (heads) each pool's shared
//!   cache spreads its clusters over, for every variant: 1, 2 or 4 (the
//!   default). 1 gives each variant a single head, the seed's layout.
//! - `POOL_BACKEND`: where pools of small objects get memory: `spans` (the
//!   default: mmap'd spans that go back to the OS once empty, see `span`)
//!   or `malloc` (the libc's, or a malloc preloaded underneath the pools).
//! - `POOL_DEBUG`: a comma list of debugging options, [`set_debugging`]
//!   (HAProxy's `-dM` words; `help` lists them).
//! - `POOL_STATS=1`: `pool_dump` to stderr at exit (see `registry::init`),
//!   with the memory profile when profiling is on.
//! - `POOL_PROFILE=1`: memory profiling by call site from the start
//!   ([`set_profiling`], `profile`).
//! - `POOL_FAIL_SEED`: the seed of the `fail=N` draws (a run with the same
//!   seed and the same sequence of calls fails the same calls).
//! - `POOL_TRIM=0`: `pool_gc` does not ask the allocator underneath to
//!   return memory (`malloc_trim`, jemalloc's purge): on a large
//!   fragmented heap that call can stall the program for long.
//! - `POOL_RACE_WINDOW`: test-only; spins this many times (and yields) in a
//!   shared-cache take between getting the head and reading its `next`, to
//!   make the legacy `dwcas` race likely within a short test.

use core::ffi::CStr;
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize};

/// Buckets a shared cache has room for: the most `POOL_SHARED_BUCKETS` allows.
pub(crate) const MAX_SHARED_BUCKETS: usize = 4;

/// Default per-thread cache budget in bytes (HAProxy's default).
pub const POOL_DEFAULT_CACHE_SIZE: usize = 512 * 1024;

// Relaxed everywhere below: each setting is one independent word; a thread
// that sees the old value for a moment still keeps every invariant (the
// shared mode, the bucket count and the backend are fixed per pool before
// the pool is published).
static CACHE_SIZE: AtomicUsize = AtomicUsize::new(POOL_DEFAULT_CACHE_SIZE);
static SHARED_MODE: AtomicU8 = AtomicU8::new(SharedMode::Xchg as u8);
static SHARED_BUCKETS: AtomicUsize = AtomicUsize::new(MAX_SHARED_BUCKETS);
static RACE_WINDOW: AtomicU32 = AtomicU32::new(0);
/// `POOL_STATS=1`: print `pool_dump` to stderr when the process exits.
static STATS_AT_EXIT: AtomicBool = AtomicBool::new(false);
/// Debugging options: the failure rate in percent (`FAIL_MASK`), the
/// `DBG_*` flags, and the poison byte (`POISON_SHIFT`). One word, so that
/// `set_debugging` changes all of them at once.
static DEBUG: AtomicU32 = AtomicU32::new((b'P' as u32) << POISON_SHIFT);
/// `POOL_BACKEND=malloc`: pools of small objects use malloc, not spans.
static SPANS_OFF: AtomicBool = AtomicBool::new(false);
/// Memory profiling is on (`POOL_PROFILE=1`, `pool_set_profiling`).
static PROFILING: AtomicBool = AtomicBool::new(false);
/// `POOL_TRIM=0` clears it: `pool_gc` skips the allocator's trim.
static TRIM: AtomicBool = AtomicBool::new(true);
/// `POOL_FAIL_SEED`: where the `fail=N` draws start.
static FAIL_SEED: AtomicU32 = AtomicU32::new(0x1234_5678);

/// `fail=N` is at most 100: seven bits.
const FAIL_MASK: u32 = 0x7f;
/// `canary`: not a pool flag; the LD_PRELOAD malloc reads it at its start
/// (see `malloc/src/canary.rs`); pools of the C API created while it is set
/// take `tag`, the word after each object.
const DBG_CANARY: u32 = 1 << 7;
const DEBUG_UAF: u32 = 1 << 8;
/// `no-merge`: POOL_F_SHARED pools merge only with a pool of the same name.
const DBG_NO_MERGE: u32 = 1 << 9;
/// `cold-first`: the thread cache hands out its oldest object of the pool.
pub(crate) const DBG_COLD_FIRST: u32 = 1 << 10;
/// `integrity`: cached objects are filled with a pattern, checked on reuse.
pub(crate) const DBG_INTEGRITY: u32 = 1 << 11;
/// `no-global`: no shared cache; what leaves a thread cache is released.
pub(crate) const DBG_NO_GLOBAL: u32 = 1 << 12;
/// `no-cache`: no thread cache; freed objects go to the shared cache.
pub(crate) const DBG_NO_CACHE: u32 = 1 << 13;
/// `caller`: the last alloc and free call sites are kept after the object.
pub(crate) const DBG_CALLER: u32 = 1 << 14;
/// `tag`: a word after the object names its pool (and whether it is free).
pub(crate) const DBG_TAG: u32 = 1 << 15;
/// `poison`: new allocations are filled with the poison byte.
pub(crate) const DBG_POISON: u32 = 1 << 16;
/// `backup`: a copy of a freed object is kept and compared on reuse.
pub(crate) const DBG_BACKUP: u32 = 1 << 17;
/// Not an option: set on every pool when valgrind or ASan is detected
/// (`checkers::tool_flags`), so that cached objects are made inaccessible.
pub(crate) const DBG_MEMCHECK: u32 = 1 << 18;
/// Not an option: set on every pool when the host program is built with
/// AddressSanitizer, so that cached objects are poisoned.
pub(crate) const DBG_ASAN: u32 = 1 << 19;
/// Not a pool flag: a pool whose `Pool::debug_live` has it draws for
/// `fail=N` at the top of its alloc path (set on every pool while a rate is
/// set, see [`runtime_debug`]).
pub(crate) const DBG_FAIL: u32 = 1 << 20;
/// Not a pool flag: a pool whose `Pool::debug_live` has it records its
/// calls in the memory profile (set on every pool while profiling is on).
pub(crate) const DBG_PROFILE: u32 = 1 << 21;
/// `zero-on-free`: a freed object's bytes are zeroed (all but the key word
/// the caches keep at `head::KEY_OFFSET`).
pub(crate) const DBG_ZERO_ON_FREE: u32 = 1 << 22;
/// `random-order`: not a pool flag; spans carved while it is set hand out
/// their objects in a random order (see `span`).
const DBG_RANDOM_ORDER: u32 = 1 << 23;
/// The bits `Pool::enable_debug` may add to a live pool: they change no
/// object's layout and no cache's behaviour.
pub(crate) const DBG_RUNTIME: u32 = DBG_FAIL | DBG_PROFILE;
/// The flags a pool copies when it is created (`Pool::debug`).
pub(crate) const DBG_POOL_FLAGS: u32 = DBG_COLD_FIRST
    | DBG_INTEGRITY
    | DBG_NO_GLOBAL
    | DBG_NO_CACHE
    | DBG_CALLER
    | DBG_TAG
    | DBG_POISON
    | DBG_BACKUP
    | DBG_ZERO_ON_FREE;
const POISON_SHIFT: u32 = 24;

/// The flag words, their opposites and their help lines, HAProxy's `-dM`
/// names and meanings.
const FLAG_WORDS: [(u32, &str, &str, &str); 13] = [
    (
        DBG_NO_MERGE,
        "no-merge",
        "merge",
        "POOL_F_SHARED pools merge only with a pool of the same name",
    ),
    (
        DBG_COLD_FIRST,
        "cold-first",
        "hot-first",
        "the thread cache hands out its oldest object first (hot-first: newest)",
    ),
    (
        DBG_INTEGRITY,
        "integrity",
        "no-integrity",
        "fill cached objects with a changing pattern, check it on reuse:\n\
      \x20            a write after free (or a double free) aborts",
    ),
    (
        DBG_NO_GLOBAL,
        "no-global",
        "global",
        "no shared cache: objects leaving a thread cache are released",
    ),
    (
        DBG_NO_CACHE,
        "no-cache",
        "cache",
        "no thread cache: pool_free goes to the shared cache",
    ),
    (
        DBG_CALLER,
        "caller",
        "no-caller",
        "keep the last alloc and free call sites, print them on errors",
    ),
    (
        DBG_TAG,
        "tag",
        "no-tag",
        "a word after each object names its pool: a free into the wrong\n\
      \x20            pool, a double free or an overflow onto it aborts",
    ),
    (
        DBG_POISON,
        "poison",
        "no-poison",
        "fill new allocations with the poison byte (poison=0xNN sets it,\n\
      \x20            default 0x50 'P')",
    ),
    (
        DEBUG_UAF,
        "uaf",
        "no-uaf",
        "one guarded mapping per object, unmapped when released to the\n\
      \x20            system; implies no-cache,no-global (so that happens at\n\
      \x20            pool_free) unless cache or global follows it in the list",
    ),
    (
        DBG_BACKUP,
        "backup",
        "no-backup",
        "keep a copy of each freed object, compare it on reuse: a write\n\
      \x20            after free aborts",
    ),
    (
        DBG_ZERO_ON_FREE,
        "zero-on-free",
        "no-zero-on-free",
        "zero each freed object (what a use after free reads is gone)",
    ),
    (
        DBG_CANARY,
        "canary",
        "no-canary",
        "the LD_PRELOAD malloc (read at its start): each block between a\n\
      \x20            sealed header and a canary, checked on free and realloc,\n\
      \x20            and a freed block's marks checked on reuse; C API pools: tag",
    ),
    (
        DBG_RANDOM_ORDER,
        "random-order",
        "no-random-order",
        "spans carved from now on hand out their objects in a random order",
    ),
];

/// Whether memory profiling is on.
#[inline]
pub(crate) fn profiling() -> bool {
    PROFILING.load(Relaxed)
}

/// Switches memory profiling on or off (the registry marks the pools).
pub(crate) fn set_profiling(on: bool) {
    PROFILING.store(on, Relaxed);
}

/// Whether `pool_gc` may ask the allocator underneath to trim.
pub(crate) fn trim_enabled() -> bool {
    TRIM.load(Relaxed)
}

/// The seed of the `fail=N` draws.
pub(crate) fn fail_seed() -> u32 {
    FAIL_SEED.load(Relaxed)
}

/// The bits of `Pool::debug_live` that the settings ask of every pool now,
/// on top of its creation flags: `DBG_FAIL` while a failure rate is set,
/// `DBG_PROFILE` while profiling is on.
pub(crate) fn runtime_debug() -> u32 {
    (if fail_rate() != 0 { DBG_FAIL } else { 0 }) | (if profiling() { DBG_PROFILE } else { 0 })
}

/// Whether `POOL_STATS=1` asked for a dump at exit.
pub(crate) fn stats_at_exit() -> bool {
    STATS_AT_EXIT.load(Relaxed)
}

/// The per-thread cache budget in bytes.
#[inline]
pub fn cache_size() -> usize {
    CACHE_SIZE.load(Relaxed)
}

pub fn set_cache_size(bytes: usize) {
    CACHE_SIZE.store(bytes, Relaxed);
}

/// How a pool's shared cache is built. Chosen before the first pool exists
/// and fixed for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SharedMode {
    /// Buckets whose heads are locked by `xchg` to BUSY (the default).
    Xchg,
    /// No shared cache: overflow goes back to the backing allocator.
    None,
    /// Legacy: the lockless pop with a double-word CAS of head and sequence
    /// number; reads `head->next` of objects that may be gone. Unsafe by
    /// design, kept to reproduce the seed's crash.
    Dwcas,
    /// Legacy: `dwcas` with a rwlock, read-held by pops and write-held while
    /// flush and gc detach objects (the second seed's fix).
    Rwlock,
    /// Legacy: one mutex around the list.
    Locked,
}

const MODES: [(SharedMode, &str); 5] = [
    (SharedMode::Xchg, "xchg"),
    (SharedMode::None, "none"),
    (SharedMode::Dwcas, "dwcas"),
    (SharedMode::Rwlock, "rwlock"),
    (SharedMode::Locked, "locked"),
];

/// The shared-cache variant in use.
#[inline]
pub fn shared_mode() -> SharedMode {
    let m = SHARED_MODE.load(Relaxed);
    MODES
        .iter()
        .find(|(mode, _)| *mode as u8 == m)
        .map_or(SharedMode::Xchg, |(mode, _)| *mode)
}

/// The shared-cache variant's name.
pub fn shared_cache_name() -> &'static str {
    let m = shared_mode();
    MODES
        .iter()
        .find(|(mode, _)| *mode == m)
        .map_or("?", |(_, n)| n)
}

/// Selects the shared-cache variant by name; `false` for an unknown name.
/// The registry allows it only before the first pool exists.
pub(crate) fn set_shared_cache(name: &[u8]) -> bool {
    match MODES.iter().find(|(_, n)| n.as_bytes() == name) {
        Some((mode, _)) => {
            SHARED_MODE.store(*mode as u8, Relaxed);
            true
        }
        None => false,
    }
}

/// Buckets of a shared cache created now (`POOL_SHARED_BUCKETS`): a power
/// of two, at most [`MAX_SHARED_BUCKETS`].
pub(crate) fn shared_buckets() -> usize {
    SHARED_BUCKETS.load(Relaxed)
}

/// Sets the bucket count from its text; `false` (and no change) unless it
/// is 1, 2 or 4 (a power of two up to the buckets a cache has room for).
fn set_shared_buckets(v: &[u8]) -> bool {
    match parse_size(v) {
        Some(n) if n.is_power_of_two() && n <= MAX_SHARED_BUCKETS => {
            SHARED_BUCKETS.store(n, Relaxed);
            true
        }
        _ => false,
    }
}

/// Test-only: widens the window between getting a shared-cache head and
/// reading its `next` (see `POOL_RACE_WINDOW`). Free when unset.
#[inline]
pub(crate) fn race_window() {
    let spins = RACE_WINDOW.load(Relaxed);
    if spins != 0 {
        widen(spins);
    }
}

#[cold]
fn widen(spins: u32) {
    for _ in 0..spins {
        core::hint::spin_loop();
    }
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// Whether pools created now take one guarded mapping per object (`uaf`).
pub(crate) fn guarded_objects() -> bool {
    DEBUG.load(Relaxed) & DEBUG_UAF != 0
}

/// Whether pools of small objects created now may take their objects from
/// spans (`POOL_BACKEND=spans`, the default) rather than from malloc. A
/// debugging backend ([`guarded_objects`]) takes priority.
///
/// Never under Miri, which cannot unmap part of a mapping (spans are aligned
/// by trimming a larger one): the unit tests run on malloc there.
pub(crate) fn spans_enabled() -> bool {
    !cfg!(miri) && !SPANS_OFF.load(Relaxed)
}

/// Selects the backend of small objects by name (`spans`, `malloc`);
/// `false` for an unknown name.
fn set_backend(name: &[u8]) -> bool {
    match name {
        b"spans" => SPANS_OFF.store(false, Relaxed),
        b"malloc" => SPANS_OFF.store(true, Relaxed),
        _ => return false,
    }
    true
}

/// The injected allocation failure rate, in percent (`fail=N`).
#[inline]
pub(crate) fn fail_rate() -> u32 {
    DEBUG.load(Relaxed) & FAIL_MASK
}

/// The pool-shaping debugging flags of a pool created now (copied into
/// `Pool::debug`), without the failure rate or the poison byte.
pub(crate) fn pool_debug() -> u32 {
    let d = DEBUG.load(Relaxed);
    d & DBG_POOL_FLAGS | if d & DBG_CANARY != 0 { DBG_TAG } else { 0 }
}

/// Whether `canary` is set (see [`DBG_CANARY`]).
pub(crate) fn canary() -> bool {
    DEBUG.load(Relaxed) & DBG_CANARY != 0
}

/// The poison byte of a pool created now (`poison=0xNN`).
pub(crate) fn poison_byte() -> u8 {
    (DEBUG.load(Relaxed) >> POISON_SHIFT) as u8
}

/// Whether `random-order` is set: a span carved now links its objects in
/// a random order.
pub(crate) fn random_order() -> bool {
    DEBUG.load(Relaxed) & DBG_RANDOM_ORDER != 0
}

/// Whether `no-merge` is set: shareable pools merge only by name.
pub(crate) fn no_merge() -> bool {
    DEBUG.load(Relaxed) & DBG_NO_MERGE != 0
}

/// Writes the names of a pool's debugging flags, comma-separated.
pub(crate) fn write_flag_names(w: &mut impl core::fmt::Write, flags: u32) {
    let mut sep = "";
    let tools = [(DBG_MEMCHECK, "valgrind"), (DBG_ASAN, "asan")];
    let words = FLAG_WORDS.iter().map(|(f, set, _, _)| (*f, *set));
    for (_, name) in words.chain(tools).filter(|(f, _)| flags & f != 0) {
        let _ = write!(w, "{sep}{name}");
        sep = ",";
    }
}

/// Prints one line per debugging option, for `help`.
fn print_help() {
    let mut out = crate::line::Line::new();
    let _ = core::fmt::Write::write_str(
        &mut out,
        "libpools POOL_DEBUG / pool_set_debugging options (comma-separated;\n\
         every one but fail applies to the pools created afterwards):\n\
         \x20 fail=N     fail N percent of the pool_alloc calls (and of malloc under\n\
         \x20            the preload), cached objects or not; POOL_FAIL_SEED replays\n\
         \x20 fail       the same as fail=1\n\
         \x20 no-fail    inject no failure (default)\n",
    );
    out.write_to(2);
    for (_, set, clr, help) in FLAG_WORDS {
        let mut line = crate::line::Line::new();
        let _ = core::fmt::Write::write_fmt(
            &mut line,
            format_args!("  {set:<10} {help}\n  {clr:<10} the opposite\n"),
        );
        line.write_to(2);
    }
    write_stderr(
        b"  help       print this list\n\
          HAProxy's presets, for example:\n\
          \x20 detect UAF:                        uaf\n\
          \x20 detect post-cache UAF:             uaf,cache,no-merge,cold-first,integrity,tag,caller\n\
          \x20 detect post-free cache corruption: no-merge,cold-first,integrity,caller\n\
          Memory profiling by call site: POOL_PROFILE=1 or pool_set_profiling(1).\n",
    );
}

/// Applies a comma list of debugging options (`fail=5,tag`). Either every
/// word is known and all apply, or nothing changes and `false` returns.
pub(crate) fn set_debugging(opts: &[u8]) -> bool {
    match parse_debugging(DEBUG.load(Relaxed), opts) {
        Some(debug) => {
            if opts.split(|&b| b == b',').any(|w| w == b"help") {
                print_help();
            }
            DEBUG.store(debug, Relaxed);
            true
        }
        None => false,
    }
}

/// Whether the environment's `POOL_DEBUG` turns `uaf` on, by the parser
/// `load_env` uses, without applying anything.
pub(crate) fn uaf_in_env() -> bool {
    debug_in_env() & DEBUG_UAF != 0
}

/// Whether `uaf` is on now, or was asked for by the environment (the
/// preload reads it there, before any pool exists).
pub(crate) fn uaf_anywhere() -> bool {
    guarded_objects() || uaf_in_env()
}

/// Whether the environment's `POOL_DEBUG` turns `canary` on, as
/// [`uaf_in_env`] does for `uaf`.
pub(crate) fn canary_in_env() -> bool {
    debug_in_env() & DBG_CANARY != 0
}

/// The options of the environment's `POOL_DEBUG` alone (0 when it is
/// unset or refused), read the first time only: the preload asks for
/// `uaf` and for `canary` at its start, and one scan of the environment
/// answers both.
fn debug_in_env() -> u32 {
    /// The answer, with `ENV_READ` set once known.
    static ENV_DEBUG: AtomicU64 = AtomicU64::new(0);
    const ENV_READ: u64 = 1 << 32;
    // Relaxed: one independent word; threads that race both read the same
    // environment and store the same answer.
    let known = ENV_DEBUG.load(Relaxed);
    if known & ENV_READ != 0 {
        return known as u32;
    }
    let d = if any_pool_variable() {
        getenv(c"POOL_DEBUG")
            .and_then(|v| parse_debugging(0, v))
            .unwrap_or(0)
    } else {
        0
    };
    ENV_DEBUG.store(u64::from(d) | ENV_READ, Relaxed);
    d
}

/// `debug` with the options of `opts` applied, or `None` for a bad word.
fn parse_debugging(mut debug: u32, opts: &[u8]) -> Option<u32> {
    for word in opts.split(|&b| b == b',').filter(|w| !w.is_empty()) {
        if let Some((flag, set, _, _)) = FLAG_WORDS
            .iter()
            .find(|(_, set, clr, _)| word == set.as_bytes() || word == clr.as_bytes())
        {
            if word == set.as_bytes() {
                debug |= flag;
                if *flag == DEBUG_UAF {
                    // As in HAProxy: an object must go back to the system
                    // at pool_free for a later access to fault. A `cache`
                    // or `global` later in the list turns them back on.
                    debug |= DBG_NO_CACHE | DBG_NO_GLOBAL;
                }
            } else {
                debug &= !flag;
            }
            continue;
        }
        match word {
            b"no-fail" => debug &= !FAIL_MASK,
            b"fail" => debug = (debug & !FAIL_MASK) | 1,
            b"help" => {}
            _ => {
                if let Some(rate) = word.strip_prefix(b"fail=") {
                    debug = (debug & !FAIL_MASK) | parse_percent(rate)?;
                } else {
                    let byte = parse_byte(word.strip_prefix(b"poison=")?)?;
                    debug = (debug & !(0xff << POISON_SHIFT))
                        | (u32::from(byte) << POISON_SHIFT)
                        | DBG_POISON;
                }
            }
        }
    }
    Some(debug)
}

/// `0x50` or `80`: a byte value.
fn parse_byte(s: &[u8]) -> Option<u8> {
    let s = core::str::from_utf8(s).ok()?;
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u8::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

fn parse_percent(s: &[u8]) -> Option<u32> {
    let n = parse_size(s)?;
    (s.iter().all(u8::is_ascii_digit) && n <= 100).then_some(n as u32)
}

fn write_stderr(bytes: &[u8]) {
    // SAFETY: writing a valid buffer to fd 2; a short or failed write of a
    // help text is acceptable.
    unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
}

/// Reads the environment (once, from the registry's initialisation).
pub(crate) fn load_env() {
    // Most processes set none: one pass over the environment instead of a
    // getenv (a pass each) per variable.
    if !any_pool_variable() {
        return;
    }
    if let Some(v) = getenv(c"POOL_CACHE_SIZE") {
        match parse_size(v) {
            Some(n) => set_cache_size(n),
            None => warn(c"POOL_CACHE_SIZE", v),
        }
    }
    if let Some(v) = getenv(c"POOL_SHARED_CACHE") {
        if !set_shared_cache(v) {
            warn(c"POOL_SHARED_CACHE", v);
        }
    }
    if let Some(v) = getenv(c"POOL_SHARED_BUCKETS") {
        if !set_shared_buckets(v) {
            warn(c"POOL_SHARED_BUCKETS", v);
        }
    }
    if let Some(v) = getenv(c"POOL_BACKEND") {
        if !set_backend(v) {
            warn(c"POOL_BACKEND", v);
        }
    }
    if let Some(v) = getenv(c"POOL_DEBUG") {
        if !set_debugging(v) {
            warn(c"POOL_DEBUG", v);
        }
    }
    if let Some(v) = getenv(c"POOL_STATS") {
        match v {
            b"1" | b"yes" => STATS_AT_EXIT.store(true, Relaxed),
            b"0" | b"no" | b"" => {}
            _ => warn(c"POOL_STATS", v),
        }
    }
    if let Some(v) = getenv(c"POOL_PROFILE") {
        match v {
            b"1" | b"yes" => PROFILING.store(true, Relaxed),
            b"0" | b"no" | b"" => {}
            _ => warn(c"POOL_PROFILE", v),
        }
    }
    if let Some(v) = getenv(c"POOL_TRIM") {
        match v {
            b"0" | b"no" => TRIM.store(false, Relaxed),
            b"1" | b"yes" | b"" => {}
            _ => warn(c"POOL_TRIM", v),
        }
    }
    if let Some(v) = getenv(c"POOL_FAIL_SEED") {
        match parse_size(v).and_then(|n| u32::try_from(n).ok()) {
            Some(n) if v.iter().all(u8::is_ascii_digit) => FAIL_SEED.store(n, Relaxed),
            _ => warn(c"POOL_FAIL_SEED", v),
        }
    }
    if let Some(v) = getenv(c"POOL_RACE_WINDOW") {
        match parse_size(v).and_then(|n| u32::try_from(n).ok()) {
            Some(n) => RACE_WINDOW.store(n, Relaxed),
            None => warn(c"POOL_RACE_WINDOW", v),
        }
    }
}

/// `123`, `64k`, `2m` (binary units).
fn parse_size(s: &[u8]) -> Option<usize> {
    let (digits, unit) = match s.last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1024),
        b'm' | b'M' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = core::str::from_utf8(digits).ok()?.parse::<usize>().ok()?;
    n.checked_mul(unit)
}

/// Whether a variable of the environment starts with `POOL_` (all of
/// `load_env`'s do).
fn any_pool_variable() -> bool {
    #[cfg(miri)]
    return true;
    #[cfg(not(miri))]
    {
        extern "C" {
            static environ: *const *const libc::c_char;
        }
        // SAFETY: `environ` is the libc's array of NUL-terminated strings,
        // ended by null (or null itself); read once at start-up, as getenv
        // would.
        unsafe { has_pool_variable(environ) }
    }
}

/// Whether a string of `env`, an array of strings ended by null (or null),
/// starts with `POOL_`.
///
/// # Safety
/// `env` is null or such an array, each string NUL-terminated.
unsafe fn has_pool_variable(mut env: *const *const libc::c_char) -> bool {
    if env.is_null() {
        return false;
    }
    // SAFETY: per the contract; each string is read up to its first byte
    // that differs from the prefix (at the latest its NUL, which differs
    // from every byte of the prefix).
    unsafe {
        while !(*env).is_null() {
            let e = (*env).cast::<u8>();
            if (0..5).all(|i| *e.add(i) == b"POOL_"[i]) {
                return true;
            }
            env = env.add(1);
        }
    }
    false
}

fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; getenv returns null or a string
    // that lives as long as the environment is not modified, which a
    // library reading it once at start-up accepts as every libc user does.
    let v = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    (!v.is_null()).then(|| unsafe { CStr::from_ptr(v) }.to_bytes())
}

fn warn(name: &CStr, value: &[u8]) {
    let mut line = crate::line::Line::new();
    let _ = core::fmt::Write::write_fmt(
        &mut line,
        format_args!(
            "libpools: ignoring {}={:?}: unknown value, keeping the default\n",
            name.to_str().unwrap_or("?"),
            core::str::from_utf8(value).unwrap_or("?")
        ),
    );
    line.write_to(2);
}

#[cfg(all(test, not(loom)))]
mod tests;
