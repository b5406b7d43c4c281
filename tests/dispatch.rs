//! The primary's dispatch through the C ABI, with real worker processes and
//! a real TCP client.

mod common;
use common::*;

use std::ffi::{c_void, CString};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SECS: Duration = Duration::from_secs(10);

#[test]
fn rr_is_fair_across_four_workers() {
    let _serial = serial();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p.start(4);
    // 2,000 connections from 4 concurrent clients.
    let clients: Vec<_> = (0..4).map(|_| std::thread::spawn(move || distribution(port, 500))).collect();
    let mut total = std::collections::HashMap::new();
    for client in clients {
        for (worker, n) in client.join().unwrap() {
            *total.entry(worker).or_insert(0usize) += n;
        }
    }
    assert_eq!(total.values().sum::<usize>(), 2000);
    assert_eq!(total.len(), 4, "{total:?}");
    let max = *total.values().max().unwrap() as f64;
    let min = *total.values().min().unwrap() as f64;
    assert!(max / min <= 1.1, "rr distribution max/min = {} ({total:?})", max / min);
    p.shutdown();
}

#[test]
fn a_connection_handed_to_a_dying_worker_is_served_by_another() {
    let _serial = serial();
    // Two workers that take a handed connection's record off the channel
    // never: they exit with it unacknowledged. A third one serves.
    let mut p = TestPrimary::new("die-before-ack", &[], RCLUSTER_POLICY_RR);
    let port = p.start(2);
    // Both workers will die holding a connection; a third (serving) worker
    // is started after they are listening.
    let env = CString::new("TEST_MODE=http").unwrap();
    let envp = [env.as_ptr(), std::ptr::null()];
    let (mut id, mut pid) = (0, 0);
    ok(rcluster_primary_fork(p.handle, envp.as_ptr(), &mut id, &mut pid), "fork serving worker");
    p.wait_for(SECS, "serving worker listening", |e| e.kind == RCLUSTER_EVENT_LISTENING && e.worker == id);
    // Three requests: rr gives the first two to the dying workers, which
    // exit without acknowledging; the primary must hand them to worker `id`.
    let clients: Vec<_> = (0..3).map(|_| std::thread::spawn(move || http_get(port))).collect();
    for client in clients {
        let body = client.join().unwrap().expect("request must be served, not dropped");
        assert_eq!(worker_of(&body), id, "served by the surviving worker");
    }
    let exits: Vec<_> =
        (0..2).map(|_| p.wait_for(SECS, "dying worker exit", |e| e.kind == RCLUSTER_EVENT_EXIT)).collect();
    for exit in exits {
        assert_eq!(exit.exit_code, 7);
        assert_eq!(exit.flags & RCLUSTER_EXIT_AFTER_DISCONNECT, 0, "a crash is not a disconnect");
    }
    p.shutdown();
}

#[test]
fn shared_policy_serves_with_workers_accepting_themselves() {
    let _serial = serial();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_SHARED);
    let port = p.start(2);
    let counts = distribution(port, 50);
    assert_eq!(counts.values().sum::<usize>(), 50);
    p.shutdown();
}

#[test]
fn bind_errors_reach_the_worker_that_asked() {
    let _serial = serial();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = taken.local_addr().unwrap().port().to_string();
    for (host, port, code, errno) in [
        ("127.0.0.1", busy_port.as_str(), RCLUSTER_E_ADDR, libc::EADDRINUSE),
        ("not-an-address", "0", RCLUSTER_E_ADDR, libc::EINVAL),
        ("192.0.2.1", "0", RCLUSTER_E_ADDR, libc::EADDRNOTAVAIL),
    ] {
        let mut p = TestPrimary::new("listen-report", &[("TEST_HOST", host), ("TEST_PORT", port)], RCLUSTER_POLICY_RR);
        p.fork();
        let report = p.wait_for(SECS, "listen report", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
        assert_eq!(
            String::from_utf8_lossy(&report.data),
            format!("rc={code} errno={errno}"),
            "listening on {host}:{port}"
        );
        p.shutdown();
    }
    if unsafe { libc::geteuid() } != 0 {
        let mut p = TestPrimary::new("listen-report", &[("TEST_PORT", "1")], RCLUSTER_POLICY_RR);
        p.fork();
        let report = p.wait_for(SECS, "listen report", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
        assert_eq!(String::from_utf8_lossy(&report.data), format!("rc={RCLUSTER_E_ADDR} errno={}", libc::EACCES));
        p.shutdown();
    }
}

#[test]
fn each_workers_nth_listener_on_port_0_shares_one_port() {
    let _serial = serial();
    let mut p = TestPrimary::new("port-zero", &[], RCLUSTER_POLICY_RR);
    let up_front = p.listen("127.0.0.1", 0);
    let ports = |report: Ev| -> Vec<u16> {
        let text = String::from_utf8_lossy(&report.data).into_owned();
        text.split(' ').skip(1).map(|port| port.parse().unwrap()).collect()
    };
    let (a, _) = p.fork();
    let first = ports(p.wait_for(SECS, "worker a's ports", |e| e.kind == RCLUSTER_EVENT_MESSAGE && e.worker == a));
    let (b, _) = p.fork();
    let second = ports(p.wait_for(SECS, "worker b's ports", |e| e.kind == RCLUSTER_EVENT_MESSAGE && e.worker == b));
    // Two servers on port 0 in one worker: two ports, the first the
    // primary's own; the other worker's first and second share them.
    assert_eq!(first.len(), 2);
    assert_ne!(first[0], first[1], "one worker's two port-0 listeners got one port");
    assert_eq!(first[0], up_front, "a worker's first port-0 listener is the primary's listen(host, 0)");
    assert_eq!(second, first, "the second worker's port-0 listeners, in order");
    // Each port's connections go to that listener's queue: rr gives each
    // worker one per port, and each answers for the listener it took it from.
    let mut streams = Vec::new();
    for (port, answer) in [(first[1], "second\n"), (first[0], "first\n")] {
        for _ in [a, b] {
            let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(SECS)).unwrap();
            streams.push((stream, port, answer));
        }
    }
    for (mut stream, port, answer) in streams {
        let mut got = String::new();
        std::io::Read::read_to_string(&mut stream, &mut got).unwrap();
        assert_eq!(got, answer, "a connection to port {port}");
    }
    // With both closed, the count starts again: the next is the first port.
    for _ in [a, b] {
        let report = p.wait_for(SECS, "port after relisten", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
        let worker = report.worker;
        assert_eq!(ports(report), [first[0]], "worker {worker} after closing both");
    }
    p.shutdown();
}

#[test]
fn messages_round_trip_both_ways() {
    let _serial = serial();
    let mut p = TestPrimary::new("echo", &[], RCLUSTER_POLICY_RR);
    let (id, _) = p.fork();
    p.wait_for(SECS, "online", |e| e.kind == RCLUSTER_EVENT_ONLINE);
    let big: Vec<u8> = (0..3_000_000).map(|i| (i % 253) as u8).collect();
    for payload in [b"hello".to_vec(), Vec::new(), big] {
        ok(rcluster_primary_send(p.handle, id, payload.as_ptr() as *const _, payload.len()), "send");
        let reply = p.wait_for(SECS, "echo", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
        assert_eq!(reply.worker, id);
        assert!(reply.data.starts_with(b"echo:") && reply.data[5..] == payload[..], "echo of {} bytes", payload.len());
    }
    assert_eq!(rcluster_primary_send(p.handle, 999, b"x".as_ptr() as *const _, 1), RCLUSTER_E_CLOSED);
    p.shutdown();
}

#[test]
fn a_worker_sending_garbage_is_cut_off_and_the_primary_survives() {
    let _serial = serial();
    let mut p = TestPrimary::new("bad-frame", &[], RCLUSTER_POLICY_RR);
    let (id, _) = p.fork();
    let err = p.wait_for(SECS, "worker error", |e| e.kind == RCLUSTER_EVENT_WORKER_ERROR);
    assert_eq!(err.worker, id);
    assert!(String::from_utf8_lossy(&err.data).contains("frame"), "{:?}", String::from_utf8_lossy(&err.data));
    p.wait_for(SECS, "exit of the bad worker", |e| e.kind == RCLUSTER_EVENT_EXIT && e.worker == id);
    // The primary still works.
    let mut p2 = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p2.start(1);
    assert!(http_get(port).is_ok());
    p2.shutdown();
    p.shutdown();
}

#[test]
fn exit_codes_and_signals_are_reported() {
    let _serial = serial();
    let mut p = TestPrimary::new("exit-code 42", &[], RCLUSTER_POLICY_RR);
    let (id, _) = p.fork();
    let exit = p.wait_for(SECS, "exit", |e| e.kind == RCLUSTER_EVENT_EXIT);
    assert_eq!((exit.worker, exit.exit_code, exit.signal), (id, 42, 0));
    let order: Vec<i32> = p.seen.iter().map(|e| e.kind).collect();
    assert_eq!(order, [RCLUSTER_EVENT_FORK, RCLUSTER_EVENT_ONLINE, RCLUSTER_EVENT_DISCONNECT, RCLUSTER_EVENT_EXIT]);

    let mut p = TestPrimary::new("echo", &[], RCLUSTER_POLICY_RR);
    let (id, pid) = p.fork();
    p.wait_for(SECS, "online", |e| e.kind == RCLUSTER_EVENT_ONLINE);
    ok(rcluster_primary_kill(p.handle, id, libc::SIGKILL), "kill");
    let exit = p.wait_for(SECS, "exit", |e| e.kind == RCLUSTER_EVENT_EXIT);
    assert_eq!((exit.worker, exit.pid, exit.exit_code, exit.signal), (id, pid, -1, libc::SIGKILL));
    p.shutdown();
}

#[test]
fn disconnect_lets_the_worker_leave_gracefully() {
    let _serial = serial();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p.start(2);
    let workers: Vec<u32> = p.seen.iter().filter(|e| e.kind == RCLUSTER_EVENT_LISTENING).map(|e| e.worker).collect();
    ok(rcluster_primary_disconnect(p.handle, workers[0]), "disconnect");
    let exit = p.wait_for(SECS, "exit after disconnect", |e| e.kind == RCLUSTER_EVENT_EXIT);
    assert_eq!((exit.worker, exit.exit_code, exit.signal), (workers[0], 0, 0));
    assert_ne!(exit.flags & RCLUSTER_EXIT_AFTER_DISCONNECT, 0);
    // The other worker serves everything now.
    for _ in 0..10 {
        assert_eq!(worker_of(&http_get(port).unwrap()), workers[1]);
    }
    p.shutdown();
}

#[test]
fn a_worker_that_does_not_leave_is_terminated_after_the_stop_timeout() {
    let _serial = serial();
    let mut p = TestPrimary::with("http", &[], |o| o.stop_timeout_ms = 500);
    let port = p.start(1);
    // The test worker serves one connection at a time: an idle keep-alive
    // connection keeps it from ever seeing the disconnect.
    let held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let worker = p.seen.iter().find(|e| e.kind == RCLUSTER_EVENT_LISTENING).unwrap().worker;
    let asked = Instant::now();
    ok(rcluster_primary_disconnect(p.handle, worker), "disconnect");
    let exit = p.wait_for(SECS, "exit", |e| e.kind == RCLUSTER_EVENT_EXIT);
    assert_eq!((exit.exit_code, exit.signal), (-1, libc::SIGTERM));
    assert_ne!(exit.flags & RCLUSTER_EXIT_AFTER_DISCONNECT, 0);
    assert!(asked.elapsed() >= Duration::from_millis(450), "SIGTERM only after the stop timeout");
    drop(held);
    p.shutdown();
}

#[test]
fn shutdown_reaps_every_worker() {
    let _serial = serial();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    p.start(3);
    let pids: Vec<i32> = p.seen.iter().filter(|e| e.kind == RCLUSTER_EVENT_FORK).map(|e| e.pid).collect();
    p.shutdown();
    for pid in pids {
        assert!(!pid_exists(pid), "worker {pid} is gone and reaped (no zombie)");
    }
    assert_eq!(
        rcluster_primary_fork(p.handle, std::ptr::null(), std::ptr::null_mut(), std::ptr::null_mut()),
        RCLUSTER_E_STATE
    );
}

#[test]
fn a_worker_killed_with_unread_frames_is_a_hang_up_not_a_protocol_error() {
    let _serial = serial();
    // A worker that never reads its channel: connections handed to it pile
    // up unread, so its death resets the channel (ECONNRESET) instead of
    // closing it cleanly. That is still just a hang-up.
    let mut p = TestPrimary::new("hang", &[], RCLUSTER_POLICY_RR);
    p.start(1);
    let port = p.seen.iter().find(|e| e.kind == RCLUSTER_EVENT_LISTENING).unwrap().port;
    let clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let victim = p.seen[0].worker;
    ok(rcluster_primary_kill(p.handle, victim, libc::SIGKILL), "kill");
    p.wait_for(SECS, "exit", |e| e.kind == RCLUSTER_EVENT_EXIT && e.worker == victim);
    let errors: Vec<_> = p.seen.iter().filter(|e| e.kind == RCLUSTER_EVENT_WORKER_ERROR).collect();
    assert!(
        errors.is_empty(),
        "a killed worker is not a protocol error: {:?}",
        String::from_utf8_lossy(&errors[0].data)
    );
    assert!(p.seen.iter().any(|e| e.kind == RCLUSTER_EVENT_DISCONNECT && e.worker == victim));
    drop(clients);
    p.shutdown();
}

#[test]
fn reuseport_gives_each_worker_its_own_socket_and_serves() {
    let _serial = serial();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_REUSEPORT);
    let port = p.start(2);
    // The kernel hashes each new connection (by source port) to a socket.
    let counts = distribution(port, 200);
    assert_eq!(counts.values().sum::<usize>(), 200);
    assert_eq!(counts.len(), 2, "both workers get connections: {counts:?}");
    p.shutdown();
}

/// Requests from `clients` concurrent threads, `each` apiece; per-worker counts.
fn concurrent_distribution(port: u16, clients: usize, each: usize) -> std::collections::HashMap<u32, usize> {
    let threads: Vec<_> = (0..clients).map(|_| std::thread::spawn(move || distribution(port, each))).collect();
    let mut total = std::collections::HashMap::new();
    for t in threads {
        for (w, n) in t.join().unwrap() {
            *total.entry(w).or_insert(0) += n;
        }
    }
    total
}

#[test]
fn least_loaded_steers_connections_away_from_a_slow_worker() {
    let _serial = serial();
    for (policy, name) in [(RCLUSTER_POLICY_LEAST, "least"), (RCLUSTER_POLICY_RR, "rr")] {
        let mut p = TestPrimary::new("http", &[], policy);
        let fast = p.start(1);
        let slow_env = CString::new("TEST_DELAY_MS=40").unwrap();
        let say_env = CString::new("TEST_SAY_REPORTS_DONE=1").unwrap();
        let envp = [slow_env.as_ptr(), say_env.as_ptr(), std::ptr::null()];
        let (mut slow, mut fast_id) = (0, 0);
        ok(rcluster_primary_fork(p.handle, envp.as_ptr(), &mut slow, std::ptr::null_mut()), "fork slow worker");
        p.wait_for(SECS, "slow worker listening", |e| e.kind == RCLUSTER_EVENT_LISTENING && e.worker == slow);
        // Only the load-aware policy asks for done reports (bindings skip the call otherwise).
        let said = p.wait_for(SECS, "reports_done", |e| e.kind == RCLUSTER_EVENT_MESSAGE && e.worker == slow);
        let wanted = if policy == RCLUSTER_POLICY_LEAST { "reports_done 1" } else { "reports_done 0" };
        assert_eq!(String::from_utf8_lossy(&said.data), wanted, "{name}");
        fast_id += p.seen.iter().find(|e| e.kind == RCLUSTER_EVENT_FORK).unwrap().worker;
        let counts = concurrent_distribution(fast, 6, 40);
        let (on_fast, on_slow) = (counts.get(&fast_id).copied().unwrap_or(0), counts.get(&slow).copied().unwrap_or(0));
        assert_eq!(on_fast + on_slow, 240);
        // Every finished connection gets reported (least), or none is counted (rr);
        // the last reports may trail the last answers by a moment.
        let started = Instant::now();
        loop {
            let mut stats = [unsafe { std::mem::zeroed::<rcluster_worker_stats>() }; 4];
            let mut count = 0;
            ok(rcluster_primary_stats(p.handle, stats.as_mut_ptr(), stats.len(), &mut count), "stats");
            if stats[..count].iter().all(|s| s.active == 0) {
                break;
            }
            assert!(started.elapsed() < SECS, "{name}: active connections never went back to 0: {stats:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        if policy == RCLUSTER_POLICY_LEAST {
            assert!(on_fast >= 4 * on_slow, "{name}: the fast worker takes most ({on_fast} vs {on_slow})");
        } else {
            let ratio = on_fast as f64 / on_slow.max(1) as f64;
            assert!((0.8..1.25).contains(&ratio), "{name}: blind to load ({on_fast} vs {on_slow})");
        }
        p.shutdown();
    }
}

#[test]
fn many_small_messages_travel_batched_and_in_order_both_ways() {
    let _serial = serial();
    let mut p = TestPrimary::new("echo-many", &[], RCLUSTER_POLICY_RR);
    let (id, _) = p.fork();
    p.wait_for(SECS, "online", |e| e.kind == RCLUSTER_EVENT_ONLINE);
    // Queued faster than the primary's thread sends them: they share records.
    let sent: Vec<Vec<u8>> = (0..3000u32).map(|i| format!("message {i}").into_bytes()).collect();
    for message in &sent {
        ok(rcluster_primary_send(p.handle, id, message.as_ptr() as *const _, message.len()), "send");
    }
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let e = p.wait_for(SECS, "echo", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
        received.push(e.data);
    }
    assert!(received == sent, "every message once, in order");
    let big = vec![9u8; 200_000];
    let (a, b) = (b"before".to_vec(), b"after".to_vec());
    for message in [&a, &big, &b] {
        ok(rcluster_primary_send(p.handle, id, message.as_ptr() as *const _, message.len()), "send");
    }
    for expected in [&a, &big, &b] {
        let e = p.wait_for(SECS, "echo", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
        assert!(&e.data == expected, "a big message between small ones keeps its place");
    }
    // The primary's send_many, between single sends: order kept, empty and
    // big messages too, each echoed as its own message.
    let batch: Vec<Vec<u8>> = (0..2000u32)
        .map(|i| match i {
            7 => Vec::new(),
            1000 => vec![5u8; 150_000],
            _ => format!("batched {i}").into_bytes(),
        })
        .collect();
    let data: Vec<*const c_void> = batch.iter().map(|m| m.as_ptr() as *const c_void).collect();
    let lens: Vec<usize> = batch.iter().map(|m| m.len()).collect();
    ok(rcluster_primary_send(p.handle, id, a.as_ptr() as *const _, a.len()), "send");
    ok(rcluster_primary_send_many(p.handle, id, data.as_ptr(), lens.as_ptr(), batch.len()), "send_many");
    ok(rcluster_primary_send(p.handle, id, b.as_ptr() as *const _, b.len()), "send");
    for expected in std::iter::once(&a).chain(&batch).chain(std::iter::once(&b)) {
        let e = p.wait_for(SECS, "echo", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
        assert!(&e.data == expected, "send_many keeps order among single sends");
    }
    p.shutdown();
}

#[test]
fn accept_many_batches_except_from_the_socket_all_workers_share() {
    let _serial = serial();
    for policy in [RCLUSTER_POLICY_RR, RCLUSTER_POLICY_SHARED, RCLUSTER_POLICY_REUSEPORT] {
        // One worker that lets 10 connections queue up before it accepts.
        let env = [("TEST_ACCEPT_BATCH", "16"), ("TEST_ACCEPT_AFTER_MS", "500")];
        let mut p = TestPrimary::new("http", &env, policy);
        let port = p.start(1);
        let before = open_fds();
        let clients: Vec<_> = (0..10).map(|_| std::thread::spawn(move || http_get(port))).collect();
        for client in clients {
            client.join().unwrap().expect("every queued connection is served");
        }
        if policy == RCLUSTER_POLICY_SHARED {
            // A worker that accepts on the shared socket takes one per call:
            // no hoarding of the shared queue. (A batch report would have
            // come before the answers the clients already have.)
            while let Some(e) = p.next(Duration::from_millis(200)) {
                assert_ne!(e.kind, RCLUSTER_EVENT_MESSAGE, "shared: {:?}", String::from_utf8_lossy(&e.data));
            }
        } else {
            // rr: what the primary handed over; reuseport: what queued on the
            // worker's own socket, which no other worker could take.
            let batch = p.wait_for(SECS, "a batch report", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
            let size: usize = String::from_utf8_lossy(&batch.data).strip_prefix("batch ").unwrap().parse().unwrap();
            assert!((2..=16).contains(&size), "policy {policy}: batch of {size}");
        }
        // rr: one Acks frame released every copy the primary held.
        let deadline = Instant::now() + SECS;
        while open_fds() != before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(open_fds(), before, "policy {policy}: the primary closed its copies of the batch");
        p.shutdown();
    }
}
