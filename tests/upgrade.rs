//! Replacing the primary itself under load (issue #22, point 2): SIGUSR2
//! starts a new primary from the program's file with the listening sockets,
//! the old one stops once the new one's workers listen, and no request
//! fails. The test plays the operator: it signals, then finds the new
//! primary by the ready line it prints on the stdout they share.

mod common;
use common::*;

use std::time::Duration;

/// Stops the new primary (by pid) when the test ends, however it ends.
struct StopOnDrop(i32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill of a pid this test read from that process's own line.
        unsafe { libc::kill(self.0, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !pid_exited(self.0) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; a no-op if it is gone.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[test]
fn sigusr2_replaces_the_primary_without_a_failed_request() {
    let _serial = serial();
    let mut old = PrimaryProcess::start(2, "http", &[("TEST_SIGNALS", "1")]);
    let port = old.port;
    let old_workers: std::collections::HashSet<i32> = old.pids(20);
    let load = Load::start(port, 8);
    std::thread::sleep(Duration::from_millis(500));
    old.signal(libc::SIGUSR2);
    let line = old.read_line(Duration::from_secs(20)).expect("the new primary's ready line");
    let new_pid: i32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let _stop = StopOnDrop(new_pid);
    assert_eq!(ready_port(&line), port, "the new primary serves the same port: {line}");
    assert_ne!(new_pid, old.child.id() as i32);
    let status = old.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "the old primary stopped cleanly: {status:?}");
    std::thread::sleep(Duration::from_millis(500)); // the load goes on against the new one alone
    let samples = load.finish();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    assert!(samples.len() > 100, "the load ran ({} requests)", samples.len());
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), samples.len(), failed.first());
    // The new primary's own workers answer now.
    let now_serving = (0..20)
        .map(|_| http_get(port).unwrap().split_whitespace().nth(3).unwrap().parse::<i32>().unwrap())
        .collect::<std::collections::HashSet<i32>>();
    assert!(now_serving.is_disjoint(&old_workers), "new workers {now_serving:?}, old {old_workers:?}");
}

#[test]
fn a_new_primary_that_fails_leaves_the_old_one_serving() {
    let _serial = serial();
    // The new primary cannot start its workers (every fork fails), so it
    // never says it is ready: it is stopped, and the old one keeps serving.
    let mut old = PrimaryProcess::start(1, "http", &[("TEST_SIGNALS", "1"), ("TEST_UPGRADE_FAILS", "1")]);
    old.signal(libc::SIGUSR2);
    // The new one exits at once; the old one notices on its next check.
    std::thread::sleep(Duration::from_millis(800));
    assert!(old.child.try_wait().unwrap().is_none(), "the old primary is still running");
    for _ in 0..10 {
        assert!(http_get(old.port).is_ok());
    }
}
