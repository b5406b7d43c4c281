//! The committed `include/rcluster.h` must be the one cbindgen generates
//! from the code. (Under CI or RCLUSTER_CHECK_HEADER, build.rs does not
//! rewrite it, so a stale committed header fails here.)

#[test]
fn committed_header_is_current() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/rcluster.h")).unwrap();
    assert!(
        committed == rcluster::GENERATED_HEADER,
        "include/rcluster.h is stale: run `make header` (or `cargo build`) and commit it"
    );
}

/// The header declares the C ABI's own types only: every type it names
/// starts with `rcluster_` (a Rust type leaking in, like the
/// `typedef struct PolicyKind PolicyKind;` of 0.1, fails here).
#[test]
fn header_declares_no_internal_types() {
    let header = rcluster::GENERATED_HEADER;
    // `typedef struct x x;` on one line, or `typedef struct { ... } x;` ending on its own.
    let declarations =
        header.lines().filter(|l| (l.starts_with("typedef ") || l.starts_with("} ")) && l.ends_with(';'));
    for line in declarations {
        let name = line.trim_end_matches(';').rsplit(' ').next().unwrap_or_default();
        assert!(name.starts_with("rcluster_"), "the header declares a type that is not the C ABI's: {line}");
    }
}
