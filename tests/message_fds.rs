//! Messages that carry file descriptors, both ways, through the C ABI: the
//! seed's pattern (the primary hands its listening socket to two workers and
//! closes its copy), sticky sessions (the primary reads a first line and
//! hands the connection on), fd counts after 10,000 handed sockets, and bad
//! input (closed fds, too many, fds a primary did not ask for).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;

fn primary(accept_fds: bool) -> TestPrimary {
    TestPrimary::with("handles", &[], |o| o.accept_message_fds = accept_fds as i32)
}

fn send_fds(p: &TestPrimary, worker: u32, text: &str, fds: &[i32]) -> i32 {
    rcluster_primary_send_fds(p.handle, worker, text.as_ptr() as *const _, text.len(), fds.as_ptr(), fds.len())
}

/// A message event with its fds taken (or, with `take` false, left for
/// `rcluster_event_release` to close).
struct Message {
    text: String,
    fds: Vec<OwnedFd>,
    count: usize,
}

fn next_message(p: &mut TestPrimary, timeout: Duration, take: bool) -> Message {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no message arrived; events so far: {:?}", p.seen);
        let mut raw = empty_event();
        if rcluster_primary_wait_event(p.handle, &mut raw, left.as_millis() as i32) != 0 {
            continue;
        }
        if raw.kind != RCLUSTER_EVENT_MESSAGE {
            p.seen.push(Ev::from_raw(&raw));
            ok(rcluster_event_release(&mut raw), "release");
            continue;
        }
        let text =
            if raw.len == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(raw.data, raw.len) }.to_vec() };
        let mut count = 0;
        ok(rcluster_event_fd_count(&raw, &mut count), "fd_count");
        assert_eq!(raw.flags & RCLUSTER_MESSAGE_HAS_FDS != 0, count > 0);
        let mut fds = Vec::new();
        if take {
            for i in 0..count {
                let mut fd = -1;
                ok(rcluster_event_take_fd(&mut raw, i, &mut fd), "take_fd");
                // SAFETY: take_fd made this fd ours.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if count > 0 {
                let mut again = -1;
                assert_eq!(rcluster_event_take_fd(&mut raw, 0, &mut again), RCLUSTER_E_INVAL, "an fd is taken once");
            }
        }
        ok(rcluster_event_release(&mut raw), "release");
        return Message { text: String::from_utf8_lossy(&text).into_owned(), fds, count };
    }
}

fn online(p: &mut TestPrimary, n: usize) -> Vec<(u32, i32)> {
    let mut workers: Vec<(u32, i32)> = (0..n).map(|_| p.fork()).collect();
    for _ in 0..n {
        p.wait_for(Duration::from_secs(10), "online", |e| e.kind == RCLUSTER_EVENT_ONLINE);
    }
    workers.sort();
    workers
}

fn fds_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn the_seed_pattern_hands_the_listening_socket_to_two_workers() {
    let _serial = serial();
    let mut p = primary(false);
    let workers = online(&mut p, 2);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    for &(worker, _) in &workers {
        ok(send_fds(&p, worker, "serve", &[listener.as_raw_fd()]), "send_fds");
    }
    drop(listener); // the primary closes its copy, as the seed's master does
                    // Each worker accepts one connection, then closes its copy.
    let mut answered = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(stream).read_line(&mut line).unwrap();
        answered.push(line.trim().to_owned());
        assert_eq!(next_message(&mut p, Duration::from_secs(10), true).text, "served");
    }
    answered.sort();
    let expected: Vec<String> = workers.iter().map(|(w, _)| format!("worker {w}")).collect();
    assert_eq!(answered, expected, "both workers served on the handed socket");
    // Nobody holds the socket any more: neither the primary nor a worker.
    assert!(TcpStream::connect(address).is_err(), "the listening socket is closed everywhere");
    p.shutdown();
}

#[test]
fn sticky_sessions_hand_a_read_connection_to_the_chosen_worker() {
    let _serial = serial();
    let mut p = primary(false);
    let workers = online(&mut p, 2);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    for session in 0..8usize {
        let mut client = TcpStream::connect(address).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.write_all(format!("session-{session}\n").as_bytes()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        // Read the first line a byte at a time, so nothing after it is consumed.
        let mut line = Vec::new();
        let mut byte = [0u8];
        while conn.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        let (chosen, _) = workers[session % 2];
        ok(send_fds(&p, chosen, &format!("sticky {line}"), &[conn.as_raw_fd()]), "send_fds");
        drop(conn);
        let mut answer = String::new();
        BufReader::new(client).read_line(&mut answer).unwrap();
        assert_eq!(answer, format!("worker {chosen} got session-{session}\n"));
    }
    p.shutdown();
}

#[test]
fn fd_counts_stay_flat_on_both_sides_after_10000_handed_sockets() {
    let _serial = serial();
    let mut p = primary(true);
    let (worker, pid) = online(&mut p, 1)[0];
    let round = |p: &mut TestPrimary, n: usize| {
        const BATCH: usize = 50;
        for start in (0..n).step_by(BATCH) {
            let batch = BATCH.min(n - start);
            for _ in 0..batch {
                let (ours, theirs) = UnixStream::pair().unwrap();
                ok(send_fds(p, worker, "bounce", &[theirs.as_raw_fd(), ours.as_raw_fd()]), "send_fds");
            }
            // Half the replies have their fds taken and closed here, half
            // are left to rcluster_event_release.
            for i in 0..batch {
                let message = next_message(p, Duration::from_secs(20), i % 2 == 0);
                assert_eq!((message.text.as_str(), message.count), ("bounce", 2));
            }
        }
    };
    round(&mut p, 100); // warm up: the loop's and the worker's buffers exist
    let (primary_before, worker_before) = (open_fds(), fds_of(pid));
    round(&mut p, 10_000);
    assert_eq!(open_fds(), primary_before, "the primary's fds are flat");
    assert_eq!(fds_of(pid), worker_before, "the worker's fds are flat");
    p.shutdown();
}

#[test]
fn fds_waiting_for_the_host_stop_at_max_event_fds() {
    let _serial = serial();
    let mut p = TestPrimary::with("handles", &[], |o| {
        o.accept_message_fds = 1;
        o.max_event_fds = 32;
    });
    let (worker, _) = online(&mut p, 1)[0];
    let base = open_fds();
    // 50 messages of 16 fds: 800 fds, which the primary would read at once
    // without the bound (below the kernel's limit on fds in flight).
    ok(send_fds(&p, worker, "flood 50", &[]), "send");
    std::thread::sleep(Duration::from_secs(1)); // the host does not read meanwhile
    let held = open_fds() - base;
    assert!(held <= 32 + RCLUSTER_MAX_FDS, "the primary holds {held} fds of unread messages (max_event_fds 32)");
    for _ in 0..50 {
        let message = next_message(&mut p, Duration::from_secs(10), false);
        assert_eq!((message.text.as_str(), message.count), ("flood", RCLUSTER_MAX_FDS), "nothing lost");
    }
    assert_eq!(open_fds(), base, "every fd closed by rcluster_event_release");
    p.shutdown();
}

#[test]
fn fds_a_primary_did_not_ask_for_cut_the_worker_off_and_are_closed() {
    let _serial = serial();
    let before = open_fds();
    {
        let mut p = primary(false);
        let (worker, _) = online(&mut p, 1)[0];
        ok(rcluster_primary_send(p.handle, worker, b"unasked".as_ptr() as *const _, 7), "send");
        let error = p.wait_for(Duration::from_secs(10), "worker error", |e| e.kind == RCLUSTER_EVENT_WORKER_ERROR);
        let text = String::from_utf8_lossy(&error.data).into_owned();
        assert!(text.contains("does not accept"), "{text}");
        assert!(!p.seen.iter().any(|e| e.kind == RCLUSTER_EVENT_MESSAGE), "no message was delivered");
        p.shutdown();
    }
    assert_eq!(open_fds(), before, "the primary closed the fds it did not ask for");
}

#[test]
fn closed_fds_and_too_many_fds_are_refused_on_both_sides() {
    let _serial = serial();
    let mut p = primary(true);
    let (worker, _) = online(&mut p, 1)[0];
    let closed = {
        let file = std::fs::File::open("/dev/null").unwrap();
        file.as_raw_fd()
    };
    let before = open_fds();
    assert_eq!(send_fds(&p, worker, "x", &[closed]), RCLUSTER_E_INVAL, "{}", last_error());
    assert!(last_error().contains("not an open"), "{}", last_error());
    let stdin = vec![0; RCLUSTER_MAX_FDS + 1];
    assert_eq!(send_fds(&p, worker, "x", &stdin), RCLUSTER_E_TOOBIG);
    assert_eq!(open_fds(), before, "a refused send holds no duplicate");
    ok(send_fds(&p, worker, "bad-sends", &[]), "send_fds without fds");
    let reply = next_message(&mut p, Duration::from_secs(10), true);
    assert_eq!(reply.text, format!("bad-sends {RCLUSTER_E_INVAL} {RCLUSTER_E_TOOBIG}"));
    // The worker is still connected and answers.
    let (ours, theirs) = UnixStream::pair().unwrap();
    ok(send_fds(&p, worker, "bounce", &[theirs.as_raw_fd()]), "send_fds");
    drop(theirs);
    let mut back = next_message(&mut p, Duration::from_secs(10), true);
    let mut back = UnixStream::from(back.fds.remove(0));
    let mut ours = ours;
    ours.write_all(b"same socket").unwrap();
    drop(ours);
    let mut rest = Vec::new();
    back.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"same socket", "the fd that came back is the socket sent");
    p.shutdown();
}
