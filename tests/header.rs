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
