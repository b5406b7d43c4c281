//! Who owns each accepted connection, decided without I/O.
//!
//! An accepted connection is a [`Handoff`]. It waits in its listener's
//! queue (each listener's route owns its queue, as Node's
//! `RoundRobinHandle` does) until a worker can take it, then sits in that worker's unacknowledged
//! table until the worker acknowledges it (the primary then closes its
//! copy) or refuses it, loses it, hangs up or dies (it goes back to the
//! queue for another worker). Credit (`max_unacked`) bounds each table.
//!
//! Every connection is in exactly one place at a time — the queue, or one
//! worker's table — and leaves only through a return value: a taken
//! [`Ack::Taken`], a refused-by-everyone [`Ack::Refused`], or a batch the
//! driver closes (a shed queue, a closed listener, the shutdown). The
//! property test in `connections_tests.rs` checks exactly that.
//!
//! `F` is what keeps a connection open: the driver's `Arc<OwnedFd>`;
//! the tests use plain numbers. Nothing here reads a clock or touches an fd.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::primary::policy::Policy;

/// An accepted connection the primary still owns. Dropping it closes the
/// primary's copy.
pub(crate) struct Handoff<F> {
    pub conn: u64,
    pub listener: u32,
    pub fd: F,
    /// The workers that refused it: it is not offered to them again, and
    /// it is closed once every worker serving its listener has refused it.
    refused_by: Vec<u32>,
    /// When it was last handed to a worker (for the acknowledgement deadline).
    handed_at: Instant,
}

impl<F> Handoff<F> {
    pub fn new(conn: u64, listener: u32, fd: F, now: Instant) -> Handoff<F> {
        Handoff { conn, listener, fd, refused_by: Vec::new(), handed_at: now }
    }
}

/// What a worker's acknowledgement came to.
pub(crate) enum Ack<F> {
    /// The worker took it: dropping this closes the primary's copy.
    Taken(Handoff<F>),
    /// Refused: queued again for another worker.
    Requeued,
    /// Every worker serving its listener refused it (or the listener is
    /// gone): dropping this closes it.
    Refused(Handoff<F>),
    /// The worker does not hold it: a protocol error.
    Unknown,
}

/// One listener's routing: its workers in join order, its policy, and its
/// connections waiting for a worker. The socket itself stays with the driver.
struct Route<F> {
    members: Vec<u32>,
    policy: Box<dyn Policy>,
    waiting: VecDeque<Handoff<F>>,
}

/// One worker's side of the ledger.
struct Holder<F> {
    /// Connected and not leaving: new connections may be offered to it.
    offered: bool,
    unacked: HashMap<u64, Handoff<F>>,
    /// Handed this turn and not yet sent: (listener, connection, fd). The
    /// driver sends them together (several fds per record).
    handing: Vec<(u32, u64, F)>,
    /// Acknowledged and not reported finished (policies with done reports).
    active: u32,
    dispatched: u64,
    /// Recycle once this many connections were handed over.
    recycle_at: Option<u64>,
    /// It could not receive fds (at its fd limit): nothing until then.
    starved_until: Option<Instant>,
    /// It held a connection past the acknowledgement deadline.
    ack_expired: bool,
}

impl<F> Holder<F> {
    fn can_take(&self, max_unacked: usize, now: Instant) -> bool {
        self.offered && self.unacked.len() < max_unacked && self.starved_until.is_none_or(|until| until <= now)
    }

    fn oldest_unacked(&self) -> Option<Instant> {
        self.unacked.values().map(|h| h.handed_at).min()
    }
}

/// Load figures for one worker's stats.
pub(crate) struct Load {
    pub in_flight: u32,
    pub active: u32,
    pub dispatched: u64,
}

/// What a lost-fds report came to.
pub(crate) struct Lost<F> {
    /// Connections of a listener that is gone: dropping them closes them.
    pub closed: Vec<Handoff<F>>,
    /// A connection the worker does not hold (a protocol error).
    pub unknown: Option<u64>,
}

/// The ledger of every connection the primary holds.
pub(crate) struct Connections<F> {
    routes: HashMap<u32, Route<F>>,
    holders: HashMap<u32, Holder<F>>,
    /// Connections waiting in all routes' queues.
    queued: usize,
    /// Workers with something in `handing`, for the driver to send.
    handing_to: Vec<u32>,
    /// Workers that reached their connection budget.
    recycle_due: Vec<u32>,
    max_unacked: usize,
}

impl<F: Clone> Connections<F> {
    pub fn new(max_unacked: u32) -> Connections<F> {
        Connections {
            routes: HashMap::new(),
            holders: HashMap::new(),
            queued: 0,
            handing_to: Vec::new(),
            recycle_due: Vec::new(),
            max_unacked: max_unacked as usize,
        }
    }

    // ----- listeners -------------------------------------------------------

    pub fn add_route(&mut self, listener: u32, policy: Box<dyn Policy>) {
        self.routes.insert(listener, Route { members: Vec::new(), policy, waiting: VecDeque::new() });
    }

    pub fn policy(&self, listener: u32) -> Option<&dyn Policy> {
        self.routes.get(&listener).map(|r| &*r.policy)
    }

    /// Forgets a listener; its queued connections come back to be closed.
    pub fn remove_route(&mut self, listener: u32) -> VecDeque<Handoff<F>> {
        let gone = self.routes.remove(&listener).map(|r| r.waiting).unwrap_or_default();
        self.queued -= gone.len();
        gone
    }

    /// Queues a connection at the back (new, or refused) or the front (given
    /// back through no fault of its own) of its listener's queue; with its
    /// listener gone, it comes back to be closed.
    fn queue(&mut self, handoff: Handoff<F>, front: bool) -> Option<Handoff<F>> {
        let Some(route) = self.routes.get_mut(&handoff.listener) else { return Some(handoff) };
        self.queued += 1;
        if front {
            route.waiting.push_front(handoff);
        } else {
            route.waiting.push_back(handoff);
        }
        None
    }

    pub fn join(&mut self, worker: u32, listener: u32) {
        if let Some(route) = self.routes.get_mut(&listener) {
            if !route.members.contains(&worker) {
                route.members.push(worker);
            }
        }
    }

    pub fn leave(&mut self, worker: u32, listener: u32) {
        if let Some(route) = self.routes.get_mut(&listener) {
            route.members.retain(|&w| w != worker);
        }
    }

    pub fn has_members(&self, listener: u32) -> bool {
        self.routes.get(&listener).is_some_and(|r| !r.members.is_empty())
    }

    // ----- workers ---------------------------------------------------------

    pub fn add_worker(&mut self, worker: u32, recycle_at: Option<u64>) {
        let holder = Holder {
            offered: true,
            unacked: HashMap::new(),
            handing: Vec::new(),
            active: 0,
            dispatched: 0,
            recycle_at,
            starved_until: None,
            ack_expired: false,
        };
        self.holders.insert(worker, holder);
    }

    /// The worker is leaving: it is offered nothing new (what it holds stays its).
    pub fn stop_offering(&mut self, worker: u32) {
        if let Some(holder) = self.holders.get_mut(&worker) {
            holder.offered = false;
        }
    }

    /// Its replacement failed: it is not recycled again.
    pub fn forget_budget(&mut self, worker: u32) {
        if let Some(holder) = self.holders.get_mut(&worker) {
            holder.recycle_at = None;
        }
    }

    /// Whether any worker can still be offered connections.
    pub fn any_offered(&self) -> bool {
        self.holders.values().any(|h| h.offered)
    }

    /// The worker's channel closed: it leaves every listener, and what it
    /// held goes back to the front of its listener's queue, oldest first.
    /// Returned: those whose listener is gone, to be closed.
    pub fn hang_up(&mut self, worker: u32) -> Vec<Handoff<F>> {
        let Some(holder) = self.holders.get_mut(&worker) else { return Vec::new() };
        holder.offered = false;
        holder.handing.clear(); // they are in `unacked` too, re-queued below
        let mut orphans: Vec<Handoff<F>> = holder.unacked.drain().map(|(_, h)| h).collect();
        orphans.sort_by_key(|h| std::cmp::Reverse(h.conn));
        let closed = orphans.into_iter().filter_map(|h| self.queue(h, true)).collect();
        for route in self.routes.values_mut() {
            route.members.retain(|&w| w != worker);
        }
        closed
    }

    /// The worker is gone (reaped, after its hang-up).
    pub fn remove_worker(&mut self, worker: u32) -> Vec<Handoff<F>> {
        let closed = self.hang_up(worker);
        self.holders.remove(&worker);
        closed
    }

    pub fn load(&self, worker: u32) -> Load {
        self.holders.get(&worker).map_or(Load { in_flight: 0, active: 0, dispatched: 0 }, |h| Load {
            in_flight: h.unacked.len() as u32,
            active: h.active,
            dispatched: h.dispatched,
        })
    }

    // ----- connections -----------------------------------------------------

    pub fn pending_len(&self) -> usize {
        self.queued
    }

    /// Hands a new connection to the worker its listener's policy picks, or
    /// queues it. Returned: the connection if its listener is unknown, to close.
    pub fn dispatch(&mut self, now: Instant, handoff: Handoff<F>) -> Option<Handoff<F>> {
        match self.pick(now, &handoff) {
            Some(worker) => {
                self.hand_to(now, worker, handoff);
                None
            }
            None => self.queue(handoff, false),
        }
    }

    /// Hands out queued connections wherever a worker can take them,
    /// keeping the order of those that must still wait.
    pub fn dispatch_pending(&mut self, now: Instant) {
        if self.queued == 0 {
            return;
        }
        let listeners: Vec<u32> =
            self.routes.iter().filter(|(_, r)| !r.waiting.is_empty()).map(|(&id, _)| id).collect();
        for listener in listeners {
            let Some(route) = self.routes.get_mut(&listener) else { continue };
            let mut queue = std::mem::take(&mut route.waiting);
            let mut waiting = VecDeque::new();
            while let Some(handoff) = queue.pop_front() {
                match self.pick(now, &handoff) {
                    Some(worker) => {
                        self.queued -= 1;
                        self.hand_to(now, worker, handoff);
                    }
                    None => waiting.push_back(handoff),
                }
            }
            if let Some(route) = self.routes.get_mut(&listener) {
                route.waiting = waiting;
            }
        }
    }

    /// The worker the listener's policy picks, never one that refused it.
    fn pick(&mut self, now: Instant, handoff: &Handoff<F>) -> Option<u32> {
        let route = self.routes.get_mut(&handoff.listener)?;
        let holders = &self.holders;
        let max_unacked = self.max_unacked;
        route.policy.pick(&route.members, &mut |id| {
            let holder = holders.get(&id)?;
            let can = holder.can_take(max_unacked, now) && !handoff.refused_by.contains(&id);
            can.then_some(holder.unacked.len() as u32 + holder.active)
        })
    }

    /// Into the worker's table at once: if the send fails, its hang-up re-queues it.
    fn hand_to(&mut self, now: Instant, worker: u32, mut handoff: Handoff<F>) {
        let Some(holder) = self.holders.get_mut(&worker) else { return };
        handoff.handed_at = now;
        if holder.handing.is_empty() {
            self.handing_to.push(worker);
        }
        holder.handing.push((handoff.listener, handoff.conn, handoff.fd.clone()));
        holder.unacked.insert(handoff.conn, handoff);
        holder.dispatched += 1;
        if holder.recycle_at.is_some_and(|limit| holder.dispatched >= limit) {
            holder.recycle_at = None;
            self.recycle_due.push(worker);
        }
    }

    /// The workers with connections handed and not yet sent.
    pub fn take_handing_to(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.handing_to)
    }

    pub fn is_handing(&self, worker: u32) -> bool {
        self.holders.get(&worker).is_some_and(|h| !h.handing.is_empty())
    }

    /// What was handed to `worker` and not yet sent, in order.
    pub fn take_handing(&mut self, worker: u32) -> Vec<(u32, u64, F)> {
        self.holders.get_mut(&worker).map(|h| std::mem::take(&mut h.handing)).unwrap_or_default()
    }

    /// Workers that reached their connection budget since last asked.
    pub fn take_recycle_due(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.recycle_due)
    }

    pub fn holds(&self, worker: u32, conn: u64) -> bool {
        self.holders.get(&worker).is_some_and(|h| h.unacked.contains_key(&conn))
    }

    /// A worker took (or refused) a connection.
    pub fn ack(&mut self, worker: u32, conn: u64, accepted: bool) -> Ack<F> {
        let Some(holder) = self.holders.get_mut(&worker) else { return Ack::Unknown };
        let Some(mut handoff) = holder.unacked.remove(&conn) else { return Ack::Unknown };
        let Some(route) = self.routes.get(&handoff.listener) else {
            return if accepted { Ack::Taken(handoff) } else { Ack::Refused(handoff) };
        };
        if accepted {
            // Only policies that receive done reports can know when it ends.
            if route.policy.wants_done_reports() {
                holder.active += 1;
            }
            return Ack::Taken(handoff);
        }
        // A worker that is leaving or left the listener gives back what it
        // was sent meanwhile: that says nothing about the connection.
        if holder.offered && route.members.contains(&worker) && !handoff.refused_by.contains(&worker) {
            handoff.refused_by.push(worker);
        }
        // Distinct workers count, not refusals: one worker that refuses
        // everything must not get a connection closed while others have room.
        let holders = &self.holders;
        let mut serving = route.members.iter().filter(|m| holders.get(m).is_some_and(|h| h.offered)).peekable();
        let everyone_refused = serving.peek().is_some() && serving.all(|m| handoff.refused_by.contains(m));
        if everyone_refused {
            return Ack::Refused(handoff);
        }
        match self.queue(handoff, false) {
            Some(handoff) => Ack::Refused(handoff),
            None => Ack::Requeued,
        }
    }

    /// The worker could not receive these connections (at its fd limit):
    /// they go back to the front of the queue, not counted as refusals,
    /// and the worker gets none until `until`.
    pub fn lost(&mut self, worker: u32, mut conns: Vec<u64>, until: Instant) -> Lost<F> {
        let mut lost = Lost { closed: Vec::new(), unknown: None };
        let Some(holder) = self.holders.get_mut(&worker) else { return lost };
        holder.starved_until = Some(until);
        conns.sort_unstable_by(|a, b| b.cmp(a));
        for conn in conns {
            let Some(handoff) = self.holders.get_mut(&worker).and_then(|h| h.unacked.remove(&conn)) else {
                lost.unknown = Some(conn);
                break;
            };
            // Oldest first, ahead of the rest.
            lost.closed.extend(self.queue(handoff, true));
        }
        lost
    }

    /// The worker finished `count` connections it had taken.
    pub fn done(&mut self, worker: u32, count: u32) {
        if let Some(holder) = self.holders.get_mut(&worker) {
            holder.active = holder.active.saturating_sub(count);
        }
    }

    /// Past starvation is forgotten, so no timer waits for it again.
    pub fn expire_starvation(&mut self, now: Instant) {
        for holder in self.holders.values_mut() {
            holder.starved_until = holder.starved_until.filter(|&until| until > now);
        }
    }

    /// Workers holding a connection unacknowledged for `timeout` or more:
    /// they are offered nothing more, and the driver kills them. Their
    /// connections stay theirs until they are gone (they could still take
    /// one, and a connection must never be served twice).
    pub fn expire_acks(&mut self, now: Instant, timeout: Duration) -> Vec<u32> {
        let mut hung = Vec::new();
        for (&worker, holder) in &mut self.holders {
            if holder.ack_expired || holder.oldest_unacked().is_none_or(|at| now.duration_since(at) < timeout) {
                continue;
            }
            holder.ack_expired = true;
            holder.offered = false;
            hung.push(worker);
        }
        hung.sort_unstable();
        hung
    }

    /// Every deadline the ledger has, for the driver's single list of timers.
    pub fn each_deadline(&self, ack_timeout: Option<Duration>, timer: &mut impl FnMut(Instant, &'static str)) {
        for holder in self.holders.values() {
            if let Some(until) = holder.starved_until.filter(|_| self.queued > 0) {
                timer(until, "a worker out of fds may be handed connections again");
            }
            if let (Some(timeout), false) = (ack_timeout, holder.ack_expired) {
                if let Some(oldest) = holder.oldest_unacked() {
                    timer(oldest + timeout, "an unacknowledged connection's deadline");
                }
            }
        }
    }

    /// Takes the newest `count` queued connections out, whatever their
    /// listener, to be closed (the oldest are next in line).
    pub fn shed_newest(&mut self, count: usize) -> Vec<Handoff<F>> {
        let mut shed = Vec::new();
        while shed.len() < count {
            let newest = self.routes.values_mut().filter(|r| !r.waiting.is_empty()).max_by_key(|r| {
                let back = r.waiting.back().map_or(0, |h| h.conn);
                back
            });
            let Some(handoff) = newest.and_then(|r| r.waiting.pop_back()) else { break };
            self.queued -= 1;
            shed.push(handoff);
        }
        shed
    }

    /// Takes every queued connection out, to be closed (nobody is left to serve them).
    pub fn close_pending(&mut self) -> Vec<Handoff<F>> {
        self.queued = 0;
        self.routes.values_mut().flat_map(|r| std::mem::take(&mut r.waiting)).collect()
    }

    /// Debug and test check: where `conn` is, as (queued, held by workers).
    #[cfg(test)]
    pub fn places(&self, conn: u64) -> (usize, usize) {
        let queued = self.routes.values().flat_map(|r| &r.waiting).filter(|h| h.conn == conn).count();
        let held = self.holders.values().filter(|h| h.unacked.contains_key(&conn)).count();
        (queued, held)
    }

    #[cfg(test)]
    pub fn unacked_of(&self, worker: u32) -> Vec<u64> {
        let mut conns: Vec<u64> = self.holders.get(&worker).map_or(Vec::new(), |h| h.unacked.keys().copied().collect());
        conns.sort_unstable();
        conns
    }

    #[cfg(test)]
    pub fn pending_conns(&self) -> Vec<u64> {
        let mut listeners: Vec<&u32> = self.routes.keys().collect();
        listeners.sort_unstable();
        listeners.iter().flat_map(|l| &self.routes[l].waiting).map(|h| h.conn).collect()
    }
}
