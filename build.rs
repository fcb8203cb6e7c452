//! Generates `include/pools.h` from the sources with cbindgen.
//!
//! The header is committed. `make check-header` (part of `make test`) fails
//! when the committed header differs from what the sources generate, so the
//! C contract cannot drift silently.

use std::{env, path::PathBuf};

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    // `POOLS_HEADER_OUT` lets the drift check generate into a scratch file.
    let out = env::var_os("POOLS_HEADER_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir.join("include/pools.h"));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=POOLS_HEADER_OUT");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write_to_file(out);
}
