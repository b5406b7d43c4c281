//! Generates `include/rcluster.h` with cbindgen.
//!
//! The header is always generated into `$OUT_DIR/rcluster.h` (the crate
//! embeds it as `GENERATED_HEADER`, and `tests/header.rs` compares it with
//! the committed file). It is also written to `include/rcluster.h`, unless
//! `CI` or `RCLUSTER_CHECK_HEADER` is set: there the committed header must
//! already be current, and the test fails if it is stale.
//!
//! It also gives the shared library its SONAME, `librcluster.so.MAJOR`, so
//! an installed program records the major version it was linked against
//! (`make install` adds the `.so.MAJOR.MINOR.PATCH` file and the symlinks),
//! and puts the version in the header as `RCLUSTER_VERSION_*` macros, taken
//! from Cargo.toml so the two cannot disagree.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rerun-if-env-changed=RCLUSTER_CHECK_HEADER");
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap();
    let patch = std::env::var("CARGO_PKG_VERSION_PATCH").unwrap();
    // Applies to this package's cdylib only (not to the Node addon, which
    // links the rlib into a cdylib of its own).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librcluster.so.{major}");
    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    config.after_includes = Some(format!(
        "\n// The version of this header (the library's own: `rcluster_version()`).\n\
         #define RCLUSTER_VERSION_MAJOR {major}\n\
         #define RCLUSTER_VERSION_MINOR {minor}\n\
         #define RCLUSTER_VERSION_PATCH {patch}"
    ));
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header");
    let generated = out_dir.join("rcluster.h");
    bindings.write_to_file(&generated);
    let check_only = std::env::var_os("CI").is_some() || std::env::var_os("RCLUSTER_CHECK_HEADER").is_some();
    if !check_only {
        let committed = crate_dir.join("include").join("rcluster.h");
        let new = std::fs::read(&generated).unwrap();
        if std::fs::read(&committed).ok().as_deref() != Some(&new[..]) {
            std::fs::create_dir_all(committed.parent().unwrap()).unwrap();
            std::fs::write(&committed, new).unwrap();
        }
    }
}
