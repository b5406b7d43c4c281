//! Policy `hybrid` with real worker processes and real TCP clients: the
//! workers accept themselves at light load, the primary steps in when
//! connections queue or every worker is at its cap, and a worker slow to
//! take connections gets few. Nothing here is timed: each check holds
//! whatever the machine's speed (the speed is `make bench`'s business).

mod common;
use common::*;

use std::ffi::CString;
use std::time::Duration;

const SECS: Duration = Duration::from_secs(10);

/// How many connections of each worker the primary handed over.
fn handed(p: &TestPrimary) -> Vec<(u32, u64)> {
    let mut stats = [unsafe { std::mem::zeroed::<rcluster_worker_stats>() }; 8];
    let mut count = 0;
    ok(rcluster_primary_stats(p.handle, stats.as_mut_ptr(), stats.len(), &mut count), "stats");
    stats[..count].iter().map(|s| (s.worker_id, s.dispatched)).collect()
}

#[test]
fn one_client_at_a_time_is_served_by_the_workers_alone() {
    let _serial = serial();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_HYBRID);
    let port = p.start(2);
    // One connection at a time never queues behind another: the primary
    // is never called in and hands nothing over.
    let counts = distribution(port, 50);
    assert_eq!(counts.values().sum::<usize>(), 50);
    assert!(handed(&p).iter().all(|&(_, n)| n == 0), "the primary handed some over: {:?}", handed(&p));
    p.shutdown();
}

#[test]
fn workers_holding_their_cap_of_keep_alive_connections_never_starve_a_new_client() {
    let _serial = serial();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_HYBRID);
    let port = p.start(2);
    // Idle keep-alive connections each worker holds (a worker takes at most
    // 8 itself before it leaves new ones to the others or the primary):
    // 16 fill both; the 17th can come only from the primary, unless it
    // handed some over already.
    let mut clients: Vec<KeepAlive> = (0..16).map(|_| KeepAlive::new(port)).collect();
    for client in &mut clients {
        client.get().expect("a keep-alive client is served");
        assert!(client.is_connected(), "the connection stays open");
    }
    let body = http_get(port).expect("a new client is served while every worker holds its cap");
    let by = worker_of(&body);
    let handed = handed(&p);
    assert!(handed.iter().any(|&(_, n)| n > 0), "the primary stepped in: {handed:?}");
    // The open connections still answer.
    for client in &mut clients {
        client.get().expect("an open keep-alive connection is still served");
    }
    drop(clients);
    assert!(by > 0);
    p.shutdown();
}

#[test]
fn a_queue_of_waiting_connections_calls_the_primary_in_and_all_are_served() {
    let _serial = serial();
    let marker = std::env::temp_dir().join(format!("rcluster-hybrid-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let marker_env = marker.to_string_lossy().into_owned();
    // The workers take nothing until the marker exists, so the connections
    // below queue on the socket; the first worker to take one finds the rest
    // behind it and calls the primary in. Each serves one request at a time,
    // 50 ms each, so the queue is still there when the primary steps in
    // (workers that drained it first left it nothing to hand over: CI saw it).
    let env = [("TEST_HANG_UNLESS", marker_env.as_str()), ("TEST_SERVE_INLINE", "1"), ("TEST_DELAY_MS", "50")];
    let mut p = TestPrimary::new("http", &env, RCLUSTER_POLICY_HYBRID);
    let port = p.start(2);
    let streams: Vec<std::net::TcpStream> = (0..24)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(SECS)).unwrap();
            use std::io::Write;
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
            s
        })
        .collect();
    std::fs::write(&marker, b"go").unwrap();
    for mut s in streams {
        use std::io::Read;
        let mut response = String::new();
        s.read_to_string(&mut response).expect("answered");
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    }
    let handed = handed(&p);
    assert!(handed.iter().any(|&(_, n)| n > 0), "the primary stepped in: {handed:?}");
    let _ = std::fs::remove_file(&marker);
    p.shutdown();
}

#[test]
fn a_worker_slow_to_take_connections_gets_few() {
    let _serial = serial();
    // Both workers serve one connection at a time on their accepting
    // thread (a single-threaded server); the second takes 40 ms a request.
    let mut p = TestPrimary::new("http", &[("TEST_SERVE_INLINE", "1")], RCLUSTER_POLICY_HYBRID);
    let _ = p.start(1);
    let fast = p.seen.iter().find(|e| e.kind == RCLUSTER_EVENT_FORK).unwrap().worker;
    let slow_env = CString::new("TEST_DELAY_MS=40").unwrap();
    let inline_env = CString::new("TEST_SERVE_INLINE=1").unwrap();
    let envp = [slow_env.as_ptr(), inline_env.as_ptr(), std::ptr::null()];
    let mut slow = 0;
    ok(rcluster_primary_fork(p.handle, envp.as_ptr(), &mut slow, std::ptr::null_mut()), "fork slow worker");
    let port =
        p.wait_for(SECS, "slow worker listening", |e| e.kind == RCLUSTER_EVENT_LISTENING && e.worker == slow).port;
    let threads: Vec<_> = (0..6).map(|_| std::thread::spawn(move || distribution(port, 40))).collect();
    let mut counts = std::collections::HashMap::new();
    for t in threads {
        for (w, n) in t.join().unwrap() {
            *counts.entry(w).or_insert(0usize) += n;
        }
    }
    let (on_fast, on_slow) = (counts.get(&fast).copied().unwrap_or(0), counts.get(&slow).copied().unwrap_or(0));
    assert_eq!(on_fast + on_slow, 240);
    assert!(on_fast >= 4 * on_slow, "the fast worker takes most ({on_fast} vs {on_slow})");
    p.shutdown();
}
