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
//! The unwinder is linked statically. Rust's std on linux-gnu asks for `-lgcc_s`, so the preload would make
//! every process it is preloaded into find, map and relocate
//! `libgcc_s.so.1`, which programs written in C rarely load: 7 page faults
//! and 18,000 instructions per process (`true`, `git --version`). With
//! `panic = "abort"` the unwinder only serves the backtrace of a panic
//! message, so the static archive does as well.
//!
//! How: a directory searched before the compiler's own holds a
//! `libgcc_s.so` that is a linker script naming `libgcc_eh.a`, the static
//! unwinder that `gcc -static-libgcc` uses. Its symbols stay local (rustc's
//! version script exports only the C entry points). Only the cdylib is linked
//! this way; where the compiler does not know `libgcc_eh.a`, nothing changes.

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let var = |k: &str| env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" {
        return;
    }
    println!("cargo:rustc-link-arg-cdylib=-Wl,-Bsymbolic-functions");
    if var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(cc)
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
    let dir = PathBuf::from(var("OUT_DIR")).join("static-libgcc");
    let script = format!("INPUT({})\n", eh.display());
    if fs::create_dir_all(&dir).is_err() || fs::write(dir.join("libgcc_s.so"), script).is_err() {
        return;
    }
    println!("cargo:rustc-link-arg-cdylib=-L{}", dir.display());
}
