//! One worker's lifecycle, decided without I/O: its phase, why it leaves
//! (which decides what its exit means), the signals that stop it, and its
//! heartbeat. The phase is the public [`WorkerState`], so what `stats`
//! reports is what the primary acts on.
//!
//! ```text
//! Starting --hello--> Online --listen--> Listening
//!     \                  \                   \
//!      +------------------+-------------------+--> Leaving --hang-up--> Disconnected
//! ```
//!
//! Any phase goes to `Disconnected` when the channel closes; the worker is
//! forgotten once reaped. Readiness (for replacements) is an event latched
//! once, not a phase: under `wait_ready` it can come before or after the
//! listen.

use std::time::{Duration, Instant};

use crate::event::WorkerState;

/// The next signal a stopping worker gets, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Escalation {
    at: Instant,
    signal: libc::c_int,
}

/// What a heartbeat check says to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Beat {
    Nothing,
    /// Send a ping with this sequence number.
    Ping(u64),
    /// A ping went unanswered past the timeout: the worker is hung.
    Hung,
}

/// One worker's lifecycle.
pub(crate) struct Life {
    phase: WorkerState,
    started: Instant,
    /// Reported ready (listening, or said so under `wait_ready`), once.
    ready: bool,
    /// Its exit follows a disconnect it asked for or was asked for.
    after_disconnect: bool,
    /// The primary asked it to go: its exit is not a crash.
    stop_requested: bool,
    escalation: Option<Escalation>,
    /// Outstanding ping: its sequence number and when it was sent.
    ping: Option<(u64, Instant)>,
    next_ping: Option<Instant>,
}

impl Life {
    pub fn new(now: Instant) -> Life {
        Life {
            phase: WorkerState::Starting,
            started: now,
            ready: false,
            after_disconnect: false,
            stop_requested: false,
            escalation: None,
            ping: None,
            next_ping: None,
        }
    }

    pub fn phase(&self) -> WorkerState {
        self.phase
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn after_disconnect(&self) -> bool {
        self.after_disconnect
    }

    pub fn stop_requested(&self) -> bool {
        self.stop_requested
    }

    /// Serving: listening, not leaving, channel open.
    pub fn listening(&self) -> bool {
        self.phase == WorkerState::Listening
    }

    /// Ready and serving: may be measured and recycled.
    pub fn serving_ready(&self) -> bool {
        self.ready && self.connected_not_leaving()
    }

    fn connected_not_leaving(&self) -> bool {
        matches!(self.phase, WorkerState::Starting | WorkerState::Online | WorkerState::Listening)
    }

    /// It said hello: its heartbeat starts.
    pub fn hello(&mut self, now: Instant, heartbeat: Option<Duration>) {
        if self.phase == WorkerState::Starting {
            self.phase = WorkerState::Online;
        }
        self.next_ping = heartbeat.map(|interval| now + interval);
    }

    /// It listens on something.
    pub fn listened(&mut self) {
        if matches!(self.phase, WorkerState::Starting | WorkerState::Online) {
            self.phase = WorkerState::Listening;
        }
    }

    /// Latches readiness; true the first time.
    pub fn become_ready(&mut self) -> bool {
        !std::mem::replace(&mut self.ready, true)
    }

    fn leave(&mut self) {
        if self.connected_not_leaving() {
            self.phase = WorkerState::Leaving;
        }
    }

    /// The primary asks it to finish and leave: SIGTERM after `stop_timeout`
    /// unless a stop is already under way.
    pub fn ask_to_leave(&mut self, now: Instant, stop_timeout: Duration) {
        self.leave();
        self.after_disconnect = true;
        self.stop_requested = true;
        if self.escalation.is_none() {
            self.escalation = Some(Escalation { at: now + stop_timeout, signal: libc::SIGTERM });
        }
    }

    /// The shutdown asks it to leave: SIGTERM after the grace, whatever came before.
    pub fn ask_to_leave_for_shutdown(&mut self, now: Instant, grace: Duration) {
        self.ask_to_leave(now, grace);
        self.escalation = Some(Escalation { at: now + grace, signal: libc::SIGTERM });
    }

    /// It said goodbye: it leaves on its own.
    pub fn goodbye(&mut self) {
        self.leave();
        self.after_disconnect = true;
    }

    /// A replacement that will not be ready: killed at once, not a crash.
    pub fn abandon(&mut self) {
        self.leave();
        self.stop_requested = true;
    }

    /// It held a connection past the acknowledgement deadline: it is killed,
    /// gets nothing meanwhile, and its exit is a crash.
    pub fn ack_expired(&mut self) {
        self.leave();
    }

    /// It broke the protocol: SIGTERM now (SIGKILL after the stop timeout).
    pub fn protocol_error(&mut self, now: Instant) {
        self.escalation = Some(Escalation { at: now, signal: libc::SIGTERM });
    }

    /// Asked twice to stop: SIGKILL now.
    pub fn kill_now(&mut self, now: Instant) {
        self.escalation = Some(Escalation { at: now, signal: libc::SIGKILL });
    }

    /// Its channel closed.
    pub fn hang_up(&mut self) {
        self.phase = WorkerState::Disconnected;
    }

    /// The signal due now, if any; SIGTERM is followed by SIGKILL after `stop_timeout`.
    pub fn due_signal(&mut self, now: Instant, stop_timeout: Duration) -> Option<libc::c_int> {
        let esc = self.escalation.filter(|e| e.at <= now)?;
        self.escalation =
            (esc.signal != libc::SIGKILL).then_some(Escalation { at: now + stop_timeout, signal: libc::SIGKILL });
        Some(esc.signal)
    }

    /// Whether the heartbeat watches it: said hello, connected, not leaving.
    /// `each_deadline` and `heartbeat` both ask this, so a deadline is only
    /// waited for when a check will act on it.
    fn heartbeat_watched(&self) -> bool {
        matches!(self.phase, WorkerState::Online | WorkerState::Listening)
    }

    /// One ping outstanding at a time: the next is due an interval after
    /// the last was sent, once it is answered.
    pub fn heartbeat(&mut self, now: Instant, interval: Duration, timeout: Duration, next_seq: &mut u64) -> Beat {
        if !self.heartbeat_watched() {
            return Beat::Nothing;
        }
        match self.ping {
            Some((_, sent)) if now.duration_since(sent) >= timeout => {
                self.ping = None;
                self.next_ping = None;
                Beat::Hung
            }
            Some(_) => Beat::Nothing,
            None if self.next_ping.is_some_and(|at| at <= now) => {
                let seq = *next_seq;
                *next_seq += 1;
                self.ping = Some((seq, now));
                self.next_ping = Some(now + interval);
                Beat::Ping(seq)
            }
            None => Beat::Nothing,
        }
    }

    pub fn pong(&mut self, seq: u64) {
        if self.ping.is_some_and(|(sent, _)| sent == seq) {
            self.ping = None;
        }
    }

    /// Its deadlines, for the driver's single list of timers.
    pub fn each_deadline(&self, heartbeat_timeout: Duration, timer: &mut impl FnMut(Instant, &'static str)) {
        if let Some(esc) = self.escalation {
            timer(esc.at, "a stopping worker gets its next signal");
        }
        if self.heartbeat_watched() {
            match self.ping {
                Some((_, sent)) => timer(sent + heartbeat_timeout, "an unanswered ping times out"),
                None => {
                    if let Some(at) = self.next_ping {
                        timer(at, "the next ping");
                    }
                }
            }
        }
    }
}
