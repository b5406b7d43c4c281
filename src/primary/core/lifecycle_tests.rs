//! A worker's lifecycle, driven with a fake clock.

use std::time::{Duration, Instant};

use super::lifecycle::{Beat, Life};
use crate::event::WorkerState;

const S: Duration = Duration::from_secs(1);

fn deadlines(life: &Life, heartbeat_timeout: Duration) -> Vec<Instant> {
    let mut all = Vec::new();
    life.each_deadline(heartbeat_timeout, &mut |at, _| all.push(at));
    all.sort();
    all
}

/// A worker asked to leave now, with this stop timeout.
fn asked_to_leave(stop_timeout: Duration) -> (Instant, Life) {
    let t = Instant::now();
    let mut life = Life::new(t);
    life.ask_to_leave(t, stop_timeout);
    (t, life)
}

#[test]
fn phases_follow_hello_listen_leave_and_hang_up() {
    let t = Instant::now();
    let mut life = Life::new(t);
    assert_eq!(life.phase(), WorkerState::Starting);
    life.hello(t, None);
    assert_eq!(life.phase(), WorkerState::Online);
    life.listened();
    assert_eq!(life.phase(), WorkerState::Listening);
    assert!(life.listening());
    life.ask_to_leave(t, 5 * S);
    assert_eq!(life.phase(), WorkerState::Leaving);
    life.listened();
    life.hello(t, None);
    assert_eq!(life.phase(), WorkerState::Leaving, "a leaving worker does not come back");
    life.hang_up();
    assert_eq!(life.phase(), WorkerState::Disconnected);
    life.goodbye();
    assert_eq!(life.phase(), WorkerState::Disconnected);
}

#[test]
fn why_it_leaves_decides_what_its_exit_means() {
    let t = Instant::now();
    let mut asked = Life::new(t);
    asked.ask_to_leave(t, S);
    assert!(asked.after_disconnect() && asked.stop_requested());
    let mut bye = Life::new(t);
    bye.goodbye();
    assert!(bye.after_disconnect() && !bye.stop_requested(), "a goodbye is not a stop the primary asked for");
    let mut abandoned = Life::new(t);
    abandoned.abandon();
    assert!(!abandoned.after_disconnect() && abandoned.stop_requested());
    let mut expired = Life::new(t);
    expired.ack_expired();
    assert_eq!(expired.phase(), WorkerState::Leaving);
    assert!(!expired.after_disconnect() && !expired.stop_requested(), "a hung worker's exit is a crash");
}

#[test]
fn a_stop_is_sigterm_after_the_timeout_then_sigkill() {
    let (t, mut life) = asked_to_leave(5 * S);
    life.ask_to_leave(t + S, 5 * S);
    assert_eq!(deadlines(&life, S), [t + 5 * S], "asking again does not postpone it");
    assert_eq!(life.due_signal(t + 4 * S, 3 * S), None);
    assert_eq!(life.due_signal(t + 5 * S, 3 * S), Some(libc::SIGTERM));
    assert_eq!(life.due_signal(t + 7 * S, 3 * S), None);
    assert_eq!(life.due_signal(t + 8 * S, 3 * S), Some(libc::SIGKILL));
    assert_eq!(life.due_signal(t + 100 * S, 3 * S), None, "nothing after SIGKILL");
    assert!(deadlines(&life, S).is_empty(), "no deadline left to spin on");
}

#[test]
fn the_shutdown_grace_replaces_an_earlier_stop_and_a_second_signal_kills_now() {
    let (t, mut life) = asked_to_leave(30 * S);
    life.ask_to_leave_for_shutdown(t + S, 2 * S);
    assert_eq!(deadlines(&life, S), [t + 3 * S]);
    life.kill_now(t + 2 * S);
    assert_eq!(life.due_signal(t + 2 * S, 2 * S), Some(libc::SIGKILL));
    let mut broken = Life::new(t);
    broken.protocol_error(t);
    assert_eq!(broken.due_signal(t, 2 * S), Some(libc::SIGTERM));
}

#[test]
fn the_heartbeat_pings_one_at_a_time_and_finds_a_hung_worker() {
    let t = Instant::now();
    let (interval, timeout) = (S, 3 * S);
    let mut seq = 1;
    let mut life = Life::new(t);
    assert_eq!(life.heartbeat(t + 10 * S, interval, timeout, &mut seq), Beat::Nothing, "not before hello");
    life.hello(t, Some(interval));
    assert_eq!(deadlines(&life, timeout), [t + S]);
    assert_eq!(life.heartbeat(t + S / 2, interval, timeout, &mut seq), Beat::Nothing);
    assert_eq!(life.heartbeat(t + S, interval, timeout, &mut seq), Beat::Ping(1));
    assert_eq!(deadlines(&life, timeout), [t + S + timeout], "waiting for the answer");
    assert_eq!(life.heartbeat(t + 2 * S, interval, timeout, &mut seq), Beat::Nothing, "one ping outstanding");
    life.pong(7);
    assert_eq!(life.heartbeat(t + 2 * S, interval, timeout, &mut seq), Beat::Nothing, "a wrong answer is ignored");
    life.pong(1);
    assert_eq!(deadlines(&life, timeout), [t + 2 * S]);
    assert_eq!(life.heartbeat(t + 2 * S, interval, timeout, &mut seq), Beat::Ping(2));
    assert_eq!(life.heartbeat(t + 5 * S - S / 2, interval, timeout, &mut seq), Beat::Nothing);
    assert_eq!(life.heartbeat(t + 5 * S, interval, timeout, &mut seq), Beat::Hung);
    assert_eq!(life.heartbeat(t + 50 * S, interval, timeout, &mut seq), Beat::Nothing, "reported once");
    assert!(deadlines(&life, timeout).is_empty());
}

#[test]
fn a_leaving_worker_is_not_watched_by_the_heartbeat() {
    let t = Instant::now();
    let mut seq = 1;
    let mut life = Life::new(t);
    life.hello(t, Some(S));
    life.goodbye();
    assert!(deadlines(&life, S).is_empty());
    assert_eq!(life.heartbeat(t + 10 * S, S, S, &mut seq), Beat::Nothing);
}

#[test]
fn readiness_is_reported_once_and_only_a_serving_worker_is_recycled_for_memory() {
    let t = Instant::now();
    let mut life = Life::new(t);
    life.hello(t, None);
    assert!(!life.serving_ready());
    assert!(life.become_ready());
    assert!(!life.become_ready(), "latched");
    assert!(life.serving_ready());
    life.goodbye();
    assert!(!life.serving_ready());
}
