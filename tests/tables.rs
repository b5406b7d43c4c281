//! Every layer's names and numbers come from the one table (`src/tables`):
//! the header cbindgen and build.rs wrote, and what the C functions answer,
//! are checked here against the Rust enums, read from the header's text
//! rather than from a list copied into this test.

use std::collections::BTreeMap;
use std::ffi::CStr;

use rcluster::ffi::{rcluster_event_name, rcluster_strerror};
use rcluster::{Code, EventKind, PolicyKind, WorkerState};

/// `#define PREFIX... value` lines of the generated header.
fn header_constants(prefix: &str) -> BTreeMap<String, i32> {
    rcluster::GENERATED_HEADER
        .lines()
        .filter_map(|line| line.strip_prefix("#define "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, value)| (name.to_owned(), value.trim().parse().expect("a numeric constant")))
        .collect()
}

fn table<T: Copy>(all: &[T], c_name: fn(T) -> &'static str, raw: fn(T) -> i32) -> BTreeMap<String, i32> {
    all.iter().map(|&item| (c_name(item).to_owned(), raw(item))).collect()
}

fn text(ptr: *const std::ffi::c_char) -> &'static str {
    // SAFETY: the library returns static NUL-terminated strings.
    unsafe { CStr::from_ptr(ptr) }.to_str().unwrap()
}

#[test]
fn the_header_holds_every_table_row_and_nothing_else() {
    assert_eq!(header_constants("RCLUSTER_E_"), table(Code::ALL, Code::c_name, Code::raw));
    let mut events = table(EventKind::ALL, EventKind::c_name, EventKind::raw);
    events.insert("RCLUSTER_EVENT_NONE".into(), 0);
    assert_eq!(header_constants("RCLUSTER_EVENT_"), events);
    assert_eq!(header_constants("RCLUSTER_POLICY_"), table(PolicyKind::ALL, PolicyKind::c_name, PolicyKind::raw));
    let states = header_constants("RCLUSTER_WORKER_");
    assert_eq!(states, table(WorkerState::ALL, WorkerState::c_name, WorkerState::raw));
}

#[test]
fn c_names_and_messages_come_from_the_table() {
    for (name, value) in header_constants("RCLUSTER_EVENT_") {
        let expected = if value == 0 { "unknown" } else { &name["RCLUSTER_EVENT_".len()..].to_lowercase() };
        assert_eq!(text(rcluster_event_name(value)), expected, "{name}");
    }
    for code in Code::ALL {
        assert_eq!(text(rcluster_strerror(code.raw())), code.message());
    }
    assert_eq!(text(rcluster_strerror(0)), "success");
    assert_eq!(text(rcluster_strerror(-1000)), "unknown error code");
    assert_eq!(Code::from_c(-13), Some(Code::Leaving));
}
