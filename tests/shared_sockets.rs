//! Sockets the primary binds once and shares with the workers that ask
//! (Node's dgram sockets in a cluster): a worker asks over its real channel
//! and gets the socket bound with the options it asked for; bad requests
//! get an error, and the primary goes on serving.

mod common;
use common::*;

use std::time::Duration;

fn report(p: &mut TestPrimary, worker: u32) -> String {
    let ev = p.wait_for(Duration::from_secs(10), "the share report", |e| {
        e.kind == RCLUSTER_EVENT_MESSAGE && e.worker == worker
    });
    String::from_utf8_lossy(&ev.data).into_owned()
}

/// The numbers a report gives after `key=`, in order.
fn values(report: &str, key: &str) -> Vec<i64> {
    report
        .split(key)
        .skip(1)
        .map(|rest| rest.split(|c: char| !c.is_ascii_digit() && c != '-').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn a_shared_udp_socket_is_bound_with_the_flags_its_worker_asked_for() {
    let _serial = serial();
    let mut p = TestPrimary::new("share-udp", &[], RCLUSTER_POLICY_RR);
    let (worker, _) = p.fork();
    let text = report(&mut p, worker);
    // IPv6-only with SO_REUSEADDR, as asked; IPv4 on the same port is then
    // free, and bound without SO_REUSEADDR (not asked for).
    assert!(text.starts_with("six reuse_addr=1 ipv6_only=1 port="), "{text}");
    let ports = values(&text, "port=");
    assert_eq!(ports.len(), 2, "{text}");
    assert!(ports[0] > 0 && ports[0] == ports[1], "{text}");
    assert!(text.contains("four reuse_addr=0 "), "{text}");
    // A flag bit no version knows: refused with EINVAL, the channel kept.
    assert_eq!(values(&text, "unknown errno="), vec![libc::EINVAL as i64], "{text}");
    assert!(!p.seen.iter().any(|e| e.kind == RCLUSTER_EVENT_WORKER_ERROR), "{:?}", p.seen);
}

#[test]
fn a_malformed_share_request_is_a_worker_error_and_the_primary_serves_on() {
    let _serial = serial();
    let mut p = TestPrimary::new("share-udp", &[], RCLUSTER_POLICY_RR);
    let (bad, bad_pid) = p.fork_with(&["TEST_SHARE_MALFORMED=1"]);
    report(&mut p, bad);
    let ev = p.wait_for(Duration::from_secs(10), "the worker error", |e| e.kind == RCLUSTER_EVENT_WORKER_ERROR);
    assert_eq!((ev.worker, ev.pid), (bad, bad_pid));
    let message = String::from_utf8_lossy(&ev.data).into_owned();
    assert!(message.contains("malformed frame"), "{message}");
    // Cut off: the worker sees its channel close and exits.
    p.wait_for(Duration::from_secs(10), "the bad worker's exit", |e| e.kind == RCLUSTER_EVENT_EXIT && e.worker == bad);
    // The primary answers the next worker's requests as before.
    let (good, _) = p.fork();
    let text = report(&mut p, good);
    assert!(text.starts_with("six reuse_addr=1 ipv6_only=1 port="), "{text}");
}
