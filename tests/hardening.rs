//! What a hostile worker, a broken deploy or a full fd table used to break
//! (issue #16), one test per item, each with real processes and sockets.
//! Every test here failed before the fix it names.

mod common;
use common::*;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::ptr;
use std::time::{Duration, Instant};

/// A GET that gives up after `within` (a lost connection shows as an error, not a hang).
fn get_within(port: u16, within: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(within))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad response {response:?}")));
    }
    Ok(response)
}

/// `n` GETs at once, each given `within`; returns the failures.
fn concurrent_gets(port: u16, n: usize, within: Duration) -> Vec<String> {
    let threads: Vec<_> = (0..n).map(|_| std::thread::spawn(move || get_within(port, within))).collect();
    threads.into_iter().filter_map(|t| t.join().unwrap().err().map(|e| e.to_string())).collect()
}

fn count(p: &TestPrimary, kind: i32) -> usize {
    p.seen.iter().filter(|e| e.kind == kind).count()
}

/// Drains events for `d`.
fn pump(p: &mut TestPrimary, d: Duration) {
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        p.next(left);
    }
}

// 1. A leaving worker's past ping deadline made the loop poll with a zero
// timeout until the worker exited.
#[test]
fn a_leaving_worker_does_not_make_the_heartbeat_spin() {
    let _serial = serial();
    let primary = PrimaryProcess::start(
        2,
        "http",
        &[("TEST_HEARTBEAT_MS", "50"), ("TEST_SIGNALS", "1"), ("TEST_LINGER_MS", "2500")],
    );
    std::thread::sleep(Duration::from_millis(200)); // pings are flowing
    primary.signal(libc::SIGHUP); // a reload: the old workers leave, slowly
    std::thread::sleep(Duration::from_millis(700));
    let before = primary.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = primary.cpu_ticks() - before;
    // Spinning burns ~100 ticks a second; a heartbeat every 50 ms almost none.
    assert!(used < 25, "the primary used {used} ticks in 1 s while workers were leaving");
}

// 2. A listener resumed by its timer after EMFILE accepted connections and
// the loop slept with them unsent.
#[test]
fn connections_accepted_after_an_emfile_pause_are_sent_at_once() {
    let _serial = serial();
    let primary = PrimaryProcess::start(2, "http", &[("TEST_NOFILE", "4"), ("TEST_MAX_UNACKED", "64")]);
    for round in 0..3 {
        let failures = concurrent_gets(primary.port, 40, Duration::from_secs(5));
        assert!(failures.is_empty(), "round {round}: {} of 40 failed: {:?}", failures.len(), &failures[..1]);
    }
}

/// A copy of the test worker that the test can delete and restore.
struct WorkerCopy {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl WorkerCopy {
    fn new(name: &str) -> WorkerCopy {
        let dir = std::env::temp_dir().join(format!("rcluster-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker");
        std::fs::copy(TESTWORKER, &path).unwrap();
        WorkerCopy { dir, path }
    }
}

impl Drop for WorkerCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// 3. A spawn that failed counted as a crash: the slot crash-looped without a
// worker ever having run, and never came back.
#[test]
fn failed_spawns_back_off_without_crash_looping_and_the_slot_recovers() {
    let _serial = serial();
    let copy = WorkerCopy::new("spawn");
    let path = CString::new(copy.path.to_str().unwrap()).unwrap();
    let mode = CString::new("http").unwrap();
    let argv = [path.as_ptr(), mode.as_ptr(), ptr::null()];
    let mut p = TestPrimary::with("http", &[], |o| {
        o.argv = argv.as_ptr();
        o.restart_delay_ms = 20;
        o.restart_delay_max_ms = 200;
        o.crash_loop_count = 3;
    });
    let port = p.start(1);
    std::fs::remove_file(&copy.path).unwrap(); // a broken deploy
    let (worker, _) = (p.seen.iter().find(|e| e.kind == RCLUSTER_EVENT_FORK).unwrap().worker, 0);
    ok(rcluster_primary_kill(p.handle, worker, libc::SIGKILL), "kill");
    let failed = p.wait_for(Duration::from_secs(5), "spawn failed", |e| e.kind == RCLUSTER_EVENT_SPAWN_FAILED);
    assert_eq!(failed.slot, 0);
    let message = String::from_utf8_lossy(&failed.data).into_owned();
    assert!(message.contains("could not start a worker") && message.contains("retrying"), "{message}");
    pump(&mut p, Duration::from_millis(1500)); // well past 3 failures
    assert!(count(&p, RCLUSTER_EVENT_SPAWN_FAILED) >= 4, "it keeps retrying: {:?}", p.seen);
    assert_eq!(count(&p, RCLUSTER_EVENT_CRASH_LOOP), 0, "failed spawns are not crashes");
    std::fs::copy(TESTWORKER, &copy.path).unwrap(); // the deploy is fixed
    p.wait_for(Duration::from_secs(5), "the slot's new worker listening", |e| e.kind == RCLUSTER_EVENT_LISTENING);
    assert!(http_get(port).is_ok());
}

// 3. Out of fds with connections queued and no worker: the queued
// connections held the fds a restart needed, and nothing ever moved again.
#[test]
fn a_primary_out_of_fds_sheds_queued_connections_to_restart_its_worker() {
    let _serial = serial();
    let marker = std::env::temp_dir().join(format!("rcluster-shed-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let marker_env = marker.to_str().unwrap().to_owned();
    let env = [("TEST_NOFILE", "12"), ("TEST_MAX_PENDING", "1000"), ("TEST_HANG_UNLESS", &marker_env)];
    let primary = PrimaryProcess::start(1, "http", &env);
    // The worker takes nothing: the primary queues clients until its fd table is full.
    let waiting: Vec<TcpStream> =
        (0..40).filter_map(|_| TcpStream::connect(("127.0.0.1", primary.port)).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&marker, b"").unwrap(); // the next worker serves
    for worker in children_of(primary.child.id() as i32) {
        // SAFETY: kill of the primary's own child, by pid.
        unsafe { libc::kill(worker, libc::SIGKILL) };
    }
    // Its restart needs fds the queued connections hold.
    let deadline = Instant::now() + Duration::from_secs(15);
    while get_within(primary.port, Duration::from_secs(2)).is_err() {
        assert!(Instant::now() < deadline, "the cluster never served again after running out of fds");
    }
    drop(waiting);
    let _ = std::fs::remove_file(&marker);
}

/// The pids of `pid`'s children, from every one of its threads.
fn children_of(pid: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(list.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
    }
    children
}

// 4. A worker that said goodbye and then exited non-zero was restarted at
// once, forever, never counted as a crash.
#[test]
fn goodbye_then_failure_is_a_crash_and_crash_loops() {
    let _serial = serial();
    let mut p = TestPrimary::with("goodbye-exit", &[], |o| {
        o.restart_delay_ms = 10;
        o.restart_delay_max_ms = 50;
        o.crash_loop_count = 4;
        o.crash_loop_window_ms = 30_000;
    });
    p.fork();
    p.wait_for(Duration::from_secs(5), "crash loop", |e| e.kind == RCLUSTER_EVENT_CRASH_LOOP);
    pump(&mut p, Duration::from_millis(300));
    let forks = count(&p, RCLUSTER_EVENT_FORK);
    assert_eq!(forks, 4, "four starts, then the slot stops: {:?}", p.seen);
    // A clean goodbye (exit 0) is still replaced at once, without penalty.
    let mut clean = TestPrimary::with("goodbye-exit", &[("TEST_EXIT_CODE", "0")], |o| o.crash_loop_count = 2);
    clean.fork();
    pump(&mut clean, Duration::from_millis(500));
    assert_eq!(count(&clean, RCLUSTER_EVENT_CRASH_LOOP), 0);
    assert!(count(&clean, RCLUSTER_EVENT_FORK) >= 3, "clean leavers are replaced: {:?}", clean.seen);
    ok(rcluster_primary_scale(clean.handle, 0), "scale 0");
}

// 5. Listen requests were unbounded and the listeners never closed.
#[test]
fn listen_floods_are_bounded_and_unused_listeners_close() {
    let _serial = serial();
    let mut p = TestPrimary::with("http", &[], |o| {
        o.max_listeners_per_worker = 16;
        o.max_listeners = 40;
        o.listener_idle_ms = 300;
    });
    let port = p.start(1);
    let before = open_fds();
    // On an address of its own: the good worker's listener is not among them.
    let (flooder, _) = p.fork_with(&["TEST_MODE=listen-flood", "TEST_FLOOD=200", "TEST_FLOOD_HOST=127.0.0.2"]);
    let report = p.wait_for(Duration::from_secs(10), "flood report", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
    assert_eq!(String::from_utf8_lossy(&report.data), format!("flood ok=16 err=184 errno={}", libc::EMFILE));
    let held = open_fds() - before;
    assert!(held <= 16 + 4, "the primary holds {held} more fds (16 listeners and the worker's channel)");
    // The good worker never stopped serving.
    for _ in 0..20 {
        assert!(http_get(port).is_ok());
    }
    // Once the flooder is gone and the idle time has passed, its listeners close.
    ok(rcluster_primary_disconnect(p.handle, flooder), "disconnect");
    p.wait_for(Duration::from_secs(10), "flooder exit", |e| e.kind == RCLUSTER_EVENT_EXIT && e.worker == flooder);
    pump(&mut p, Duration::from_millis(800));
    assert!(open_fds() <= before, "listeners no live worker uses were closed ({} > {before})", open_fds());
    let after = http_get(port);
    assert!(after.is_ok(), "the listener in use stays open: {after:?} {:?}", p.seen);
}

// 6. Strings were cut mid-character: an honest long host looked malformed,
// and the primary's error reply broke the worker's channel.
#[test]
fn over_long_hosts_are_refused_and_long_replies_stay_valid() {
    let _serial = serial();
    let over = "a".repeat(70_000);
    let mut p = TestPrimary::new("listen-report", &[("TEST_HOST", &over)], RCLUSTER_POLICY_RR);
    p.fork();
    let ev = p.wait_for(Duration::from_secs(10), "report", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
    assert_eq!(String::from_utf8_lossy(&ev.data), "rc=-1 errno=0", "refused before the wire");
    // At the limit, mostly two-byte characters: the primary's error message
    // quoting it runs over the limit, and the limit falls inside a character.
    let under = format!("a{}", "é".repeat(32_767));
    assert_eq!(under.len(), 65_535);
    let mut p = TestPrimary::new("listen-report", &[("TEST_HOST", &under)], RCLUSTER_POLICY_RR);
    p.fork();
    let ev = p.wait_for(Duration::from_secs(10), "report", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
    assert_eq!(String::from_utf8_lossy(&ev.data), format!("rc={RCLUSTER_E_ADDR} errno={}", libc::EINVAL));
    assert_eq!(count(&p, RCLUSTER_EVENT_WORKER_ERROR), 0, "{:?}", p.seen);
}

// 7. Freeing a primary while another thread waited for an event returned 0,
// shut nothing down, and the waiter never woke.
#[test]
fn free_wakes_a_thread_waiting_for_events() {
    let _serial = serial();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p.start(2);
    let pids: Vec<i32> = p.seen.iter().filter(|e| e.kind == RCLUSTER_EVENT_FORK).map(|e| e.pid).collect();
    let handle = p.handle as usize;
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ev = empty_event();
        let rc = rcluster_primary_wait_event(handle as *mut rcluster_primary, &mut ev, -1);
        rcluster_event_release(&mut ev);
        let _ = done.send(rc);
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rcluster_primary_free(p.handle), 0);
    let rc = result.recv_timeout(Duration::from_secs(5)).expect("the waiting thread woke up");
    assert_eq!(rc, RCLUSTER_E_CLOSED, "{}", last_error());
    assert!(pids.iter().all(|&pid| pid_exited(pid)), "free shut the workers down");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "and closed the listener");
    p.handle = ptr::null_mut(); // freed above
}

// 8. Lengths from C wrapped: SIZE_MAX corrupted the heap.
#[test]
fn huge_lengths_are_refused_before_any_copy() {
    let _serial = serial();
    let mut p = TestPrimary::new("echo", &[], RCLUSTER_POLICY_RR);
    let (worker, _) = p.fork();
    p.wait_for(Duration::from_secs(10), "online", |e| e.kind == RCLUSTER_EVENT_ONLINE);
    let byte = [0u8; 1];
    let data = [byte.as_ptr() as *const std::ffi::c_void; 2];
    for lens in [[usize::MAX, 1], [1, usize::MAX], [usize::MAX / 2 + 1, usize::MAX / 2 + 1]] {
        let rc = rcluster_primary_send_many(p.handle, worker, data.as_ptr(), lens.as_ptr(), 2);
        assert_eq!(rc, RCLUSTER_E_TOOBIG, "{lens:?}: {}", last_error());
    }
    let rc = rcluster_primary_send(p.handle, worker, byte.as_ptr() as *const _, usize::MAX);
    assert_eq!(rc, RCLUSTER_E_TOOBIG);
    let rc = rcluster_send_handle(0, byte.as_ptr() as *const _, usize::MAX, ptr::null(), 0, 0);
    assert!(rc == RCLUSTER_E_TOOBIG || rc == RCLUSTER_E_INVAL, "{rc}");
    // And the primary still works.
    ok(rcluster_primary_send(p.handle, worker, b"hi".as_ptr() as *const _, 2), "send");
    let ev = p.wait_for(Duration::from_secs(10), "echo", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
    assert_eq!(ev.data, b"echo:hi");
}

// 9. A worker that answers pings but never acknowledges held its credit of
// clients forever.
#[test]
fn connections_a_worker_never_acknowledges_go_to_another_worker() {
    let _serial = serial();
    let mut p = TestPrimary::with("http", &[], |o| o.ack_timeout_ms = 400);
    let port = p.start(1);
    let (stuck, _) = p.fork_with(&["TEST_MODE=no-ack"]);
    p.wait_for(Duration::from_secs(10), "no-ack listening", |e| {
        e.kind == RCLUSTER_EVENT_LISTENING && e.worker == stuck
    });
    let failures = concurrent_gets(port, 20, Duration::from_secs(5));
    assert!(failures.is_empty(), "{} of 20 failed: {failures:?}", failures.len());
    p.wait_for(Duration::from_secs(5), "unresponsive", |e| e.kind == RCLUSTER_EVENT_UNRESPONSIVE && e.worker == stuck);
    p.wait_for(Duration::from_secs(5), "its exit", |e| e.kind == RCLUSTER_EVENT_EXIT && e.worker == stuck);
}

// 10. Refusals were counted per connection whatever the worker, so one
// worker refusing everything got connections reset while others had room.
#[test]
fn a_worker_refusing_everything_does_not_get_connections_reset() {
    let _serial = serial();
    let mut p = TestPrimary::with("http", &[], |o| o.max_unacked = 1);
    let port = p.start(1);
    let (refuser, _) = p.fork_with(&["TEST_MODE=refuse-all"]);
    p.wait_for(Duration::from_secs(10), "refuser listening", |e| {
        e.kind == RCLUSTER_EVENT_LISTENING && e.worker == refuser
    });
    for round in 0..5 {
        let failures = concurrent_gets(port, 24, Duration::from_secs(10));
        assert!(failures.is_empty(), "round {round}: {} of 24 failed: {:?}", failures.len(), failures.first());
    }
}

// 11. A worker at its fd limit read the truncated record as a broken
// channel and left.
#[test]
fn a_worker_at_its_fd_limit_refuses_instead_of_leaving() {
    let _serial = serial();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p.start(1);
    let (starved, _) = p.fork_with(&["TEST_STARVE=1"]);
    p.wait_for(Duration::from_secs(10), "starved listening", |e| {
        e.kind == RCLUSTER_EVENT_LISTENING && e.worker == starved
    });
    std::thread::sleep(Duration::from_millis(200)); // it has filled its fd table
    for _ in 0..3 {
        let failures = concurrent_gets(port, 20, Duration::from_secs(5));
        assert!(failures.is_empty(), "{} of 20 failed: {failures:?}", failures.len());
    }
    pump(&mut p, Duration::from_millis(200));
    let left: Vec<&Ev> = p.seen.iter().filter(|e| e.worker == starved && e.kind == RCLUSTER_EVENT_DISCONNECT).collect();
    assert!(left.is_empty(), "the starved worker stays: {:?}", p.seen);
}

// 12. Options that cannot work were accepted.
#[test]
fn harmful_options_are_refused() {
    type Tweak = fn(&mut rcluster_primary_options);
    let cases: [(&str, Tweak); 4] = [
        ("max_pending", |o| o.max_pending = 0),
        ("heartbeat_timeout", |o| {
            o.heartbeat_interval_ms = 100;
            o.heartbeat_timeout_ms = 0
        }),
        ("max_unacked", |o| o.max_unacked = 0),
        ("max_message", |o| o.max_message = 0),
    ];
    for (what, tweak) in cases {
        let mut options: rcluster_primary_options = unsafe { std::mem::zeroed() };
        ok(rcluster_primary_options_init2(&mut options, size_of::<rcluster_primary_options>()), "init");
        tweak(&mut options);
        let mut handle = ptr::null_mut();
        assert_eq!(rcluster_primary_new2(&options, &mut handle), RCLUSTER_E_INVAL, "{what}");
        assert!(last_error().contains(what), "{what}: {}", last_error());
    }
}

/// This process's resident memory, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
}

// 13. Queues were unbounded: messages to a worker that never reads, the
// event queue under a slow host, unfinished messages.
#[test]
fn messages_to_a_worker_that_never_reads_are_bounded() {
    let _serial = serial();
    let mut p = TestPrimary::with("hang", &[], |o| o.max_send_queue = 4 << 20);
    let (worker, _) = p.fork();
    p.wait_for(Duration::from_secs(10), "listening", |e| e.kind == RCLUSTER_EVENT_LISTENING);
    let chunk = vec![7u8; 1 << 20];
    let mut sent = 0;
    let refused = loop {
        let rc = rcluster_primary_send(p.handle, worker, chunk.as_ptr() as *const _, chunk.len());
        if rc != 0 {
            break rc;
        }
        sent += 1;
        assert!(sent < 64, "64 MiB queued for a worker that never reads");
    };
    assert_eq!(refused, RCLUSTER_E_TOOBIG);
    assert!(last_error().contains("not reading"), "{}", last_error());
    assert!((4..=6).contains(&sent), "{sent} MiB went before the refusal");
}

#[test]
fn a_host_that_does_not_read_events_holds_up_workers_not_memory() {
    let _serial = serial();
    let count = 3000;
    let env = [("TEST_COUNT", "3000"), ("TEST_SIZE", "65536")];
    let mut p = TestPrimary::with("flood-messages", &env, |o| o.max_event_bytes = 8 << 20);
    p.fork();
    let before = rss();
    std::thread::sleep(Duration::from_secs(2)); // the host reads nothing: 190 MiB are sent
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "the primary grew {} MiB with the host not reading", grown >> 20);
    // Nothing was dropped: every message arrives, in order.
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while next < count {
        assert!(Instant::now() < deadline, "only {next} of {count} messages arrived");
        if let Some(ev) = p.next(Duration::from_secs(5)) {
            if ev.kind == RCLUSTER_EVENT_MESSAGE {
                let seq: usize = String::from_utf8_lossy(&ev.data[..10]).split(' ').next().unwrap().parse().unwrap();
                assert_eq!(seq, next);
                next += 1;
            }
        }
    }
}

#[test]
fn a_message_over_the_configured_limit_cuts_the_worker_off() {
    let _serial = serial();
    let env = [("TEST_COUNT", "1"), ("TEST_SIZE", "2000000")];
    let mut p = TestPrimary::with("flood-messages", &env, |o| o.max_message = 1 << 20);
    p.fork();
    let ev = p.wait_for(Duration::from_secs(10), "worker error", |e| e.kind == RCLUSTER_EVENT_WORKER_ERROR);
    let message = String::from_utf8_lossy(&ev.data).into_owned();
    assert!(message.contains("over 1048576 bytes"), "{message}");
}

// 14. A worker's children believed they were workers; a program that forgot
// the is_worker check fork-bombed.
#[test]
fn a_workers_children_are_ordinary_and_nested_primaries_are_refused() {
    let _serial = serial();
    let mut p = TestPrimary::new("child-env", &[], RCLUSTER_POLICY_RR);
    p.fork();
    let ev = p.wait_for(Duration::from_secs(10), "report", |e| e.kind == RCLUSTER_EVENT_MESSAGE);
    assert_eq!(
        String::from_utf8_lossy(&ev.data),
        format!("child=unset unset is_worker=1 primary_new={RCLUSTER_E_STATE}")
    );
}

// 15. A primary that a runtime's child_process.fork() started (Bun and Deno
// keep NODE_CHANNEL_FD in the environment) passed the variable on: the
// worker's runtime took fd 3, its rcluster channel, for its own IPC and
// read the primary's frames (messages lost, workers that never left).
#[test]
fn a_primarys_own_ipc_variables_do_not_reach_its_workers() {
    let _serial = serial();
    let inherited = [
        ("NODE_CHANNEL_FD", "3"),
        ("NODE_CHANNEL_SERIALIZATION_MODE", "json"),
        ("NODE_UNIQUE_ID", "7"),
        ("KEEP_ME", "1"),
    ];
    let primary = PrimaryProcess::start(2, "http", &inherited);
    for pid in primary.pids(8) {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<String> = environ.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        assert!(vars.iter().any(|v| v == "KEEP_ME=1"), "the rest is inherited: {vars:?}");
        let foreign: Vec<&String> =
            vars.iter().filter(|v| inherited[..3].iter().any(|(k, _)| v.starts_with(&format!("{k}=")))).collect();
        assert!(foreign.is_empty(), "worker {pid} got {foreign:?}");
    }
}

#[test]
fn worker_variables_without_a_channel_make_an_ordinary_process() {
    let out = std::process::Command::new(TESTWORKER)
        .arg("stale-env")
        .env("RCLUSTER_WORKER_ID", "5")
        .env("RCLUSTER_CHANNEL_FD", "0") // stdin: not a channel
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "is_worker=0 primary_new=0");
}

// 15. After a failed open, a second one said "already open"; handles were
// the same numbers in every process.
#[test]
fn a_failed_open_can_be_retried_and_says_why_again() {
    let mut fds = [-1; 2];
    // SAFETY: socketpair into a local array.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) }, 0);
    // SAFETY: closing our copy of the peer: the worker's hello finds nobody.
    unsafe { libc::close(fds[1]) };
    let end = fds[0];
    let mut command = std::process::Command::new(TESTWORKER);
    command.arg("open-twice").env("RCLUSTER_WORKER_ID", "1").env("RCLUSTER_CHANNEL_FD", "3");
    // SAFETY: dup2 in the child before exec, an async-signal-safe call.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(end, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = command.output().unwrap();
    // SAFETY: our end, no longer needed.
    unsafe { libc::close(end) };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with(&format!("open 1: {RCLUSTER_E_CLOSED} ")), "{text}");
    assert!(lines[1].starts_with(&format!("open 2: {RCLUSTER_E_CLOSED} ")), "{text}");
    assert!(!text.contains("already open"), "{text}");
}

#[test]
fn handles_differ_from_process_to_process() {
    let handle = || {
        let out = std::process::Command::new(TESTWORKER).arg("print-handle").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (a, b) = (handle(), handle());
    assert!(a.starts_with("handle ") && b.starts_with("handle "), "{a} {b}");
    assert_ne!(a, b, "the first primary of two processes got the same handle");
}
