//! Process-wide settings, read once from the environment when the first
//! pool is created and changeable through the C API afterwards.
//!
//! - `POOL_CACHE_SIZE`: per-thread cache budget in bytes (suffix `k` or `m`
//!   allowed), default 512 KiB.
//! - `POOL_SHARED_CACHE`: `xchg` (the default self-locked shared cache) or
//!   `none` (what overflows a thread cache goes back to the allocator).

use core::ffi::CStr;
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicBool, AtomicUsize};

/// Default per-thread cache budget in bytes (HAProxy's default).
pub const POOL_DEFAULT_CACHE_SIZE: usize = 512 * 1024;

// Relaxed everywhere below: each setting is one independent word; a thread
// that sees the old value for a moment still keeps every invariant.
static CACHE_SIZE: AtomicUsize = AtomicUsize::new(POOL_DEFAULT_CACHE_SIZE);
static SHARED_CACHE: AtomicBool = AtomicBool::new(true);

/// The per-thread cache budget in bytes.
#[inline]
pub fn cache_size() -> usize {
    CACHE_SIZE.load(Relaxed)
}

pub fn set_cache_size(bytes: usize) {
    CACHE_SIZE.store(bytes, Relaxed);
}

#[inline]
pub(crate) fn shared_cache_enabled() -> bool {
    SHARED_CACHE.load(Relaxed)
}

/// The shared-cache variant's name.
pub fn shared_cache_name() -> &'static str {
    if shared_cache_enabled() {
        "xchg"
    } else {
        "none"
    }
}

/// Selects the shared-cache variant by name; `false` for an unknown name.
/// The registry allows it only before the first pool exists.
pub(crate) fn set_shared_cache(name: &[u8]) -> bool {
    match name {
        b"xchg" => SHARED_CACHE.store(true, Relaxed),
        b"none" => SHARED_CACHE.store(false, Relaxed),
        _ => return false,
    }
    true
}

/// Reads the environment (once, from the registry's initialisation).
pub(crate) fn load_env() {
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

fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated; getenv returns null or a string
    // that lives as long as the environment is not modified, which a
    // library reading it once at start-up accepts as every libc user does.
    let v = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    (!v.is_null()).then(|| unsafe { CStr::from_ptr(v) }.to_bytes())
}

fn warn(name: &CStr, value: &[u8]) {
    let mut line = crate::registry::Line::new();
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
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size(b"4096"), Some(4096));
        assert_eq!(parse_size(b"64k"), Some(65536));
        assert_eq!(parse_size(b"2M"), Some(2 << 20));
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"k"), None);
        assert_eq!(parse_size(b"12x"), None);
        assert_eq!(parse_size(b"-1"), None);
        assert_eq!(parse_size(b"99999999999999999999999"), None);
    }
}
