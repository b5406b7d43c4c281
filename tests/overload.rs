//! The primary under pressure, in its own process so its fds and CPU can be
//! watched: a full pending queue stops accepting (the kernel backlog holds
//! the rest), and running out of fds (EMFILE) pauses accepting instead of
//! spinning the loop.

mod common;
use common::*;

use std::net::TcpStream;
use std::time::Duration;

#[test]
fn a_full_pending_queue_stops_accepting() {
    let _serial = serial();
    // Workers that never take a connection: each holds max_unacked = 1
    // handed over, the primary queues max_pending = 4, the kernel the rest.
    let primary = PrimaryProcess::start(2, "hang", &[("TEST_MAX_PENDING", "4"), ("TEST_MAX_UNACKED", "1")]);
    let before = primary.fds();
    let clients: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(("127.0.0.1", primary.port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = primary.fds() - before;
    assert_eq!(held, 2 + 4, "the primary holds 2 handed over + 4 queued, not all 50 ({held})");
    drop(clients);
}

#[test]
fn running_out_of_fds_pauses_accepting_instead_of_spinning() {
    let _serial = serial();
    let primary = PrimaryProcess::start(2, "hang", &[("TEST_NOFILE", "3"), ("TEST_MAX_UNACKED", "100")]);
    let clients: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(("127.0.0.1", primary.port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let ticks_before = primary.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = primary.cpu_ticks() - ticks_before;
    // A spinning accept loop burns ~100 ticks a second; pausing 100 ms between tries, almost none.
    assert!(used < 20, "the primary used {used} ticks in 1 s while out of fds");
    drop(clients);
}

#[test]
fn a_listener_without_workers_leaves_connections_in_the_backlog() {
    let _serial = serial();
    // A primary that bound its port but has no worker: it must not accept
    // (and hold) connections nobody can serve.
    let primary = PrimaryProcess::start(0, "http", &[]);
    let before = primary.fds();
    let clients: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(("127.0.0.1", primary.port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(primary.fds(), before, "no connection accepted without a worker to serve it");
    drop(clients);
}

#[test]
fn workers_inherit_stdio_even_when_the_host_marked_it_close_on_exec() {
    let _serial = serial();
    let mut primary = PrimaryProcess::start(1, "http", &[("TEST_CLOEXEC_STDIO", "1"), ("TEST_ANNOUNCE", "1")]);
    let line = primary.read_line(Duration::from_secs(10)).expect("the worker's stdout reaches us");
    assert!(line.starts_with("worker 1 listening"), "{line:?}");
}
