mod common;
use common::*;
use std::time::Duration;

#[test]
fn two_workers_serve_http_and_shut_down() {
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p.start(2);
    let counts = distribution(port, 20);
    assert_eq!(counts.len(), 2, "{counts:?}");
    p.shutdown();
    let exits = p
        .seen
        .iter()
        .filter(|e| e.kind == RCLUSTER_EVENT_EXIT)
        .count();
    assert_eq!(exits, 2);
    let _ = Duration::ZERO;
}
