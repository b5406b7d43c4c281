//! Policy `hybrid`: when the primary steps in, decided without I/O.
//!
//! Under `hybrid` every worker holds the listening socket and accepts on it
//! itself, so a connection at light load wakes one worker and nothing else
//! (no hop through the primary, and the kernel favours a worker that is
//! already running). The primary watches nothing meanwhile. A worker that
//! finds connections queueing on the socket behind the one it took
//! (`Frame::Busy`) calls the primary in: it then accepts and hands
//! connections over as `least` does (even spread, a slow worker gets fewer)
//! and tells the workers to stop accepting themselves. It steps out again
//! once a whole window went by in which no accept found as long a queue
//! as the one that called it in: the load that made the queue is gone.
//!
//! One [`Overflow`] per `hybrid` listener; the driver carries out each
//! [`Switch`] (watching the socket or not, telling the workers).

use std::time::{Duration, Instant};

/// How long the primary keeps dispatching before it looks again whether
/// the workers could take the connections themselves. Long enough that a
/// few quiet milliseconds in a busy run do not send it back and forth
/// (each switch is a frame to every worker), short enough that a server
/// whose load fell is back on the direct path at once for a person.
pub(crate) const DISPATCH_WINDOW: Duration = Duration::from_millis(50);

/// An accept that found this many connections or more waiting means the
/// load is still there: as many as make a worker call the primary in.
const QUEUED_BURST: usize = crate::wire::BUSY_BACKLOG as usize;

/// What the driver does for a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Switch {
    /// Watch the socket, accept and hand over; workers stop accepting.
    Dispatch,
    /// Stop watching; workers accept themselves again.
    SelfAccept,
}

/// One `hybrid` listener's state.
#[derive(Debug, Default)]
pub(crate) struct Overflow {
    /// `Some(end of the current window)` while the primary dispatches.
    window_end: Option<Instant>,
    /// The most connections one accept found waiting in this window.
    largest_burst: usize,
}

impl Overflow {
    /// Whether the primary accepts (and the workers do not).
    pub fn dispatching(&self) -> bool {
        self.window_end.is_some()
    }

    /// A worker saw connections queueing behind the one it took.
    pub fn busy(&mut self, now: Instant) -> Option<Switch> {
        if self.dispatching() {
            return None; // a report sent before the worker heard the switch
        }
        self.window_end = Some(now + DISPATCH_WINDOW);
        self.largest_burst = 0;
        Some(Switch::Dispatch)
    }

    /// One accept took `burst` connections (drained to empty).
    pub fn accepted(&mut self, burst: usize) {
        self.largest_burst = self.largest_burst.max(burst);
    }

    /// When [`Overflow::tick`] wants to run.
    pub fn deadline(&self) -> Option<Instant> {
        self.window_end
    }

    /// At the end of a window: step out if no accept in it found a queue,
    /// else look again one window later.
    pub fn tick(&mut self, now: Instant) -> Option<Switch> {
        let end = self.window_end?;
        if now < end {
            return None;
        }
        if self.largest_burst < QUEUED_BURST {
            self.window_end = None;
            return Some(Switch::SelfAccept);
        }
        self.window_end = Some(now + DISPATCH_WINDOW);
        self.largest_burst = 0;
        None
    }
}
