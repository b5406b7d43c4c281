//! Opt-in signal handling, on a real primary process: SIGTERM shuts down
//! gracefully (connections the kernel already accepted are served, not
//! reset), SIGHUP reloads, SIGTTIN/SIGTTOU add and remove a worker.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_serves_what_the_kernel_accepted_then_exits_cleanly() {
    let _serial = serial();
    let mut primary = PrimaryProcess::start(2, "http", &[("TEST_SIGNALS", "1")]);
    let pids = primary.pids(10);
    // 40 connections with their request sent, then SIGTERM at once.
    let mut conns: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", primary.port)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
            s
        })
        .collect();
    primary.signal(libc::SIGTERM);
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap_or_else(|e| panic!("connection {i} reset: {e}"));
        assert!(response.starts_with("HTTP/1.1 200"), "connection {i} got {response:?}");
    }
    let status = primary.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "primary exits 0 after a graceful shutdown");
    for pid in pids {
        assert!(pid_exited(pid), "worker {pid} gone");
    }
    assert!(TcpStream::connect(("127.0.0.1", primary.port)).is_err(), "the listener is closed");
}

#[test]
fn sighup_reloads_and_sigttin_sigttou_scale() {
    let _serial = serial();
    let primary = PrimaryProcess::start(2, "http", &[("TEST_SIGNALS", "1")]);
    let before = primary.pids(10);
    assert_eq!(before.len(), 2);
    primary.signal(libc::SIGHUP);
    wait_until("every worker replaced", Duration::from_secs(10), || primary.pids(10).is_disjoint(&before));
    for pid in &before {
        wait_until("old worker gone", Duration::from_secs(10), || pid_exited(*pid));
    }
    primary.signal(libc::SIGTTIN);
    wait_until("a third worker", Duration::from_secs(10), || primary.pids(12).len() == 3);
    // One at a time: two identical signals sent together may arrive as one.
    primary.signal(libc::SIGTTOU);
    wait_until("back to two workers", Duration::from_secs(10), || primary.pids(8).len() == 2);
    primary.signal(libc::SIGTTOU);
    wait_until("down to one worker", Duration::from_secs(10), || primary.pids(6).len() == 1);
    primary.signal(libc::SIGTTOU);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(primary.pids(6).len(), 1, "SIGTTOU never goes below one worker");
}
