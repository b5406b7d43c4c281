//! The connection ledger, driven with a fake clock and numbers for fds.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::connections::{Ack, Connections, Handoff};
use crate::primary::policy::{LeastLoaded, RoundRobin};

const L: u32 = 1;

/// A ledger with one round-robin listener `L` and these workers on it.
fn ledger(max_unacked: u32, workers: &[u32]) -> Connections<u64> {
    let mut c = Connections::new(max_unacked);
    c.add_route(L, Box::new(RoundRobin::default()));
    for &w in workers {
        c.add_worker(w, None);
        c.join(w, L);
    }
    c
}

fn accept(c: &mut Connections<u64>, now: Instant, conn: u64) {
    assert!(c.dispatch(now, Handoff::new(conn, L, conn, now)).is_none());
}

fn accept_all(c: &mut Connections<u64>, now: Instant, conns: impl IntoIterator<Item = u64>) {
    for conn in conns {
        accept(c, now, conn);
    }
}

fn kind(ack: Ack<u64>) -> &'static str {
    match ack {
        Ack::Taken(_) => "taken",
        Ack::Requeued => "requeued",
        Ack::Refused(_) => "refused",
        Ack::Unknown => "unknown",
    }
}

#[test]
fn a_refused_connection_goes_to_another_worker_and_closes_once_every_worker_refused() {
    let t = Instant::now();
    let mut c = ledger(8, &[1, 2]);
    accept(&mut c, t, 10);
    assert_eq!(c.unacked_of(1), [10]);
    assert_eq!(kind(c.ack(1, 10, false)), "requeued");
    assert_eq!(c.pending_conns(), [10]);
    accept(&mut c, t, 11); // to 2: worker 1 is round-robin's next choice
    assert_eq!(c.unacked_of(2), [11]);
    c.dispatch_pending(t);
    assert_eq!(c.unacked_of(1), Vec::<u64>::new(), "never offered again to a worker that refused it");
    assert_eq!(c.unacked_of(2), [10, 11]);
    assert_eq!(kind(c.ack(2, 10, false)), "refused", "both serving workers refused it: closed");
    assert_eq!(c.places(10), (0, 0));
}

#[test]
fn one_worker_refusing_everything_waits_for_the_others_instead_of_closing() {
    let t = Instant::now();
    let mut c = ledger(1, &[1, 2]);
    accept(&mut c, t, 1); // to 1
    accept(&mut c, t, 2); // to 2: both full now
    assert_eq!(kind(c.ack(1, 1, false)), "requeued");
    c.dispatch_pending(t);
    // Worker 1 has room but refused it; worker 2 is full: it waits.
    assert_eq!(c.pending_conns(), [1]);
    assert_eq!(kind(c.ack(2, 2, true)), "taken");
    c.dispatch_pending(t);
    assert_eq!(c.unacked_of(2), [1]);
}

#[test]
fn a_leaving_workers_refusal_says_nothing_about_the_connection() {
    let t = Instant::now();
    let mut c = ledger(8, &[1]);
    accept(&mut c, t, 5);
    c.stop_offering(1);
    assert_eq!(kind(c.ack(1, 5, false)), "requeued", "given back, not refused");
    c.dispatch_pending(t);
    assert_eq!(c.pending_conns(), [5], "nobody is offered connections");
    c.add_worker(2, None);
    c.join(2, L);
    c.dispatch_pending(t);
    assert_eq!(c.unacked_of(2), [5]);
    // A refusal by the only serving worker closes it.
    assert_eq!(kind(c.ack(2, 5, false)), "refused");
}

#[test]
fn a_refusal_from_a_worker_that_left_the_listener_is_not_recorded() {
    let t = Instant::now();
    let mut c = ledger(8, &[1]);
    accept(&mut c, t, 5);
    c.leave(1, L);
    assert_eq!(kind(c.ack(1, 5, false)), "requeued", "no serving worker: it waits");
    c.join(1, L);
    c.dispatch_pending(t);
    assert_eq!(c.unacked_of(1), [5], "it did not refuse as a member: it may be offered again");
}

#[test]
fn credit_bounds_each_workers_table_and_the_queue_keeps_its_order() {
    let t = Instant::now();
    let mut c = ledger(2, &[1]);
    accept_all(&mut c, t, 1..=5);
    assert_eq!(c.unacked_of(1), [1, 2]);
    assert_eq!(c.pending_conns(), [3, 4, 5]);
    assert_eq!(kind(c.ack(1, 1, true)), "taken");
    c.dispatch_pending(t);
    assert_eq!(c.unacked_of(1), [2, 3]);
    assert_eq!(c.pending_conns(), [4, 5]);
}

#[test]
fn handed_connections_are_sent_once_in_order() {
    let t = Instant::now();
    let mut c = ledger(8, &[1, 2]);
    accept_all(&mut c, t, 1..=4);
    let mut to = c.take_handing_to();
    to.sort_unstable();
    assert_eq!(to, [1, 2]);
    let sent: Vec<u64> = c.take_handing(1).into_iter().map(|(_, conn, _)| conn).collect();
    assert_eq!(sent, [1, 3]);
    assert!(c.take_handing(1).is_empty());
    assert!(c.take_handing_to().is_empty());
}

#[test]
fn lost_connections_go_first_and_the_worker_waits_for_fds() {
    let t = Instant::now();
    let mut c = ledger(8, &[1]);
    accept_all(&mut c, t, 1..=3);
    c.add_worker(2, None); // not on the listener yet
    accept(&mut c, t, 4);
    assert_eq!(c.lost(1, vec![3, 1], t + Duration::from_millis(100)).unknown, None);
    assert_eq!(c.pending_conns(), [1, 3], "oldest first, ahead of the rest");
    c.dispatch_pending(t + Duration::from_millis(50));
    assert_eq!(c.pending_conns(), [1, 3], "the starved worker gets none meanwhile");
    let mut deadlines = Vec::new();
    c.each_deadline(None, &mut |at, _| deadlines.push(at));
    assert_eq!(deadlines, [t + Duration::from_millis(100)]);
    c.expire_starvation(t + Duration::from_millis(100));
    c.dispatch_pending(t + Duration::from_millis(100));
    assert_eq!(c.unacked_of(1), [1, 2, 3, 4]);
    assert_eq!(c.lost(1, vec![99], t).unknown, Some(99));
}

#[test]
fn a_hang_up_requeues_what_the_worker_held_oldest_first_ahead_of_newer() {
    let t = Instant::now();
    let mut c = ledger(2, &[1]);
    accept_all(&mut c, t, 1..=4);
    assert!(c.hang_up(1).is_empty());
    assert_eq!(c.pending_conns(), [1, 2, 3, 4]);
    assert!(!c.has_members(L));
    assert!(!c.any_offered());
    assert_eq!(kind(c.ack(1, 1, true)), "unknown");
}

#[test]
fn an_expired_acknowledgement_stops_the_worker_once_and_keeps_its_connections() {
    let t = Instant::now();
    let timeout = Duration::from_secs(5);
    let mut c = ledger(8, &[1, 2]);
    accept(&mut c, t, 1); // to 1
    accept(&mut c, t + Duration::from_secs(2), 2); // to 2
    let mut deadlines = Vec::new();
    c.each_deadline(Some(timeout), &mut |at, _| deadlines.push(at));
    deadlines.sort();
    assert_eq!(deadlines, [t + timeout, t + Duration::from_secs(2) + timeout]);
    assert!(c.expire_acks(t + Duration::from_millis(4999), timeout).is_empty());
    assert_eq!(c.expire_acks(t + timeout, timeout), [1]);
    assert!(c.expire_acks(t + timeout, timeout).is_empty(), "reported once");
    assert_eq!(c.unacked_of(1), [1], "still its own until it is gone");
    accept(&mut c, t + timeout, 3);
    assert_eq!(c.unacked_of(2), [2, 3], "the hung worker gets nothing new");
    assert!(c.remove_worker(1).is_empty());
    assert_eq!(c.pending_conns(), [1]);
}

#[test]
fn the_acknowledgement_deadline_runs_from_the_oldest_connection_held() {
    let t = Instant::now();
    let timeout = Duration::from_secs(5);
    let mut c = ledger(8, &[1]);
    accept(&mut c, t, 1);
    accept(&mut c, t + Duration::from_secs(2), 2);
    let mut deadlines = Vec::new();
    c.each_deadline(Some(timeout), &mut |at, _| deadlines.push(at));
    assert_eq!(deadlines, [t + timeout]);
    assert_eq!(c.expire_acks(t + timeout, timeout), [1]);
    let mut after = Vec::new();
    c.each_deadline(Some(timeout), &mut |at, _| after.push(at));
    assert!(after.is_empty(), "an expired worker's deadline is not waited for again (the loop would spin)");
}

#[test]
fn a_worker_reaching_its_budget_is_due_for_recycling_once() {
    let t = Instant::now();
    let mut c = ledger(8, &[]);
    c.add_worker(7, Some(3));
    c.join(7, L);
    accept_all(&mut c, t, 1..=2);
    assert!(c.take_recycle_due().is_empty());
    accept(&mut c, t, 3);
    assert_eq!(c.take_recycle_due(), [7]);
    accept(&mut c, t, 4);
    assert!(c.take_recycle_due().is_empty());
}

#[test]
fn done_reports_count_active_connections_for_least_loaded() {
    let t = Instant::now();
    let mut c: Connections<u64> = Connections::new(8);
    c.add_route(L, Box::new(LeastLoaded::default()));
    for w in [1, 2] {
        c.add_worker(w, None);
        c.join(w, L);
    }
    accept(&mut c, t, 1);
    let first = if c.unacked_of(1) == [1] { 1 } else { 2 };
    let other = 3 - first;
    assert_eq!(kind(c.ack(first, 1, true)), "taken");
    assert_eq!(c.load(first).active, 1);
    accept(&mut c, t, 2);
    assert_eq!(c.unacked_of(other), [2], "the worker with an active connection is not the least loaded");
    c.done(first, 1);
    assert_eq!(c.load(first).active, 0);
}

#[test]
fn a_closed_listener_and_a_shed_give_back_queued_connections_to_close() {
    let t = Instant::now();
    let mut c = ledger(8, &[]);
    accept_all(&mut c, t, 1..=5);
    let shed: Vec<u64> = c.shed_newest(2).into_iter().map(|h| h.conn).collect();
    assert_eq!(shed, [5, 4], "newest first");
    let closed: Vec<u64> = c.remove_route(L).into_iter().map(|h| h.conn).collect();
    assert_eq!(closed, [1, 2, 3]);
    assert_eq!(c.pending_len(), 0);
}

#[test]
fn each_listener_queues_its_own_and_a_shed_takes_the_newest_of_all() {
    let t = Instant::now();
    let mut c = ledger(8, &[]);
    c.add_route(2, Box::new(RoundRobin::default()));
    for conn in 1..=5 {
        let listener = if conn % 2 == 0 { 2 } else { L };
        assert!(c.dispatch(t, Handoff::new(conn, listener, conn, t)).is_none());
    }
    assert_eq!(c.pending_conns(), [1, 3, 5, 2, 4], "listener 1's queue, then listener 2's");
    let shed: Vec<u64> = c.shed_newest(3).into_iter().map(|h| h.conn).collect();
    assert_eq!(shed, [5, 4, 3]);
    assert_eq!(c.pending_len(), 2);
    c.add_worker(9, None);
    c.join(9, 2);
    c.dispatch_pending(t);
    assert_eq!(c.unacked_of(9), [2], "listener 2's workers take listener 2's connections");
    assert_eq!(c.pending_conns(), [1]);
}

#[test]
fn what_comes_back_for_a_closed_listener_is_closed() {
    let t = Instant::now();
    let mut c = ledger(8, &[1]);
    accept_all(&mut c, t, 1..=3);
    assert!(c.remove_route(L).is_empty());
    assert_eq!(kind(c.ack(1, 1, false)), "refused", "nowhere to send it again");
    let lost = c.lost(1, vec![2], t);
    assert_eq!(lost.closed.iter().map(|h| h.conn).collect::<Vec<_>>(), [2]);
    let closed: Vec<u64> = c.hang_up(1).into_iter().map(|h| h.conn).collect();
    assert_eq!(closed, [3]);
    assert_eq!(c.pending_len(), 0);
    assert!(c.dispatch(t, Handoff::new(4, L, 4, t)).is_some(), "an unknown listener's connection comes back");
}

// ----- the ownership invariant ------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Accept,
    Ack {
        worker: usize,
        pick: usize,
        accepted: bool,
    },
    Lost {
        worker: usize,
        pick: usize,
    },
    Done {
        worker: usize,
    },
    Leave {
        worker: usize,
    },
    HangUp {
        worker: usize,
    },
    NewWorker,
    Tick {
        ms: u64,
    },
    Send,
    Shed {
        count: usize,
    },
    /// Listener 2 closes (idle): what it queued is closed, and what its
    /// workers still hold is closed when it comes back.
    CloseListener,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Accept),
        4 => (0..6usize, 0..8usize, any::<bool>()).prop_map(|(worker, pick, accepted)| Op::Ack { worker, pick, accepted }),
        1 => (0..6usize, 0..8usize).prop_map(|(worker, pick)| Op::Lost { worker, pick }),
        1 => (0..6usize).prop_map(|worker| Op::Done { worker }),
        1 => (0..6usize).prop_map(|worker| Op::Leave { worker }),
        1 => (0..6usize).prop_map(|worker| Op::HangUp { worker }),
        1 => Just(Op::NewWorker),
        2 => (0..400u64).prop_map(|ms| Op::Tick { ms }),
        2 => Just(Op::Send),
        1 => (0..3usize).prop_map(|count| Op::Shed { count }),
        1 => Just(Op::CloseListener),
    ]
}

/// What happened to each connection, as the ledger's return values say.
#[derive(Default)]
struct Fates {
    taken: HashMap<u64, u32>,
    closed: HashMap<u64, u32>,
}

impl Fates {
    fn close(&mut self, conns: impl IntoIterator<Item = Handoff<u64>>) {
        for h in conns {
            *self.closed.entry(h.conn).or_default() += 1;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every accepted connection ends acknowledged by exactly one worker,
    /// or closed by the primary, never both, never neither; until then it
    /// is in exactly one place, and no worker holds more than its credit.
    #[test]
    fn every_connection_ends_taken_once_or_closed(ops in proptest::collection::vec(op(), 1..200)) {
        let max_unacked = 3;
        let t0 = Instant::now();
        let mut now = t0;
        let mut c = ledger(max_unacked, &[1, 2]);
        c.add_route(2, Box::new(LeastLoaded::default()));
        c.join(1, 2);
        let mut live: Vec<u32> = vec![1, 2];
        let mut next_worker = 3;
        let mut next_conn = 1u64;
        let mut fates = Fates::default();
        for op in ops {
            match op {
                Op::Accept => {
                    let listener = if next_conn % 3 == 0 { 2 } else { L };
                    fates.close(c.dispatch(now, Handoff::new(next_conn, listener, next_conn, now)));
                    next_conn += 1;
                }
                Op::Ack { worker, pick, accepted } if !live.is_empty() => {
                    let w = live[worker % live.len()];
                    let held = c.unacked_of(w);
                    if held.is_empty() { continue; }
                    match c.ack(w, held[pick % held.len()], accepted) {
                        Ack::Taken(h) => *fates.taken.entry(h.conn).or_default() += 1,
                        Ack::Refused(h) => fates.close([h]),
                        Ack::Requeued => {}
                        Ack::Unknown => prop_assert!(false, "a held connection was unknown"),
                    }
                }
                Op::Lost { worker, pick } if !live.is_empty() => {
                    let w = live[worker % live.len()];
                    let held = c.unacked_of(w);
                    if held.is_empty() { continue; }
                    let lost = c.lost(w, vec![held[pick % held.len()]], now + Duration::from_millis(100));
                    prop_assert_eq!(lost.unknown, None);
                    fates.close(lost.closed);
                }
                Op::Done { worker } if !live.is_empty() => c.done(live[worker % live.len()], 1),
                Op::Leave { worker } if !live.is_empty() => c.stop_offering(live[worker % live.len()]),
                Op::HangUp { worker } if !live.is_empty() => {
                    let w = live.remove(worker % live.len());
                    fates.close(c.remove_worker(w));
                }
                Op::NewWorker => {
                    c.add_worker(next_worker, Some(5));
                    c.join(next_worker, L);
                    if next_worker % 2 == 0 { c.join(next_worker, 2); }
                    live.push(next_worker);
                    next_worker += 1;
                }
                Op::Tick { ms } => {
                    now += Duration::from_millis(ms);
                    c.expire_starvation(now);
                    for w in c.expire_acks(now, Duration::from_millis(700)) {
                        prop_assert!(live.contains(&w));
                    }
                }
                Op::Send => {
                    for w in c.take_handing_to() {
                        for (_, conn, fd) in c.take_handing(w) {
                            prop_assert_eq!(conn, fd);
                        }
                    }
                }
                Op::Shed { count } => fates.close(c.shed_newest(count)),
                Op::CloseListener => fates.close(c.remove_route(2)),
                _ => {}
            }
            c.dispatch_pending(now);
            for &w in &live {
                prop_assert!(c.unacked_of(w).len() <= max_unacked as usize, "worker {} over its credit", w);
            }
            prop_assert_eq!(c.pending_len(), c.pending_conns().len(), "the queue count is the queues' length");
            for conn in 1..next_conn {
                let (queued, held) = c.places(conn);
                let ended = fates.taken.contains_key(&conn) || fates.closed.contains_key(&conn);
                prop_assert_eq!(queued + held, usize::from(!ended), "connection {} in {} places", conn, queued + held);
            }
        }
        // Shutdown: what is queued is closed; every worker leaves (what it
        // held comes back) and that is closed too.
        fates.close(c.close_pending());
        for w in live {
            fates.close(c.remove_worker(w));
        }
        fates.close(c.close_pending());
        let all: HashSet<u64> = (1..next_conn).collect();
        for conn in all {
            let taken = fates.taken.get(&conn).copied().unwrap_or(0);
            let closed = fates.closed.get(&conn).copied().unwrap_or(0);
            prop_assert_eq!(taken + closed, 1, "connection {}: taken {} times, closed {} times", conn, taken, closed);
        }
    }
}
