//! Supervision under load, with real worker processes and real clients:
//! rolling reloads, kill -9 of a worker and of the primary, crash loops,
//! heartbeats, recycling, scaling, stats. Every test ends with no zombie
//! and the fd count where it started.

mod common;
use common::*;

use std::collections::HashMap;
use std::time::{Duration, Instant};

const SECS: Duration = Duration::from_secs(15);

/// Starts a test with the fd count recorded; `end` checks it and the pids.
struct Checked {
    fds: usize,
}

impl Checked {
    fn begin() -> Checked {
        Checked { fds: open_fds() }
    }

    fn end(self, p: TestPrimary) {
        let pids: Vec<i32> = p.seen.iter().filter(|e| e.kind == RCLUSTER_EVENT_FORK).map(|e| e.pid).collect();
        drop(p);
        for pid in pids {
            assert!(!pid_exists(pid), "worker {pid} left behind (running or zombie)");
        }
        assert_eq!(open_fds(), self.fds, "fd count back where it started");
    }
}

fn generations(p: &TestPrimary) -> HashMap<u32, u32> {
    p.seen.iter().filter(|e| e.kind == RCLUSTER_EVENT_FORK).map(|e| (e.worker, e.generation)).collect()
}

#[test]
fn twenty_rolling_reloads_under_load_lose_no_request() {
    let _serial = serial();
    let check = Checked::begin();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p.start(2);
    let load = Load::start(port, 32);
    std::thread::sleep(Duration::from_millis(200));
    let mut done_at = Vec::new();
    for round in 1..=20u32 {
        let mut generation = 0;
        ok(rcluster_primary_reload(p.handle, &mut generation), "reload");
        assert_eq!(generation, round);
        let done = p.wait_for(SECS, "reload done", |e| {
            assert_ne!(e.kind, RCLUSTER_EVENT_RELOAD_FAILED, "reload failed: {}", String::from_utf8_lossy(&e.data));
            e.kind == RCLUSTER_EVENT_RELOAD_DONE
        });
        assert_eq!(done.generation, round);
        done_at.push((round, Instant::now()));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let samples = load.finish();
    let failures: Vec<_> = samples.iter().filter_map(|s| s.error.as_ref()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        samples.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(samples.len() > 1000, "the load ran ({} requests)", samples.len());
    // Every answer came from a worker of the generations expected: a
    // connection made after reload N completed is served by generation N or
    // later. (A keep-alive connection made earlier stays with its worker
    // until that worker, leaving, answers it with `Connection: close`; a
    // worker that has not run since it was asked, on a loaded machine, may
    // still do so after a later reload, so only the connection's age counts.)
    let generation_of = generations(&p);
    for sample in &samples {
        let worker = sample.worker.unwrap();
        let generation = *generation_of.get(&worker).expect("answered by a worker this primary started");
        let newest_done = done_at.iter().rev().find(|(_, at)| *at < sample.connected).map_or(0, |(g, _)| *g);
        assert!(
            generation >= newest_done,
            "a connection made after reload {newest_done} was answered by generation {generation} (keep-alive: {})",
            sample.keep_alive
        );
    }
    let served_by: std::collections::HashSet<u32> = samples.iter().filter_map(|s| s.worker).collect();
    assert!(served_by.len() >= 30, "most of the 42 workers served some requests ({})", served_by.len());
    p.shutdown();
    check.end(p);
}

#[test]
fn a_worker_killed_under_load_is_replaced_within_a_second() {
    let _serial = serial();
    let check = Checked::begin();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p.start(2);
    let load = Load::start(port, 32);
    std::thread::sleep(Duration::from_millis(300));
    let victim = p.seen.iter().find(|e| e.kind == RCLUSTER_EVENT_FORK).cloned().unwrap();
    let killed_at = Instant::now();
    unsafe { libc::kill(victim.pid, libc::SIGKILL) };
    let exit = p.wait_for(SECS, "victim exit", |e| e.kind == RCLUSTER_EVENT_EXIT);
    assert_eq!((exit.worker, exit.signal), (victim.worker, libc::SIGKILL));
    let fork = p.wait_for(SECS, "replacement", |e| e.kind == RCLUSTER_EVENT_FORK);
    assert_eq!(fork.slot, victim.slot, "the replacement takes the victim's slot");
    p.wait_for(SECS, "replacement listening", |e| e.kind == RCLUSTER_EVENT_LISTENING && e.worker == fork.worker);
    let replaced_in = killed_at.elapsed();
    assert!(replaced_in < Duration::from_secs(1), "replacement listening after {replaced_in:?}");
    std::thread::sleep(Duration::from_millis(300));
    let samples = load.finish();
    // Only requests in flight on the victim's connections may fail: at most
    // one per client, and none that started after the replacement was up.
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    assert!(failed.len() <= 32, "{} failures", failed.len());
    for f in &failed {
        assert!(f.started < killed_at + replaced_in, "a request started after the replacement failed: {:?}", f.error);
    }
    let served: usize = samples.iter().filter(|s| s.worker == Some(fork.worker)).count();
    assert!(served > 0, "the replacement serves");
    p.shutdown();
    check.end(p);
}

#[test]
fn killing_the_primary_takes_every_worker_down_within_a_second() {
    let _serial = serial();
    use std::io::BufRead;
    let mut primary = std::process::Command::new(TESTWORKER)
        .args(["primary", "3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(primary.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = ready_port(&line);
    let mut pids = std::collections::HashSet::new();
    for _ in 0..12 {
        let body = http_get(port).unwrap();
        pids.insert(body.split_whitespace().nth(3).unwrap().parse::<i32>().unwrap());
    }
    assert_eq!(pids.len(), 3);
    let killed = Instant::now();
    primary.kill().unwrap(); // SIGKILL
    primary.wait().unwrap();
    while !pids.iter().all(|&pid| pid_exited(pid)) {
        assert!(killed.elapsed() < Duration::from_secs(1), "workers still alive 1 s after the primary died");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_worker_that_always_fails_backs_off_then_crash_loops_while_others_serve() {
    let _serial = serial();
    let check = Checked::begin();
    let mut p = TestPrimary::with("http", &[], |o| {
        o.restart_delay_ms = 50;
        o.restart_backoff = 2.0;
        o.restart_delay_max_ms = 1000;
        o.crash_loop_count = 4;
        o.crash_loop_window_ms = 10_000;
    });
    let port = p.start(2);
    let mode = std::ffi::CString::new("TEST_MODE=exit-code").unwrap();
    let code = std::ffi::CString::new("TEST_EXIT_CODE=3").unwrap();
    let env = [mode.as_ptr(), code.as_ptr(), std::ptr::null()];
    let mut slot_worker = 0;
    ok(rcluster_primary_fork(p.handle, env.as_ptr(), &mut slot_worker, std::ptr::null_mut()), "fork failing worker");
    let slot =
        p.wait_for(SECS, "failing worker's fork", |e| e.kind == RCLUSTER_EVENT_FORK && e.worker == slot_worker).slot;
    let crash_loop = p.wait_for(SECS, "crash loop", |e| e.kind == RCLUSTER_EVENT_CRASH_LOOP);
    assert_eq!(crash_loop.slot, slot);
    let exits = p.seen.iter().filter(|e| e.kind == RCLUSTER_EVENT_EXIT && e.exit_code == 3).count();
    assert_eq!(exits, 4, "four failures, then no more restarts");
    let mut stats = vec![unsafe { std::mem::zeroed::<rcluster_worker_stats>() }; 8];
    let mut count = 0;
    ok(rcluster_primary_stats(p.handle, stats.as_mut_ptr(), stats.len(), &mut count), "stats");
    assert_eq!(count, 2, "only the two serving workers are left");
    let counts = distribution(port, 20);
    assert_eq!(counts.len(), 2, "the others keep serving: {counts:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        p.next(Duration::from_millis(100)).is_none_or(|e| e.kind != RCLUSTER_EVENT_FORK),
        "no restart after the crash loop"
    );
    p.shutdown();
    check.end(p);
}

#[test]
fn restart_delays_grow_as_configured() {
    let _serial = serial();
    let check = Checked::begin();
    let mut p = TestPrimary::with("exit-code 5", &[], |o| {
        o.restart_delay_ms = 100;
        o.restart_backoff = 2.0;
        o.restart_delay_max_ms = 300;
        o.crash_loop_count = 5;
    });
    p.fork();
    p.wait_for(SECS, "crash loop", |e| e.kind == RCLUSTER_EVENT_CRASH_LOOP);
    // Gap between each exit and the next start: 100, 200, then capped at 300.
    let mut gaps = Vec::new();
    let mut last_exit = None;
    for e in &p.seen {
        match e.kind {
            RCLUSTER_EVENT_EXIT => last_exit = Some(e.at),
            RCLUSTER_EVENT_FORK => {
                if let Some(exit) = last_exit.take() {
                    gaps.push(e.at.duration_since(exit));
                }
            }
            _ => {}
        }
    }
    let expected = [100u64, 200, 300, 300];
    assert_eq!(gaps.len(), expected.len(), "{gaps:?}");
    for (gap, want) in gaps.iter().zip(expected) {
        let want = Duration::from_millis(want);
        assert!(*gap + Duration::from_millis(15) >= want && *gap < want + Duration::from_millis(250), "gaps {gaps:?}");
    }
    p.shutdown();
    check.end(p);
}

#[test]
fn a_hung_worker_is_killed_by_the_heartbeat_and_replaced() {
    let _serial = serial();
    let check = Checked::begin();
    let mut p = TestPrimary::with("http", &[], |o| {
        o.heartbeat_interval_ms = 100;
        o.heartbeat_timeout_ms = 400;
    });
    let port = p.start(1);
    let mode = std::ffi::CString::new("TEST_MODE=hang").unwrap();
    let env = [mode.as_ptr(), std::ptr::null()];
    let mut hung = 0;
    ok(rcluster_primary_fork(p.handle, env.as_ptr(), &mut hung, std::ptr::null_mut()), "fork hanging worker");
    let unresponsive = p.wait_for(SECS, "unresponsive", |e| e.kind == RCLUSTER_EVENT_UNRESPONSIVE);
    assert_eq!(unresponsive.worker, hung);
    let exit = p.wait_for(SECS, "hung worker killed", |e| e.kind == RCLUSTER_EVENT_EXIT && e.worker == hung);
    assert_eq!(exit.signal, libc::SIGKILL);
    let replacement = p.wait_for(SECS, "replacement", |e| e.kind == RCLUSTER_EVENT_FORK);
    assert_ne!(replacement.worker, hung);
    // The healthy worker, which answers pings from its accept loop, lives on.
    std::thread::sleep(Duration::from_millis(600));
    assert!(p.seen.iter().all(|e| e.kind != RCLUSTER_EVENT_UNRESPONSIVE || e.worker != 1 || hung == 1));
    assert!(http_get(port).is_ok());
    p.shutdown();
    check.end(p);
}

#[test]
fn recycling_replaces_a_worker_after_its_connection_budget() {
    let _serial = serial();
    let check = Checked::begin();
    let mut p = TestPrimary::with("http", &[], |o| o.recycle_after = 25);
    let port = p.start(1);
    let first = p.seen.iter().find(|e| e.kind == RCLUSTER_EVENT_FORK).unwrap().worker;
    // The replacement is started when the 25th connection is handed over
    // (its Fork event is queued before that request is answered).
    let mut replaced_after = None;
    let mut served = HashMap::new();
    for i in 1..=60 {
        let worker = worker_of(&http_get(port).expect("no request lost while recycling"));
        *served.entry(worker).or_insert(0) += 1;
        while let Some(e) = p.next(Duration::ZERO) {
            if e.kind == RCLUSTER_EVENT_FORK && replaced_after.is_none() {
                replaced_after = Some(i);
            }
        }
    }
    assert_eq!(replaced_after, Some(25), "replacement forked after the 25th connection");
    let is_first_exit = |e: &Ev| e.kind == RCLUSTER_EVENT_EXIT && e.worker == first;
    let exit = match p.seen.iter().find(|e| is_first_exit(e)).cloned() {
        Some(exit) => exit,
        None => p.wait_for(SECS, "recycled exit", is_first_exit),
    };
    assert_eq!(exit.exit_code, 0);
    assert_ne!(exit.flags & RCLUSTER_EXIT_AFTER_DISCONNECT, 0, "recycled gracefully");
    assert!(served[&first] >= 25, "the first worker served its budget: {served:?}");
    assert!(served.len() >= 2, "a replacement served the rest: {served:?}");
    p.shutdown();
    check.end(p);
}

#[test]
fn scale_and_stats() {
    let _serial = serial();
    let check = Checked::begin();
    let mut p = TestPrimary::new("http", &[], RCLUSTER_POLICY_RR);
    let port = p.start(1);
    ok(rcluster_primary_scale(p.handle, 3), "scale up");
    for _ in 0..2 {
        p.wait_for(SECS, "new worker listening", |e| e.kind == RCLUSTER_EVENT_LISTENING);
    }
    assert_eq!(distribution(port, 30).len(), 3);
    let mut stats = vec![unsafe { std::mem::zeroed::<rcluster_worker_stats>() }; 2];
    let mut count = 0;
    ok(rcluster_primary_stats(p.handle, stats.as_mut_ptr(), stats.len(), &mut count), "stats");
    assert_eq!(count, 3, "count says how many there are, even past capacity");
    stats.resize(3, unsafe { std::mem::zeroed() });
    ok(rcluster_primary_stats(p.handle, stats.as_mut_ptr(), stats.len(), &mut count), "stats");
    for s in &stats {
        assert_eq!(s.state, RCLUSTER_WORKER_LISTENING);
        assert_eq!(s.dispatched, 10);
        assert_eq!(s.in_flight, 0);
        assert!(s.pid > 0 && s.slot >= 0);
    }
    ok(rcluster_primary_scale(p.handle, 1), "scale down");
    for _ in 0..2 {
        let exit = p.wait_for(SECS, "scaled-down exit", |e| e.kind == RCLUSTER_EVENT_EXIT);
        assert_ne!(exit.flags & RCLUSTER_EXIT_AFTER_DISCONNECT, 0);
    }
    assert_eq!(distribution(port, 5).len(), 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        p.next(Duration::from_millis(100)).is_none_or(|e| e.kind != RCLUSTER_EVENT_FORK),
        "scaled-down workers are not restarted"
    );
    p.shutdown();
    check.end(p);
}

#[test]
fn reload_waits_for_ready_and_aborts_when_a_replacement_never_is() {
    let _serial = serial();
    let check = Checked::begin();
    let mut p = TestPrimary::with("late-ready", &[], |o| {
        o.wait_ready = 1;
        o.ready_timeout_ms = 2000;
    });
    let port = p.start(1);
    let old = p.seen.iter().find(|e| e.kind == RCLUSTER_EVENT_FORK).unwrap().worker;
    ok(rcluster_primary_reload(p.handle, std::ptr::null_mut()), "reload");
    let new = p.wait_for(SECS, "replacement fork", |e| e.kind == RCLUSTER_EVENT_FORK).worker;
    p.wait_for(SECS, "reload done", |e| e.kind == RCLUSTER_EVENT_RELOAD_DONE);
    // The old worker was asked to leave only after the new one said ready.
    let order: Vec<(i32, u32)> = p.seen.iter().map(|e| (e.kind, e.worker)).collect();
    let listening_new = order.iter().position(|&k| k == (RCLUSTER_EVENT_LISTENING, new)).unwrap();
    let exit_old = p.wait_for(SECS, "old exit", |e| e.kind == RCLUSTER_EVENT_EXIT && e.worker == old);
    assert_eq!(exit_old.exit_code, 0);
    assert!(listening_new < p.seen.len());
    assert_eq!(worker_of(&http_get(port).unwrap()), new);
    p.shutdown();
    drop(p);

    // A replacement that never says ready: the reload fails, the old one serves on.
    let mut p = TestPrimary::with("never-ready", &[], |o| {
        o.wait_ready = 1;
        o.ready_timeout_ms = 500;
    });
    let port = p.start(1);
    let old = p.seen.iter().find(|e| e.kind == RCLUSTER_EVENT_FORK).unwrap().worker;
    ok(rcluster_primary_reload(p.handle, std::ptr::null_mut()), "reload");
    let failed = p.wait_for(SECS, "reload failed", |e| e.kind == RCLUSTER_EVENT_RELOAD_FAILED);
    assert!(String::from_utf8_lossy(&failed.data).contains("not ready"), "{}", String::from_utf8_lossy(&failed.data));
    for _ in 0..5 {
        assert_eq!(worker_of(&http_get(port).unwrap()), old, "the old worker keeps serving");
    }
    p.shutdown();
    check.end(p);
}
