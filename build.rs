//! Generates the C header from the sources with cbindgen, into
//! `$OUT_DIR/pools.h`.
//!
//! The build never writes `include/pools.h`: that file is committed, and the
//! C tests, the demo, the benchmarks and `make install` use it.
//! `make check-header` (part of `make test`) fails when it differs from the
//! generated header; `make header` copies the generated header over it.

use std::{env, fs, path::PathBuf};

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("pools.h");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=include/pools.h");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write_to_file(&out);
    let generated = fs::read(&out).expect("the generated header is readable");
    if fs::read(crate_dir.join("include/pools.h")).ok().as_ref() != Some(&generated) {
        println!(
            "cargo:warning=include/pools.h differs from the header the sources generate \
             ({}): run `make header` and commit it",
            out.display()
        );
    }
    // Never unloaded (dlclose leaves it mapped): each thread's cache is given
    // back by a pthread key's destructor (src/thread_cache.rs), which runs at
    // that thread's end, whenever that is.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
