//! The thread-local words of the hot path: this thread's cache pointer
//! and, where the hit path reads it, the cache's *bias*.
//!
//! Rust's `thread_local!` in a shared library uses the general-dynamic TLS
//! model: every access calls `__tls_get_addr` (its cost on the hot path is
//! in BENCHMARKS.md). On x86-64 Linux this module puts
//! the words in the *initial-exec* model instead: the symbols live in the
//! module's static TLS block and an access is one GOT load plus one
//! `%fs`-relative load. glibc reserves static TLS for exactly such libraries,
//! even when they are `dlopen`ed; a static link relaxes the access further,
//! to a single `%fs` load. Elsewhere (other targets, Miri, loom) a plain
//! `thread_local!` holds the pointer and there is no bias ([`BIASED`]).
//!
//! The symbols are hidden, so each library that embeds the pools
//! (libpools.so, libpools_malloc.so) has its own words. They carry no
//! destructor: the drain at a thread's end is a pthread key's destructor in
//! `thread_cache`, set only when a cache is created.
//!
//! The pointer is null until the thread has a cache. The bias is a number
//! that the thread cache adds to a pool handle's address to find the
//! pool's entry in this thread's table, with no load from the handle; it
//! is [`NO_CACHE`] until the thread has a cache, which the handles' layout
//! turns into a word that reads as the key of an entry that matches no
//! pool. Its initial value
//! is in the TLS image (`.tdata`), so it needs no relocation.

/// Whether the hit path reads the bias (this target) or the pointer.
pub(crate) const BIASED: bool = cfg!(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(miri),
    not(loom)
));

/// The bias while the thread has no cache: minus 8. Whoever lays out the
/// handles keeps the word in front of each one zero (see `head::Handle`).
pub(crate) const NO_CACHE: usize = 8usize.wrapping_neg();

#[cfg(all(target_arch = "x86_64", target_os = "linux", not(miri), not(loom)))]
mod imp {
    // Two 8-byte, 8-aligned TLS objects (`.tdata`): the cache pointer,
    // initially null, and the bias, initially NO_CACHE.
    core::arch::global_asm!(
        ".pushsection .tdata.pools_tls_word,\"awT\",@progbits",
        ".p2align 3",
        ".globl pools_tls_word",
        ".hidden pools_tls_word",
        ".type pools_tls_word,@object",
        ".size pools_tls_word,8",
        "pools_tls_word:",
        ".quad 0",
        ".globl pools_tls_bias",
        ".hidden pools_tls_bias",
        ".type pools_tls_bias,@object",
        ".size pools_tls_bias,8",
        "pools_tls_bias:",
        ".quad {no_cache}",
        ".popsection",
        no_cache = const super::NO_CACHE,
    );

    /// Loads this thread's copy of the TLS word named `$sym`.
    macro_rules! load {
        ($sym:literal) => {{
            let word: usize;
            // SAFETY: reads this thread's copy of the word: the GOT slot
            // holds its offset from the thread pointer (`%fs` base), which
            // the loader fills in before any code of this module runs.
            // Reads memory only, touches no flags the compiler relies on.
            unsafe {
                core::arch::asm!(
                    concat!("mov {w}, qword ptr [rip + ", $sym, "@GOTTPOFF]"),
                    "mov {w}, qword ptr fs:[{w}]",
                    w = out(reg) word,
                    options(nostack, readonly, preserves_flags, pure),
                );
            }
            word
        }};
    }

    /// This thread's cache pointer (null if none).
    #[inline(always)]
    pub(crate) fn get() -> *mut u8 {
        // The pointer was exposed when it was set.
        core::ptr::with_exposed_provenance_mut(load!("pools_tls_word"))
    }

    /// This thread's bias.
    #[inline(always)]
    pub(crate) fn bias() -> usize {
        load!("pools_tls_bias")
    }

    /// Sets this thread's cache pointer and bias.
    #[inline]
    pub(crate) fn set(cache: *mut u8, bias: usize) {
        let word = cache.expose_provenance();
        // SAFETY: writes this thread's copies of the two words (see `load`);
        // no other thread can address them.
        unsafe {
            core::arch::asm!(
                "mov {off}, qword ptr [rip + pools_tls_word@GOTTPOFF]",
                "mov qword ptr fs:[{off}], {w}",
                "mov {off}, qword ptr [rip + pools_tls_bias@GOTTPOFF]",
                "mov qword ptr fs:[{off}], {b}",
                off = out(reg) _,
                w = in(reg) word,
                b = in(reg) bias,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", not(miri), not(loom))))]
mod imp {
    use core::cell::Cell;

    thread_local! {
        static WORD: Cell<*mut u8> = const { Cell::new(core::ptr::null_mut()) };
    }

    /// This thread's cache pointer (null until it is set, and while the
    /// thread is being torn down).
    #[inline]
    pub(crate) fn get() -> *mut u8 {
        WORD.try_with(Cell::get).unwrap_or(core::ptr::null_mut())
    }

    /// No bias on this target (`BIASED` is false): never read.
    #[inline]
    pub(crate) fn bias() -> usize {
        super::NO_CACHE
    }

    /// Sets this thread's cache pointer (the bias is not kept).
    #[inline]
    pub(crate) fn set(cache: *mut u8, _bias: usize) {
        let _ = WORD.try_with(|w| w.set(cache));
    }
}

pub(crate) use imp::{bias, get, set};
