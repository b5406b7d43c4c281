//! The shutdown's drain, with a fake clock, alone and with the ledger.

use std::time::{Duration, Instant};

use super::connections::{Ack, Connections, Handoff};
use super::shutdown::{Drain, Shutdown};
use crate::primary::policy::RoundRobin;

const S: Duration = Duration::from_secs(1);

#[test]
fn it_hands_out_what_is_queued_until_the_queue_is_empty_then_asks_every_worker_once() {
    let t = Instant::now();
    let mut s = Shutdown::new(t, 10 * S);
    assert_eq!(s.advance(t, 3, true), Drain::Handing);
    assert_eq!(s.advance(t + S, 1, true), Drain::Handing);
    assert_eq!(s.advance(t + 2 * S, 0, true), Drain::AskAllToLeave);
    assert_eq!(s.advance(t + 2 * S, 5, true), Drain::Leaving, "asked once");
    let mut deadlines = Vec::new();
    s.each_deadline(&mut |at, _| deadlines.push(at));
    assert!(deadlines.is_empty(), "nothing left to wait for once asked");
}

#[test]
fn it_stops_draining_when_nobody_can_take_or_the_grace_runs_out() {
    let t = Instant::now();
    let mut nobody = Shutdown::new(t, 10 * S);
    assert_eq!(nobody.advance(t, 3, false), Drain::AskAllToLeave);
    let mut late = Shutdown::new(t, 10 * S);
    let mut deadlines = Vec::new();
    late.each_deadline(&mut |at, _| deadlines.push(at));
    assert_eq!(deadlines, [t + 10 * S]);
    assert_eq!(late.advance(t + 10 * S - Duration::from_millis(1), 3, true), Drain::Handing);
    assert_eq!(late.advance(t + 10 * S, 3, true), Drain::AskAllToLeave);
    assert_eq!(late.grace(), 10 * S);
}

#[test]
fn connections_accepted_before_the_shutdown_are_served_and_the_rest_closed() {
    let t = Instant::now();
    let mut c: Connections<u64> = Connections::new(2);
    c.add_route(1, Box::new(RoundRobin::default()));
    c.add_worker(7, None);
    c.join(7, 1);
    for conn in 1..=5 {
        assert!(c.dispatch(t, Handoff::new(conn, 1, conn, t)).is_none());
    }
    let mut s = Shutdown::new(t, 10 * S);
    let mut served = Vec::new();
    // Bounded: each round serves what the worker holds (credit 2).
    for _ in 0..5 {
        if s.advance(t + S, c.pending_len(), c.any_offered()) != Drain::Handing {
            break;
        }
        for conn in c.unacked_of(7) {
            if let Ack::Taken(h) = c.ack(7, conn, true) {
                served.push(h.conn);
            }
        }
        c.dispatch_pending(t + S);
    }
    assert_eq!(s.advance(t + S, 0, true), Drain::Leaving, "the drain ended: every worker was asked");
    assert_eq!(c.pending_len(), 0, "drained to the worker");
    assert_eq!(served, [1, 2, 3, 4]);
    assert_eq!(c.unacked_of(7), [5], "still the worker's: it serves it before it leaves");
    // A worker that hangs up with connections still unacknowledged: they
    // come back, and nobody is left to take them: the primary closes them.
    assert!(c.hang_up(7).is_empty());
    assert!(!c.any_offered());
    let closed: Vec<u64> = c.close_pending().into_iter().map(|h| h.conn).collect();
    assert_eq!(closed, [5]);
}
