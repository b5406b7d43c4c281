//! The primary's event loop: one thread, one mio poll. The turn is below
//! (`run`); what each event does is one method in the file for its concern:
//! `commands.rs`, `accept.rs`, `channels.rs`, `reload.rs`, `timers.rs`,
//! `upgrading.rs`. Decisions that need no I/O are in [`super::core`].
//!
//! Each turn: wait for readiness or the next timer, then handle what is
//! ready — host commands, new connections, worker frames, worker exits,
//! signals — then hand pending connections to workers, fire timers
//! (restarts, replacement deadlines, heartbeats, stop escalations), and move
//! the shutdown along.
//!
//! # Connection ownership
//!
//! Decided in [`super::core::Connections`], without I/O: the loop accepts,
//! gives each connection to the ledger with its fd, sends what the ledger
//! hands to each worker, and feeds it acknowledgements, refusals, lost fds
//! and hang-ups. `max_pending` bounds the queue; when it is full the primary
//! stops accepting and the kernel's backlog holds the rest.
//!
//! # Supervision
//!
//! Decided in [`super::core::Slots`] (reloads, replacements, restarts, crash
//! loops) and [`super::core::Life`] (each worker's phase, stop signals and
//! heartbeat); `reload.rs` carries out the slots' actions (`run_slot_actions`),
//! spawning workers and reporting back. Listeners stay open throughout.

mod accept;
mod channels;
mod commands;
mod overflow;
mod reload;
mod timers;
mod upgrading;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::core::{Ack, Beat, Connections, Departed, Drain, Life, Shutdown, SlotAction, Slots};
use super::listener::{parse_address, Listener};
use super::policy::Sockets;
use super::signals::SignalPipe;
use super::supervisor::Jitter;
use super::systemd::{self, InheritedSocket, Notifier};
use super::upgrade::{self, Upgrade};
use super::{Command, Config, Shared, WorkerInfo};
use crate::channel::{self, Reassembler};
use crate::error::{Code, Error, Result};
use crate::event::{Event, Exit, Metrics, PrimaryStats, WorkerState, WorkerStats};
use crate::message_fds;
use crate::spawn::{self, SpawnOverrides, Spawned, StdioPipes};
use crate::sys::{self, ExitStatus};
use crate::wire::Frame;

/// Without a pidfd, how often exits are checked with waitpid(pid, WNOHANG).
const REAP_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// READY=1 waits this long after the last new slot, so a host forking its
/// workers one call at a time is reported ready once all of them listen,
/// not after the first.
const READY_SETTLE: Duration = Duration::from_millis(100);
/// How often workers' memory is checked against `max_memory`.
const MEMORY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Queued connections closed when a worker cannot start for lack of fds:
/// enough for a spawn (a socketpair, a pidfd, exec's error pipe) and more.
const SHED_ON_EMFILE: usize = 16;

// Tokens: the low two bits say what, the rest which.
const KIND_SPECIAL: usize = 0;
const KIND_LISTENER: usize = 1;
const KIND_CHANNEL: usize = 2;
const TOKEN_WAKE: Token = Token(0);
const TOKEN_SIGNALS: Token = Token(1 << 2);
const TOKEN_UPGRADE: Token = Token(2 << 2);
const KIND_PIDFD: usize = 3;

fn token(kind: usize, id: u32) -> Token {
    Token(((id as usize) << 2) | kind)
}

/// An accepted connection the primary still owns: its fd rides in the ledger.
type Handoff = super::core::Handoff<Arc<OwnedFd>>;

/// A record waiting for room in a worker's socket buffer.
struct Outgoing {
    header: u8,
    payload: Vec<u8>,
    fds: Vec<Arc<OwnedFd>>,
}

/// The primary's end of a worker's channel.
struct Link {
    fd: OwnedFd,
    reassembler: Reassembler,
    outbox: VecDeque<Outgoing>,
    writable_armed: bool,
    /// Bytes queued for the worker, shared with the host's `send` (which
    /// adds what it queues; we take that off as we take its commands, and
    /// count the outbox in while it holds records).
    queued: Arc<AtomicUsize>,
}

/// One worker process, from start until it is reaped.
struct WorkerEntry {
    id: u32,
    pid: i32,
    child: Option<std::process::Child>,
    pidfd: Option<OwnedFd>,
    link: Option<Link>,
    slot: Option<u32>,
    generation: u32,
    /// Its phase, why it leaves, its stop signals and heartbeat.
    life: Life,
    listening_on: Vec<u32>,
    /// Application messages it sent, and was sent.
    messages_in: u64,
    messages_out: u64,
}

pub(crate) struct EventLoop {
    poll: Poll,
    shared: Arc<Shared>,
    config: Config,
    workers: HashMap<u32, WorkerEntry>,
    /// Slots, reloads, replacements and restarts.
    slots: Slots,
    listeners: HashMap<u32, Listener>,
    /// Listeners by address and port-0 index (0 for other ports).
    by_address: HashMap<(SocketAddr, u16), u32>,
    /// Unix-socket and UDP sockets shared with workers.
    shared_sockets: super::shared_sockets::SharedSockets,
    /// Who owns each accepted connection (the queue, each worker's table).
    conns: Connections<Arc<OwnedFd>>,
    next_worker: u32,
    next_listener: u32,
    next_conn: u64,
    next_ping_seq: u64,
    /// Slots whose worker reached its connection budget.
    recycle_due: Vec<u32>,
    jitter: Jitter,
    signals: Option<SignalPipe>,
    shutdown: Option<Shutdown>,
    /// The time this turn started (read once per turn, not per connection).
    now: Instant,
    /// Workers whose channels went unread while the host was behind on events.
    unread: Vec<u32>,
    /// Listening sockets systemd passed and no listener has taken yet.
    inherited: Vec<InheritedSocket>,
    /// Where readiness is reported (systemd's `NOTIFY_SOCKET`).
    notifier: Notifier,
    /// `READY=1` was sent for the current state (start, or the last reload).
    ready_notified: bool,
    /// When the last slot was added (see `READY_SETTLE`).
    slot_added_at: Instant,
    /// A new primary being started to replace this one (SIGUSR2).
    upgrade: Option<Upgrade>,
    /// How often accepting paused (EMFILE and the like).
    accept_pauses: u64,
    /// When workers' memory is next checked (with `max_memory` set).
    next_memory_check: Instant,
}

impl EventLoop {
    pub(crate) fn new(mut config: Config, shared: Arc<Shared>) -> Result<EventLoop> {
        if config.spawn.argv.is_empty() {
            // This program, as it is now: after a deploy replaces its file,
            // restarts and reloads run the new one from the same path (see
            // spawn::current_argv). If it cannot be known now, spawn tries again.
            if let Ok(argv) = spawn::current_argv() {
                config.spawn.argv = argv;
            }
        }
        let systemd_on = config.systemd;
        let max_unacked = config.max_unacked;
        let supervision = config.supervision.clone();
        let poll = Poll::new().map_err(|e| Error::os("epoll", e))?;
        poll.registry()
            .register(&mut SourceFd(&shared.wake.raw()), TOKEN_WAKE, Interest::READABLE)
            .map_err(|e| Error::os("registering the wake fd", e))?;
        let signals = if config.handle_signals {
            let pipe = SignalPipe::install()?;
            poll.registry()
                .register(&mut SourceFd(&pipe.fd().as_raw_fd()), TOKEN_SIGNALS, Interest::READABLE)
                .map_err(|e| Error::os("registering the signal pipe", e))?;
            Some(pipe)
        } else {
            None
        };
        Ok(EventLoop {
            poll,
            shared,
            config,
            workers: HashMap::new(),
            slots: Slots::new(supervision),
            listeners: HashMap::new(),
            by_address: HashMap::new(),
            shared_sockets: Default::default(),
            conns: Connections::new(max_unacked),
            next_worker: 1,
            next_listener: 1,
            next_conn: 1,
            next_ping_seq: 1,
            recycle_due: Vec::new(),
            jitter: Jitter::new(),
            signals,
            shutdown: None,
            now: Instant::now(),
            unread: Vec::new(),
            inherited: if systemd_on { systemd::take_listen_fds() } else { Vec::new() },
            notifier: if systemd_on { Notifier::from_env() } else { Notifier::from_nothing() },
            ready_notified: false,
            slot_added_at: Instant::now(),
            upgrade: None,
            accept_pauses: 0,
            next_memory_check: Instant::now() + MEMORY_CHECK_INTERVAL,
        })
    }

    /// The loop. Returns after the shutdown completes.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self.next_timer();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // epoll_wait failing is not recoverable: stop everything cleanly.
                    self.begin_shutdown(Duration::ZERO);
                }
            }
            self.now = Instant::now();
            for event in events.iter() {
                let Token(raw) = event.token();
                let id = (raw >> 2) as u32;
                match raw & 3 {
                    KIND_SPECIAL if event.token() == TOKEN_WAKE => self.on_commands(),
                    KIND_SPECIAL if event.token() == TOKEN_UPGRADE => self.on_upgrade_news(),
                    KIND_SPECIAL => self.on_signals(),
                    KIND_LISTENER => self.on_listener_ready(id),
                    KIND_CHANNEL => {
                        if event.is_writable() {
                            self.on_worker_writable(id);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_worker_readable(id);
                        }
                    }
                    _ => self.on_worker_exit(id),
                }
            }
            // Timers before the hand-out: what they start (a paused
            // listener resumes and accepts, a reaped worker's connections go
            // back to the queue) is dispatched and sent in this same turn,
            // never left waiting for a wake-up that may not come.
            let timers_ran_at = self.on_timers();
            self.dispatch_pending();
            self.accept_ready();
            self.start_due_recycles();
            self.send_handed_connections();
            if self.advance_shutdown() {
                break;
            }
            #[cfg(debug_assertions)]
            self.check_no_timer_left_due(timers_ran_at);
            #[cfg(not(debug_assertions))]
            let _ = timers_ran_at;
            if !events.is_empty() {
                // After a turn with work, let whatever else is runnable on
                // this CPU (the workers, most often) go first. Under load the
                // next turn then finds a batch waiting (connections, acks)
                // instead of the thread sleeping and being woken for each
                // one: on the 2-CPU machine the wake-ups cost more than the
                // dispatch itself (make bench: C rr 0.82-0.89x -> 1.11-1.16x
                // the prefork server, primary CPU per connection -25%). With
                // nothing else runnable it returns at once; an idle primary
                // never gets here.
                // SAFETY: sched_yield has no arguments and cannot fail.
                unsafe { libc::sched_yield() };
            }
        }
        self.finish();
    }
}
