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

use std::fmt::Write;
use std::path::PathBuf;

/// `src/tables/tables.in.rs` expanded into the header's `#define`s (the crate
/// expands the same file into its enums: one table feeds both; see
/// `src/tables/mod.rs`). cbindgen does not expand macros, so it cannot.
fn table_defines() -> String {
    let mut out = String::new();
    macro_rules! tables {
        ($(
            $(#[doc = $type_doc:literal])*
            enum $type:ident: $what:literal, $text_fn:ident {
                $( $(#[doc = $doc:literal])* $variant:ident = $value:literal, $c_name:ident, $text:literal; )*
            }
        )*) => {{$(
            if $what == "event kinds" {
                out.push_str("// No event (the struct after `rcluster_event_release`).\n#define RCLUSTER_EVENT_NONE 0\n\n");
            }
            $(
                $( writeln!(out, "//{}", $doc).unwrap(); )*
                writeln!(out, "#define {} {}\n", stringify!($c_name), $value).unwrap();
            )*
        )*}};
    }
    // The two values beside the tables: success, and the released event.
    out.push_str("// Success.\n#define RCLUSTER_OK 0\n\n");
    include!("src/tables/tables.in.rs");
    out
}

fn main() {
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=src/tables/tables.in.rs");
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
         #define RCLUSTER_VERSION_PATCH {patch}\n\n{}",
        table_defines().trim_end()
    ));
    write_cffi_header(&crate_dir, &out_dir, &config);
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

/// The Python package's declarations come from a header too: maturin's cffi
/// mode reads `<target dir>/header.h` when it exists, else runs cbindgen
/// itself, which would miss the tables' constants (macro-made, see
/// `table_defines`). So the header is written there as well, in the form
/// cffi parses: no `#include`, include guard or C++ block (the settings
/// maturin would force on its own cbindgen run).
fn write_cffi_header(crate_dir: &std::path::Path, out_dir: &std::path::Path, config: &cbindgen::Config) {
    // OUT_DIR is <target dir>/[<triple>/]<profile>/build/<package>-<hash>/out
    // (the triple only with --target). Not found through CACHEDIR.TAG: cargo
    // writes that only into a target dir it creates, and `make test` creates
    // target/ first (target/cli-deps), so a clean clone had none and the
    // Python package was built without the tables' constants.
    let Some(mut target_dir) = out_dir.ancestors().nth(4) else {
        return;
    };
    if std::env::var_os("TARGET").is_some_and(|triple| target_dir.file_name() == Some(&triple)) {
        let Some(parent) = target_dir.parent() else {
            return;
        };
        target_dir = parent;
    }
    let mut config = config.clone();
    config.no_includes = true;
    config.sys_includes = Vec::new();
    config.include_guard = None;
    config.pragma_once = false;
    config.cpp_compat = false;
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the cffi header");
    bindings.write_to_file(target_dir.join("header.h"));
}
