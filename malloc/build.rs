//! Link options of `libpools_malloc.so`, for a cheaper load into every
//! process it is preloaded into.
//!
//! `-Bsymbolic-functions`: the library's own calls to functions it exports
//! (std's allocator and the core call `posix_memalign`, `realloc`,
//! `malloc_trim`) are bound at link time instead of by a symbol lookup at
//! each load (2,200 instructions per process). The lookup found the preload
//! itself anyway, which comes first, unless the program defined a malloc of
//! its own: then the pools no longer call it.
//!
//! `-z pack-relative-relocs`, where the glibc linked against loads it
//! (2.36 and later): the relocations of the library's own pointers take
//! 224 bytes instead of 17 KiB, in the read-only segment that every process
//! maps whole (see below): four pages fewer in each.
//!
//! The unwinder is linked statically. Rust's std on linux-gnu asks for
//! `-lgcc_s`, so the preload would make every process it is preloaded into
//! find, map and relocate `libgcc_s.so.1`, which programs written in C
//! rarely load: 7 page faults and 18,000 instructions per process (`true`, `git --version`). With
//! `panic = "abort"` the unwinder only serves the backtrace of a panic
//! message, so the static archive does as well.
//!
//! How: a directory searched before the compiler's own holds a
//! `libgcc_s.so` that is a linker script naming `libgcc_eh.a`, the static
//! unwinder that `gcc -static-libgcc` uses. Its symbols stay local (rustc's
//! version script exports only the C entry points). Only the cdylib is linked
//! this way; where the compiler does not know `libgcc_eh.a`, nothing changes.
//!
//! The code a process runs of the library sits together, in a segment of
//! its own: a linker script (`INSERT BEFORE .text`, so it only adds to the
//! default one) gathers crtbegin's hooks, the PLT, the atfork stub and the
//! functions that programs run (`hot-functions.txt`, written by
//! scripts/hot-functions.sh from callgrind profiles: about 53 KiB) into one
//! output section at the start of the code; the unwinding tables, which
//! only the unwinder reads (for a panic's backtrace, and the memory
//! profile's call sites), follow as a read-only segment, with the
//! constants of std and of the backtrace's crates (only reports and
//! backtraces read them; std's `Once` reads one table, which stays in
//! front); then the rest of the code. The kernel maps a file's cached
//! pages around each fault (its fault-around window, 64 KiB, or the whole
//! large folio of the page cache, which can be larger in a file just
//! written), but never past
//! the mapping of the segment: so a process has at most the hot segment's
//! pages of the code resident, plus a window of the rest for each part of
//! it that it runs, and the read-only segment that the loader reads (the
//! symbols, the relocations, the constants) is not followed by pages that
//! only a backtrace reads (BENCHMARKS.md, issue #19). The hot segment
//! starts at a 64 KiB boundary (of addresses and of the file: the zeros
//! between are in no segment), so that one fault-around window holds it
//! all: one page fault maps it. Only the order changes, not the code.
//!
//! The same for the zero-initialised data: a second script gathers the
//! statics a process writes at start-up and in the fork handlers (a few
//! KiB, and the states of the first tags) at the start of the bss, ahead of
//! the large tables that stay untouched or are only read. Each page of the
//! bss costs a fault at its first touch (two when it is read first: the
//! zero page, then a copy), and in the parent and the child again after a
//! fork if the handlers write to it.

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let var = |k: &str| env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" {
        return;
    }
    println!("cargo:rustc-link-arg-cdylib=-Wl,-Bsymbolic-functions");
    // Never unloaded, as libpools.so (see its build.rs): the thread caches'
    // destructor is the library's code.
    println!("cargo:rustc-link-arg-cdylib=-Wl,-z,nodelete");
    if var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    if glibc_has_relr(&cc) {
        println!("cargo:rustc-link-arg-cdylib=-Wl,-z,pack-relative-relocs");
    }
    let out_dir = PathBuf::from(var("OUT_DIR"));
    println!("cargo:rerun-if-changed=hot-functions.txt");
    let hot = fs::read_to_string("hot-functions.txt").unwrap_or_default();
    let order = out_dir.join("order.ld");
    if fs::write(&order, order_script(&hot)).is_ok() {
        println!("cargo:rustc-link-arg-cdylib=-Wl,-T,{}", order.display());
    }
    let order_bss = out_dir.join("order-bss.ld");
    if fs::write(&order_bss, ORDER_BSS).is_ok() {
        println!("cargo:rustc-link-arg-cdylib=-Wl,-T,{}", order_bss.display());
    }
    let Ok(out) = Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    // The compiler prints the bare name when it has no such file.
    let eh = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !eh.is_absolute() || !eh.is_file() {
        return;
    }
    let dir = out_dir.join("static-libgcc");
    let script = format!("INPUT({})\n", eh.display());
    if fs::create_dir_all(&dir).is_err() || fs::write(dir.join("libgcc_s.so"), script).is_err() {
        return;
    }
    println!("cargo:rustc-link-arg-cdylib=-L{}", dir.display());
}

/// Whether the glibc that `cc` links against loads packed relative
/// relocations (DT_RELR, glibc 2.36 and later): the library then asks for
/// its `GLIBC_ABI_DT_RELR` version, which an older loader refuses.
fn glibc_has_relr(cc: &str) -> bool {
    let Ok(out) = Command::new(cc).arg("-print-file-name=libc.so.6").output() else {
        return false;
    };
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let needle = b"GLIBC_ABI_DT_RELR";
    out.status.success()
        && fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
}

/// The hot segment's code (see the crate docs above): the functions `hot`
/// names (scripts/hot-functions.sh: the symbol patterns of what programs
/// run, one a line), then the unwinding tables and the rest of the code.
/// Section names are rustc's function sections: `.text.` or
/// `.text.unlikely.` (cold functions) and the symbol.
fn order_script(hot: &str) -> String {
    let mut s = String::from(ORDER_START);
    for p in hot.lines().map(str::trim) {
        if !p.is_empty() && !p.starts_with('#') {
            s += &format!("    *(.text.{p} .text.unlikely.{p})\n");
        }
    }
    s + ORDER_REST
}

/// The start of [`order_script`]: the one table of std's constants that a
/// process reads (`Once`'s), kept out of the cold ones at the end and so
/// in the first read-only segment; the loader's hooks at a 64 KiB boundary,
/// then the hot output section: crtbegin's hooks (run at load), the PLT
/// and the `pthread_atfork` stub.
const ORDER_START: &str = "\
SECTIONS
{
  .rodata.pools : { *(.rodata.*4once5futex*) }
  .init : ALIGN(0x10000) { KEEP(*(SORT_NONE(.init))) }
  .fini : { KEEP(*(SORT_NONE(.fini))) }
  .text.pools :
  {
    *crtbeginS.o(.text .text.*)
    *(.plt .iplt)
    *libc_nonshared.a:*(.text .text.*)
";

/// The end of [`order_script`]: the C entry points (hot whatever the
/// profiles say), the read-only unwinding tables between the hot code and
/// the rest (a segment boundary: the linker starts a new segment where the
/// sections' permissions change) with the cold constants (see the crate
/// docs; `c-tests/malloc/test_cold_pages.c` fails if a program reads any
/// of that segment), and the rest of the code, the library's
/// own first: a path that no profile took finds its neighbours in the same
/// fault-around window. The unwinder's index of the tables
/// (`.eh_frame_hdr`) stays in front of all code, where the linker sorts it
/// right (by address as an unsigned offset from the index).
const ORDER_REST: &str = "\
    *(.text.malloc .text.free .text.calloc .text.realloc)
  }
  .eh_frame : { KEEP(*(.eh_frame)) *(.eh_frame.*) }
  .gcc_except_table : { *(.gcc_except_table .gcc_except_table.*) }
  .rodata.pools_cold :
  {
    *pools_malloc.std-*(.rodata .rodata.*)
    *pools_malloc.rustc_demangle-*(.rodata .rodata.*)
    *pools_malloc.miniz_oxide-*(.rodata .rodata.*)
    *pools_malloc.gimli-*(.rodata .rodata.*)
    *pools_malloc.addr2line-*(.rodata .rodata.*)
    *libgcc_eh.a:*(.rodata .rodata.*)
  }
  .text.pools_rest : { *(.text.*pools* .text.*once_cell*) }
}
INSERT BEFORE .text;
";

/// The zero-initialised statics a process writes (see the crate docs
/// above), first in the bss and in this order: the class pools' table
/// (`malloc` reads it first; its start shares the last page of `.data`,
/// which the loader has written already, so reading it faults nothing) and
/// the counts of objects lent to classes without a pool, crtbegin's flag,
/// the small ones (locks, flags, the registry, the fork state, the large
/// cache, whether `canary` is on), the tags' sizes and geometry, from a
/// page boundary the tags' states, of which the first, the malloc's
/// classes, are in use (2.3 KiB: one page, wherever the statics before them
/// end), and last, from a page boundary, the 256 KiB table of pool handles,
/// whose first rows (a page) are the class pools'. Everything else (the
/// first metadata chunks and thread cache, the region map's first leaf and
/// root, the chunks of the tags' other carving slots) follows in the
/// default `.bss` and in sections of its own. Legacy-mangled names of this
/// workspace's statics, v0-mangled std's.
const ORDER_BSS: &str = "\
SECTIONS
{
  .bss.pools :
  {
    *(.bss.*12pools_malloc5POOLS* .bss.*12pools_malloc8BORROWED*)
    *crtbeginS.o(.bss)
    *(.bss.*5pools4fork* .bss.*5pools4sync* .bss.*5pools8registry*)
    *(.bss.*5pools4meta* .bss.*5pools4head7UPCALLS* .bss.*5pools4head8DESTROYS*)
    *(.bss.*5pools2os*)
    *(.bss.*5pools7options* .bss.*5pools5links* .bss.*5pools7backing*)
    *(.bss.*5pools8checkers* .bss.*5pools12thread_cache*)
    *(.bss.*4span7reserve* .bss.*4span9FORK_HELD* .bss.*6region14HEADER_READERS*)
    *(.bss.*12pools_malloc5large* .bss.*12pools_malloc6canary5STATE* .bss.*12pools_malloc6canary6SECRET*)
    *(.bss.*3std9panicking* .bss.*3std5alloc* .bss.*3std3sys12thread_local*)
    *(.bss.*4span5SIZES* .bss.*4span8GEOMETRY*)
    . = ALIGN(0x1000);
    *(.bss.*4span4TAGS*)
    . = ALIGN(0x1000);
    *(.bss.*5pools4head7HANDLES*)
  }
}
INSERT BEFORE .bss;
";
