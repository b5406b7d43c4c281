use std::time::{Duration, Instant};

use super::overflow::{Overflow, Switch, DISPATCH_WINDOW};
use crate::wire::BUSY_BACKLOG;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// As long a queue as makes a worker call the primary in, and one less.
const QUEUE: usize = BUSY_BACKLOG as usize;
const SHORT: usize = QUEUE - 1;

#[test]
fn starts_with_the_workers_accepting_and_steps_in_when_busy() {
    let t0 = Instant::now();
    let mut o = Overflow::default();
    assert!(!o.dispatching());
    assert_eq!(o.deadline(), None, "no timer while the workers accept");
    assert_eq!(o.tick(t0 + ms(500)), None);
    assert_eq!(o.busy(t0), Some(Switch::Dispatch));
    assert!(o.dispatching());
    assert_eq!(o.deadline(), Some(t0 + DISPATCH_WINDOW));
    // Other workers' reports, sent before they heard: nothing more to do.
    assert_eq!(o.busy(t0 + ms(1)), None);
}

#[test]
fn keeps_dispatching_while_accepts_find_queues() {
    let t0 = Instant::now();
    let mut o = Overflow::default();
    o.busy(t0);
    o.accepted(1);
    o.accepted(QUEUE);
    o.accepted(SHORT);
    assert_eq!(o.tick(t0 + DISPATCH_WINDOW - ms(1)), None, "not before the window ends");
    let end = t0 + DISPATCH_WINDOW;
    assert_eq!(o.tick(end), None, "a queue as long as the one that called it in: still loaded");
    assert!(o.dispatching());
    assert_eq!(o.deadline(), Some(end + DISPATCH_WINDOW), "the next window starts at the look");
    // A window of shorter queues (a few clients at a time): step out.
    o.accepted(1);
    o.accepted(SHORT);
    assert_eq!(o.tick(end + DISPATCH_WINDOW), Some(Switch::SelfAccept));
    assert!(!o.dispatching());
    assert_eq!(o.deadline(), None);
}

#[test]
fn a_window_without_connections_steps_out_and_a_new_report_steps_in_again() {
    let t0 = Instant::now();
    let mut o = Overflow::default();
    o.busy(t0);
    o.accepted(QUEUE + 5);
    let end = t0 + DISPATCH_WINDOW;
    assert_eq!(o.tick(end), None);
    // The queue of the window before does not count in this one.
    assert_eq!(o.tick(end + DISPATCH_WINDOW), Some(Switch::SelfAccept));
    assert_eq!(o.busy(end + DISPATCH_WINDOW + ms(3)), Some(Switch::Dispatch));
    assert_eq!(o.deadline(), Some(end + DISPATCH_WINDOW + ms(3) + DISPATCH_WINDOW));
}
