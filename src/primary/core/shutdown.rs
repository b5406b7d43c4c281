//! The shutdown's drain, decided without I/O: the listeners are closed, and
//! what was accepted is still handed out until the queue is empty, nobody
//! can take it, or the grace runs out; then every worker is asked to leave
//! (SIGTERM after the grace, then SIGKILL: see [`super::Life`]) and what is
//! still queued is closed.

use std::time::{Duration, Instant};

/// Where the drain stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Connections are still queued and a worker can still take them.
    Handing,
    /// Now: close what is queued and ask every worker to leave (said once).
    AskAllToLeave,
    /// Every worker has been asked: the shutdown ends when the last is reaped.
    Leaving,
}

/// A shutdown under way.
pub(crate) struct Shutdown {
    grace: Duration,
    /// Until then, queued connections are still handed out.
    drain_until: Instant,
    asked: bool,
}

impl Shutdown {
    pub fn new(now: Instant, grace: Duration) -> Shutdown {
        Shutdown { grace, drain_until: now + grace, asked: false }
    }

    /// How long stopping workers get between signals.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// `queued`: connections waiting; `anyone_can_take`: a worker is still
    /// offered connections.
    pub fn advance(&mut self, now: Instant, queued: usize, anyone_can_take: bool) -> Drain {
        if self.asked {
            return Drain::Leaving;
        }
        if queued > 0 && anyone_can_take && now < self.drain_until {
            return Drain::Handing;
        }
        self.asked = true;
        Drain::AskAllToLeave
    }

    /// Its deadline, for the driver's single list of timers.
    pub fn each_deadline(&self, timer: &mut impl FnMut(Instant, &'static str)) {
        if !self.asked {
            timer(self.drain_until, "the shutdown stops draining");
        }
    }
}
