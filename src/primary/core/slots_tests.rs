//! Slots, reloads, replacements and restarts, driven with a fake clock.

use std::time::{Duration, Instant};

use super::slots::{Departed, SlotAction, Slots};
use crate::error::{Code, Error};
use crate::event::{Event, Exit};
use crate::primary::supervisor::{Cause, Supervision};

const MS: Duration = Duration::from_millis(1);

/// Slots 0..n served by workers 1..=n.
fn slots(n: u32, policy: Supervision) -> Slots {
    let mut s = Slots::new(policy);
    for worker in 1..=n {
        let index = s.add(Vec::new());
        s.set_worker(index, worker);
    }
    s
}

/// What the slots asked for since last asked, in words.
fn drain(s: &mut Slots) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(action) = s.next_action() {
        out.push(match action {
            SlotAction::Start { slot, replacing: None } => format!("restart {slot}"),
            SlotAction::Start { slot, replacing: Some(Cause::Reload) } => format!("replace {slot}"),
            SlotAction::Start { slot, replacing: Some(Cause::Recycle) } => format!("recycle {slot}"),
            SlotAction::Stop(w) => format!("stop {w}"),
            SlotAction::Abandon(w) => format!("abandon {w}"),
            SlotAction::KeepServing(w) => format!("keep {w}"),
            SlotAction::Emit(Event::ReloadDone { generation }) => format!("done {generation}"),
            SlotAction::Emit(Event::ReloadFailed { generation, .. }) => format!("failed {generation}"),
            SlotAction::Emit(Event::CrashLoop { slot, .. }) => format!("crash loop {slot}"),
            SlotAction::Emit(other) => format!("{other:?}"),
            SlotAction::SpawnFailed { slot, .. } => format!("spawn failed {slot}"),
            SlotAction::ReloadStarted => "reloading".to_owned(),
            SlotAction::ReloadEnded => "reloaded".to_owned(),
        });
    }
    out
}

fn serving(s: &Slots) -> Vec<Option<u32>> {
    s.workers().map(|(_, w, _)| w).collect()
}

fn deadlines(s: &Slots) -> Vec<Instant> {
    let mut all = Vec::new();
    s.each_deadline(&mut |at, _| all.push(at));
    all.sort();
    all
}

fn exit(worker: u32, slot: u32, started: Instant, exit: Exit) -> Departed {
    Departed { worker, pid: 100 + worker as i32, slot, started, stop_requested: false, after_disconnect: false, exit }
}

/// `n` slots reloading two at a time, slot 0's replacement (worker 10) started.
fn reloading_two_at_a_time(n: u32) -> (Instant, Slots) {
    let t = Instant::now();
    let mut s = slots(n, Supervision { reload_concurrency: 2, ..Supervision::default() });
    s.reload(t);
    s.started(t, 0, Some(Cause::Reload), Ok(10));
    (t, s)
}

fn no_fds() -> Error {
    Error::new(Code::Os, "spawn").with_errno(libc::EMFILE)
}

#[test]
fn a_reload_replaces_one_slot_at_a_time_and_stops_each_old_worker_once_the_new_one_is_ready() {
    let t = Instant::now();
    let mut s = slots(3, Supervision::default());
    assert_eq!(s.reload(t), 1);
    assert_eq!(drain(&mut s), ["reloading", "replace 0"]);
    s.started(t, 0, Some(Cause::Reload), Ok(10));
    assert!(drain(&mut s).is_empty(), "one replacement at a time");
    assert_eq!(serving(&s), [Some(1), Some(2), Some(3)], "the old worker serves until the new one is ready");
    s.ready(t, 0, 10);
    assert_eq!(drain(&mut s), ["stop 1", "replace 1"]);
    s.started(t, 1, Some(Cause::Reload), Ok(11));
    s.ready(t, 1, 11);
    assert_eq!(drain(&mut s), ["stop 2", "replace 2"]);
    s.started(t, 2, Some(Cause::Reload), Ok(12));
    s.ready(t, 2, 12);
    assert_eq!(drain(&mut s), ["stop 3", "done 1", "reloaded"]);
    assert_eq!(serving(&s), [Some(10), Some(11), Some(12)]);
    assert!(!s.reloading());
}

#[test]
fn reload_concurrency_starts_that_many_replacements_together() {
    let t = Instant::now();
    let mut s = slots(3, Supervision { reload_concurrency: 2, ..Supervision::default() });
    s.reload(t);
    assert_eq!(drain(&mut s), ["reloading", "replace 0"]);
    s.started(t, 0, Some(Cause::Reload), Ok(10));
    assert_eq!(drain(&mut s), ["replace 1"], "the next start waits for the previous one's answer");
    s.started(t, 1, Some(Cause::Reload), Ok(11));
    assert!(drain(&mut s).is_empty());
    s.ready(t, 1, 11);
    assert_eq!(drain(&mut s), ["stop 2", "replace 2"]);
}

#[test]
fn a_reload_ends_only_once_every_replacement_in_flight_is_ready() {
    let (t, mut s) = reloading_two_at_a_time(2);
    s.started(t, 1, Some(Cause::Reload), Ok(11));
    assert_eq!(drain(&mut s), ["reloading", "replace 0", "replace 1"]);
    s.ready(t, 0, 10);
    assert_eq!(drain(&mut s), ["stop 1"], "slot 1's replacement is not ready yet");
    s.ready(t, 1, 11);
    assert_eq!(drain(&mut s), ["stop 2", "done 1", "reloaded"]);
}

#[test]
fn a_reload_asks_for_one_start_at_a_time_whatever_happens_meanwhile() {
    let (t, mut s) = reloading_two_at_a_time(3);
    assert_eq!(drain(&mut s), ["reloading", "replace 0", "replace 1"]);
    // Slot 0's replacement gets ready before slot 1's start is answered.
    s.ready(t, 0, 10);
    assert_eq!(drain(&mut s), ["stop 1"], "no second start before the first is answered");
    s.started(t, 1, Some(Cause::Reload), Ok(11));
    assert_eq!(drain(&mut s), ["replace 2"]);
}

#[test]
fn a_reload_asked_for_during_one_runs_after_it() {
    let t = Instant::now();
    let mut s = slots(1, Supervision::default());
    s.reload(t);
    assert_eq!(s.reload(t), 2, "the generation it will bring");
    assert_eq!(drain(&mut s), ["reloading", "replace 0"]);
    s.started(t, 0, Some(Cause::Reload), Ok(10));
    s.ready(t, 0, 10);
    assert_eq!(drain(&mut s), ["stop 1", "done 1", "reloaded", "reloading", "replace 0"]);
    assert_eq!(s.generation(), 2);
}

#[test]
fn a_replacement_that_cannot_start_fails_the_reload_and_the_old_workers_keep_serving() {
    let t = Instant::now();
    let mut s = slots(3, Supervision { reload_concurrency: 2, ..Supervision::default() });
    s.reload(t);
    s.reload(t); // queued: dropped with the failure
    s.started(t, 0, Some(Cause::Reload), Ok(10));
    assert_eq!(drain(&mut s), ["reloading", "replace 0", "replace 1"]);
    s.started(t, 1, Some(Cause::Reload), Err(no_fds()));
    assert_eq!(drain(&mut s), ["abandon 10", "failed 1", "reloaded"]);
    assert_eq!(serving(&s), [Some(1), Some(2), Some(3)]);
    assert!(!s.reloading());
    s.ready(t, 0, 10);
    assert!(drain(&mut s).is_empty(), "an abandoned replacement takes nothing over");
}

#[test]
fn a_replacement_that_dies_or_is_late_fails_the_reload() {
    let t = Instant::now();
    let timeout = Duration::from_secs(30);
    let mut s = slots(2, Supervision { ready_timeout: timeout, ..Supervision::default() });
    s.reload(t);
    s.started(t, 0, Some(Cause::Reload), Ok(10));
    drain(&mut s);
    s.exited(t + MS, &exit(10, 0, t, Exit::Code(1)));
    assert_eq!(drain(&mut s), ["abandon 10", "failed 1", "reloaded"]);
    s.reload(t + MS);
    s.started(t + MS, 0, Some(Cause::Reload), Ok(11));
    drain(&mut s);
    assert_eq!(deadlines(&s), [t + MS + timeout]);
    s.tick(t + timeout);
    assert!(drain(&mut s).is_empty());
    s.tick(t + MS + timeout);
    assert_eq!(drain(&mut s), ["abandon 11", "failed 2", "reloaded"]);
    assert_eq!(serving(&s), [Some(1), Some(2)]);
}

#[test]
fn recycling_replaces_one_worker_and_a_failed_recycle_keeps_the_old_one() {
    let t = Instant::now();
    let timeout = Duration::from_secs(30);
    let mut s = slots(2, Supervision { ready_timeout: timeout, ..Supervision::default() });
    s.recycle(1);
    assert_eq!(drain(&mut s), ["recycle 1"]);
    s.started(t, 1, Some(Cause::Recycle), Ok(20));
    s.recycle(1);
    assert!(drain(&mut s).is_empty(), "one replacement per slot at a time");
    s.ready(t, 1, 20);
    assert_eq!(drain(&mut s), ["stop 2"]);
    s.recycle(0);
    s.started(t, 0, Some(Cause::Recycle), Ok(21));
    drain(&mut s);
    s.tick(t + timeout);
    assert_eq!(drain(&mut s), ["abandon 21", "keep 1"]);
    assert_eq!(serving(&s), [Some(1), Some(20)]);
}

#[test]
fn a_crash_restarts_after_a_growing_delay_until_the_slot_crash_loops() {
    let t = Instant::now();
    let policy = Supervision { crash_loop_count: 3, ..Supervision::default() };
    let delay = policy.restart_delay;
    let mut s = slots(1, policy);
    let mut now = t;
    let mut worker = 1;
    let mut delays = Vec::new();
    for _ in 0..2 {
        s.exited(now, &exit(worker, 0, now, Exit::Signal(libc::SIGSEGV)));
        assert!(drain(&mut s).is_empty());
        let at = deadlines(&s)[0];
        delays.push(at - now);
        s.tick(at - MS);
        assert!(drain(&mut s).is_empty(), "not before its time");
        s.tick(at);
        assert_eq!(drain(&mut s), ["restart 0"]);
        worker += 1;
        s.started(at, 0, None, Ok(worker));
        now = at;
    }
    assert_eq!(delays, [delay, delay * 2]);
    assert_eq!(s.restarts(0), 2);
    s.exited(now, &exit(worker, 0, now, Exit::Code(3)));
    assert_eq!(drain(&mut s), ["crash loop 0"]);
    assert!(deadlines(&s).is_empty(), "a crash-looped slot is not restarted");
    s.reload(now);
    assert_eq!(drain(&mut s), ["reloading", "done 1", "reloaded"]);
    assert_eq!(deadlines(&s), [now], "a reload gives it a fresh start");
}

#[test]
fn a_graceful_leave_restarts_at_once_and_a_requested_stop_not_at_all() {
    let t = Instant::now();
    let mut s = slots(2, Supervision::default());
    let graceful = Departed { after_disconnect: true, ..exit(1, 0, t, Exit::Code(0)) };
    s.exited(t, &graceful);
    assert_eq!(deadlines(&s), [t], "no backoff for a clean goodbye");
    let stopped = Departed { stop_requested: true, ..exit(2, 1, t, Exit::Signal(libc::SIGTERM)) };
    s.exited(t, &stopped);
    assert_eq!(deadlines(&s), [t]);
    s.exited(t, &exit(99, 0, t, Exit::Code(1)));
    assert!(drain(&mut s).is_empty(), "a worker the slot no longer has is ignored");
}

#[test]
fn a_restart_that_cannot_spawn_retries_on_its_own_backoff_and_never_crash_loops() {
    let t = Instant::now();
    let policy = Supervision { crash_loop_count: 2, ..Supervision::default() };
    let mut s = slots(1, policy);
    s.exited(t, &exit(1, 0, t, Exit::Code(1)));
    let mut at = deadlines(&s)[0];
    for _ in 0..5 {
        s.tick(at);
        assert_eq!(drain(&mut s), ["restart 0"]);
        s.started(at, 0, None, Err(no_fds()));
        assert_eq!(drain(&mut s), ["spawn failed 0"]);
        at = deadlines(&s)[0];
    }
    s.tick(at);
    drain(&mut s);
    s.started(at, 0, None, Ok(2));
    assert_eq!(serving(&s), [Some(2)]);
}

#[test]
fn the_shutdown_stops_reloads_restarts_and_recycling() {
    let t = Instant::now();
    let mut s = slots(2, Supervision::default());
    s.reload(t);
    s.reload(t);
    s.started(t, 0, Some(Cause::Reload), Ok(10));
    drain(&mut s);
    s.stop();
    assert!(!s.reloading());
    s.exited(t, &exit(2, 1, t, Exit::Code(1)));
    s.recycle(0);
    s.tick(t + Duration::from_secs(3600));
    assert!(drain(&mut s).is_empty());
    assert!(deadlines(&s).is_empty());
}

#[test]
fn removing_a_slot_stops_its_worker_and_its_replacement() {
    let t = Instant::now();
    let mut s = slots(2, Supervision::default());
    s.recycle(1);
    s.started(t, 1, Some(Cause::Recycle), Ok(20));
    drain(&mut s);
    s.remove_last();
    assert_eq!(drain(&mut s), ["stop 2", "stop 20"]);
    assert_eq!(s.len(), 1);
}
