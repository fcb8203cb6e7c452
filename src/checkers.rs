//! The memory checkers a process may run under: valgrind's client requests
//! (a no-op sequence of instructions outside valgrind) and ASan's poisoning
//! functions, found once at start-up.

use crate::options::DBG_MEMCHECK;
use core::sync::atomic::AtomicU8;
use core::sync::atomic::Ordering::Relaxed;

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
pub(crate) const VG_CREATE_MEMPOOL: usize = 0x1303;
pub(crate) const VG_DESTROY_MEMPOOL: usize = 0x1304;
pub(crate) const VG_MEMPOOL_ALLOC: usize = 0x1305;
pub(crate) const VG_MEMPOOL_FREE: usize = 0x1306;
/// memcheck.h: VG_USERREQ_TOOL_BASE('M','C') + 2.
pub(crate) const VG_MAKE_MEM_DEFINED: usize =
    (((b'M' as usize) << 24) | ((b'C' as usize) << 16)) + 2;

pub(crate) fn vg(request: usize, a: usize, b: usize, c: usize) {
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

/// Finds valgrind's memcheck and ASan, once, before any pool exists (the
/// registry's initialisation).
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
}

/// Marks `len` bytes at `p` unaddressable for ASan (nothing without it).
pub(crate) fn asan_poison(p: *const u8, len: usize) {
    if let Some((poison, _)) = ASAN_POISON.get() {
        // SAFETY: ASan's function only updates its shadow memory for the
        // range, which the caller owns.
        unsafe { poison(p, len) };
    }
}

/// Marks `len` bytes at `p` addressable again for ASan.
pub(crate) fn asan_unpoison(p: *const u8, len: usize) {
    if let Some((_, unpoison)) = ASAN_POISON.get() {
        // SAFETY: as in `asan_poison`.
        unsafe { unpoison(p, len) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn client_requests_are_harmless_outside_valgrind() {
        assert_eq!(client_request(7, VG_RUNNING_ON_VALGRIND, [0; 5]), 7);
    }
}
