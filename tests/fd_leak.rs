//! After 10,000 connections and a shutdown, the primary's process has
//! exactly the fds it had before: no connection, channel, pidfd or event fd
//! leaks. (Its own test binary: counting fds needs no neighbours.)

mod common;
use common::*;

#[test]
fn ten_thousand_connections_leak_no_fd() {
    let before = open_fds();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p.start(2);
    let clients: Vec<_> = (0..4).map(|_| std::thread::spawn(move || distribution(port, 2500))).collect();
    let served: usize = clients.into_iter().map(|c| c.join().unwrap().values().sum::<usize>()).sum();
    assert_eq!(served, 10_000);
    p.shutdown();
    drop(p);
    assert_eq!(open_fds(), before, "fds after 10,000 connections and shutdown");
}
