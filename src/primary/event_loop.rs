//! The primary's event loop: one thread, one mio poll, read top to bottom.
//!
//! Each turn: wait for readiness or the next timer, then handle what is
//! ready — host commands, new connections, worker frames, worker exits,
//! signals — then hand pending connections to workers, fire timers
//! (restarts, replacement deadlines, heartbeats, stop escalations), and move
//! the shutdown along. Every event's handling is a named method below.
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
//! Workers live in slots ([`super::supervisor`]). A worker that exits
//! without being asked is replaced after a growing delay, until its slot
//! crash-loops. A *replacement* (rolling reload, recycling) starts a new
//! worker for a slot while the old one serves; once the new one is ready,
//! the old one is asked to leave. Listeners stay open throughout.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::core::{Ack, Beat, Connections, Life};
use super::listener::{parse_address, Listener};
use super::policy::Sockets;
use super::signals::SignalPipe;
use super::supervisor::{AfterCrash, Cause, Jitter, Reload, Replacement, Slot};
use super::systemd::{self, InheritedSocket, Notifier};
use super::upgrade::{self, Upgrade};
use super::{Command, Config, Shared, WorkerInfo};
use crate::channel::{self, Reassembler};
use crate::error::{Code, Error, Result};
use crate::event::{Event, Exit, Metrics, PrimaryStats, WorkerState, WorkerStats};
use crate::spawn::{self, Spawned};
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

struct ShutdownState {
    grace: Duration,
    /// Until then, pending connections are still handed out before workers are asked to leave.
    drain_until: Instant,
    disconnects_sent: bool,
}

pub(crate) struct EventLoop {
    poll: Poll,
    shared: Arc<Shared>,
    config: Config,
    workers: HashMap<u32, WorkerEntry>,
    slots: BTreeMap<u32, Slot>,
    listeners: HashMap<u32, Listener>,
    /// Listeners by address and port-0 index (0 for other ports).
    by_address: HashMap<(SocketAddr, u16), u32>,
    /// Who owns each accepted connection (the queue, each worker's table).
    conns: Connections<Arc<OwnedFd>>,
    next_worker: u32,
    next_slot: u32,
    next_listener: u32,
    next_conn: u64,
    next_ping_seq: u64,
    /// The reload generation new workers are started with.
    generation: u32,
    reload: Option<Reload>,
    /// A reload was asked for while one ran: run another after it.
    reload_again: bool,
    /// Slots whose worker reached its connection budget.
    recycle_due: Vec<u32>,
    jitter: Jitter,
    signals: Option<SignalPipe>,
    shutdown: Option<ShutdownState>,
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
            slots: BTreeMap::new(),
            listeners: HashMap::new(),
            by_address: HashMap::new(),
            conns: Connections::new(max_unacked),
            next_worker: 1,
            next_slot: 0,
            next_listener: 1,
            next_conn: 1,
            next_ping_seq: 1,
            generation: 0,
            reload: None,
            reload_again: false,
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

    // ----- host commands -------------------------------------------------

    fn on_commands(&mut self) {
        let commands: Vec<Command> = {
            let mut queue = self.shared.commands.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.clear();
            queue.drain(..).collect()
        };
        // The host also wakes us when it has caught up on events (after the
        // clear above, so such a wake-up is never lost).
        self.resume_reads();
        // Messages to the same worker queued together travel together.
        let mut messages: Vec<(u32, Vec<Vec<u8>>)> = Vec::new();
        for command in commands {
            self.unreserve(&command);
            if let Command::Send { worker, data } = command {
                match messages.iter_mut().find(|(w, _)| *w == worker) {
                    Some((_, queued)) => queued.push(data),
                    None => messages.push((worker, vec![data])),
                }
                continue;
            }
            // Anything else (a disconnect, say) must not overtake them.
            self.send_user_messages(&mut messages);
            match command {
                Command::Fork { env, reply } => {
                    let _ = reply.send(self.fork(env));
                }
                Command::Listen { host, port, reply } => {
                    let _ = reply.send(self.listen(&host, port));
                }
                Command::Send { .. } => unreachable!("sends are batched above"),
                Command::SendFrames { worker, frames, count } => {
                    if let Some(entry) = self.workers.get_mut(&worker) {
                        entry.messages_out += count as u64;
                    }
                    for frame in frames {
                        self.send_frame(worker, &frame, &[]);
                    }
                }
                Command::Disconnect { worker } => self.disconnect(worker),
                Command::Kill { worker, signal } => self.kill(worker, signal),
                Command::Shutdown { grace } => self.begin_shutdown(grace),
                Command::Reload { reply } => {
                    let _ = reply.send(self.reload());
                }
                Command::Scale { workers, reply } => {
                    let _ = reply.send(self.scale(workers));
                }
                Command::Stats { reply } => {
                    let _ = reply.send(self.stats());
                }
                Command::Metrics { reply } => {
                    let _ = reply.send(self.metrics());
                }
            }
        }
        self.send_user_messages(&mut messages);
    }

    /// A send command's bytes leave the host's count as we take it (what
    /// cannot be written at once is counted again while in the outbox).
    fn unreserve(&self, command: &Command) {
        let (worker, bytes) = match command {
            Command::Send { worker, data } => (*worker, data.len()),
            Command::SendFrames { worker, frames, .. } => (*worker, frames.iter().map(Vec::len).sum()),
            _ => return,
        };
        if let Some(link) = self.workers.get(&worker).and_then(|w| w.link.as_ref()) {
            link.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    fn send_user_messages(&mut self, messages: &mut Vec<(u32, Vec<Vec<u8>>)>) {
        for (worker, queued) in messages.drain(..) {
            if let Some(entry) = self.workers.get_mut(&worker) {
                entry.messages_out += queued.len() as u64;
            }
            let slices: Vec<&[u8]> = queued.iter().map(|m| &m[..]).collect();
            for frame in Frame::pack_users(&slices) {
                self.send_frame(worker, &frame, &[]);
            }
        }
    }

    fn check_running(&self) -> Result<()> {
        match self.shutdown {
            Some(_) => Err(Error::new(Code::State, "the primary is shutting down")),
            None => Ok(()),
        }
    }

    /// A new slot with its first worker.
    fn fork(&mut self, env: Vec<(OsString, OsString)>) -> Result<WorkerInfo> {
        self.check_running()?;
        let index = self.next_slot;
        self.next_slot += 1;
        self.slots.insert(index, Slot::new(index, env));
        self.slot_added_at = self.now;
        match self.start_worker(index) {
            Ok(info) => {
                if let Some(slot) = self.slots.get_mut(&index) {
                    slot.worker = Some(info.id);
                }
                Ok(info)
            }
            Err(e) => {
                self.slots.remove(&index);
                Err(e)
            }
        }
    }

    /// Spawns a worker for `slot` (not yet recorded as the slot's worker).
    fn start_worker(&mut self, slot: u32) -> Result<WorkerInfo> {
        let mut spec = self.config.spawn.clone();
        if let Some(slot) = self.slots.get(&slot) {
            spec.env.extend(slot.env.iter().cloned());
        }
        let id = self.reserve_worker_id();
        let spawned = spawn::spawn(&spec, id)?;
        self.adopt(id, spawned, Some(slot))
    }

    pub(crate) fn reserve_worker_id(&mut self) -> u32 {
        let id = self.next_worker;
        self.next_worker += 1;
        id
    }

    /// Takes a started worker into the table and watches its channel and pid.
    pub(crate) fn adopt(&mut self, id: u32, spawned: Spawned, slot: Option<u32>) -> Result<WorkerInfo> {
        let Spawned { pid, child, channel } = spawned;
        let registry = self.poll.registry();
        registry
            .register(&mut SourceFd(&channel.as_raw_fd()), token(KIND_CHANNEL, id), Interest::READABLE)
            .map_err(|e| Error::os("registering a worker channel", e))?;
        let pidfd = sys::pidfd_open(pid).map_err(|e| Error::os("pidfd_open", e))?;
        if let Some(fd) = &pidfd {
            registry
                .register(&mut SourceFd(&fd.as_raw_fd()), token(KIND_PIDFD, id), Interest::READABLE)
                .map_err(|e| Error::os("registering a pidfd", e))?;
        }
        let supervision = &self.config.supervision;
        let recycle_at = (supervision.recycle_after > 0)
            .then(|| supervision.recycle_after + self.jitter.upto(supervision.recycle_jitter));
        let queued = Arc::new(AtomicUsize::new(0));
        let link = Link {
            fd: channel,
            reassembler: Reassembler::with_limit(self.config.limits.max_message),
            outbox: VecDeque::new(),
            writable_armed: false,
            queued: queued.clone(),
        };
        self.workers.insert(
            id,
            WorkerEntry {
                id,
                pid,
                child,
                pidfd,
                link: Some(link),
                slot,
                generation: self.generation,
                life: Life::new(Instant::now()),
                listening_on: Vec::new(),
                messages_in: 0,
                messages_out: 0,
            },
        );
        self.conns.add_worker(id, recycle_at);
        self.shared.lock_connected().insert(id, queued);
        self.shared.emit(Event::Fork { worker: id, pid, slot, generation: self.generation });
        Ok(WorkerInfo { id, pid })
    }

    /// Finds or binds the listener for `host:port` (for port 0, the one
    /// every worker's first port-0 listen at `host` gets).
    pub(crate) fn listen(&mut self, host: &str, port: u16) -> Result<SocketAddr> {
        let id = self.listener_for(host, port, 0, None)?;
        let listener = self.listeners.get_mut(&id).expect("listener_for returned a known id");
        listener.declared = true;
        Ok(listener.address)
    }

    /// Finds or binds the listener for `host:port`; for port 0, the
    /// `index`-th (each worker's n-th port-0 listen at a host shares one).
    /// `worker`: the worker asking, held to `max_listeners_per_worker`
    /// (`None`: the host, whose listeners are not counted).
    fn listener_for(&mut self, host: &str, port: u16, index: u16, worker: Option<u32>) -> Result<u32> {
        if self.shutdown.is_some() {
            return Err(Error::new(Code::State, "the primary is shutting down").with_errno(libc::ESHUTDOWN));
        }
        let requested = parse_address(host, port)?;
        let key = (requested, if port == 0 { index } else { 0 });
        let existing = self.by_address.get(&key).copied();
        let limits = &self.config.limits;
        if let Some(entry) = worker.and_then(|w| self.workers.get(&w)) {
            let already = existing.is_some_and(|id| entry.listening_on.contains(&id));
            if !already && entry.listening_on.len() >= limits.max_listeners_per_worker as usize {
                let max = limits.max_listeners_per_worker;
                let message = format!("worker {} already holds {max} listeners (max_listeners_per_worker)", entry.id);
                return Err(Error::new(Code::Address, message).with_errno(libc::EMFILE));
            }
        }
        if let Some(id) = existing {
            return Ok(id);
        }
        if worker.is_some() && self.listeners.values().filter(|l| !l.declared).count() >= limits.max_listeners as usize
        {
            let message =
                format!("the primary already holds {} listeners for workers (max_listeners)", limits.max_listeners);
            return Err(Error::new(Code::Address, message).with_errno(libc::EMFILE));
        }
        let id = self.next_listener;
        // A socket systemd passed for this very address is taken instead of
        // binding; for port 0, the one a primary being replaced named for
        // this place (see `systemd::port_zero_name`).
        let inherited = self
            .inherited
            .iter()
            .position(|s| match port {
                0 => s.name == systemd::port_zero_name(index) && s.address.ip() == requested.ip(),
                _ => s.address == requested,
            })
            .map(|i| self.inherited.remove(i).socket);
        let policy = self.config.policy.instantiate();
        let listener = Listener::bind(id, requested, self.config.backlog, policy.sockets(), inherited)?;
        if let (Some(socket), Sockets::PrimaryAccepts) = (&listener.socket, listener.sockets) {
            self.poll
                .registry()
                .register(&mut SourceFd(&socket.as_raw_fd()), token(KIND_LISTENER, id), Interest::READABLE)
                .map_err(|e| Error::os("registering a listener", e))?;
        }
        self.next_listener += 1;
        // Both keys lead here: port 0 (and index) as asked, and the port the OS picked.
        self.by_address.insert(key, id);
        self.by_address.insert((listener.address, 0), id);
        self.listeners.insert(id, listener);
        self.conns.add_route(id, policy);
        Ok(id)
    }

    /// The host asked this worker to leave: it goes, and its slot with it.
    fn disconnect(&mut self, worker: u32) {
        let slot = self.workers.get(&worker).and_then(|w| w.slot);
        self.stop_worker(worker);
        if let Some(index) = slot {
            if self.slots.get(&index).is_some_and(|s| s.worker == Some(worker)) {
                self.remove_slot(index);
            }
        }
    }

    /// Asks a worker to finish what it holds and leave, with SIGTERM and
    /// then SIGKILL after the stop timeout.
    fn stop_worker(&mut self, worker: u32) {
        self.send_frame(worker, &Frame::Disconnect.encode(), &[]);
        let stop_timeout = self.config.stop_timeout;
        self.conns.stop_offering(worker);
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.life.ask_to_leave(Instant::now(), stop_timeout);
        }
    }

    /// Kills a worker that is not ready and will not be (a failed replacement).
    fn abandon_worker(&mut self, worker: u32) {
        self.conns.stop_offering(worker);
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.life.abandon();
            let _ = sys::kill(entry.pid, libc::SIGKILL);
        }
    }

    fn remove_slot(&mut self, index: u32) {
        if let Some(slot) = self.slots.remove(&index) {
            for worker in slot.worker.into_iter().chain(slot.replacement.map(|r| r.worker)) {
                self.stop_worker(worker);
            }
        }
    }

    fn kill(&mut self, worker: u32, signal: libc::c_int) {
        if let Some(entry) = self.workers.get(&worker) {
            // The entry lives until we reap the pid, so it is still ours.
            let _ = sys::kill(entry.pid, signal);
        }
    }

    fn scale(&mut self, workers: u32) -> Result<()> {
        self.check_running()?;
        let current = self.slots.len() as u32;
        for _ in current..workers {
            self.fork(Vec::new())?;
        }
        while self.slots.len() as u32 > workers {
            let Some((&last, _)) = self.slots.iter().next_back() else { break };
            self.remove_slot(last);
        }
        Ok(())
    }

    fn stats(&self) -> Vec<WorkerStats> {
        let now = Instant::now();
        let mut stats: Vec<WorkerStats> = self
            .workers
            .values()
            .map(|w| (w, self.conns.load(w.id)))
            .map(|(w, load)| WorkerStats {
                id: w.id,
                pid: w.pid,
                slot: w.slot,
                state: w.life.phase(),
                generation: w.generation,
                dispatched: load.dispatched,
                in_flight: load.in_flight,
                active: load.active,
                restarts: w.slot.and_then(|s| self.slots.get(&s)).map_or(0, |s| s.restarts),
                uptime: now.duration_since(w.life.started()),
                messages_in: w.messages_in,
                messages_out: w.messages_out,
                cpu: Duration::ZERO,
                rss_bytes: 0,
            })
            .collect();
        stats.sort_by_key(|s| s.id);
        stats
    }

    /// `stats` with each process's CPU time and memory, and the primary's own numbers.
    fn metrics(&self) -> Metrics {
        let mut workers = self.stats();
        for w in &mut workers {
            let usage = sys::process_usage(w.pid).unwrap_or_default();
            (w.cpu, w.rss_bytes) = (usage.cpu, usage.rss_bytes);
        }
        // SAFETY: getpid has no arguments and cannot fail.
        let me = sys::process_usage(unsafe { libc::getpid() }).unwrap_or_default();
        let serving = self.shutdown.is_none() && workers.iter().any(|w| w.state == WorkerState::Listening);
        let primary = PrimaryStats {
            pending: self.conns.pending_len() as u32,
            accept_pauses: self.accept_pauses,
            listeners: self.listeners.values().filter(|l| l.socket.is_some()).count() as u32,
            generation: self.generation,
            serving,
            cpu: me.cpu,
            rss_bytes: me.rss_bytes,
        };
        Metrics { primary, workers }
    }

    // ----- rolling reload and replacements ---------------------------------

    fn reload(&mut self) -> Result<u32> {
        self.check_running()?;
        if self.reload.is_some() {
            self.reload_again = true;
            return Ok(self.generation + 1);
        }
        self.generation += 1;
        let queue = self.slots.keys().copied().collect();
        self.reload = Some(Reload { generation: self.generation, queue });
        self.notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", systemd::monotonic_usec()));
        self.ready_notified = false;
        self.advance_reload();
        Ok(self.generation)
    }

    /// Starts replacements up to the concurrency limit; finishes the reload
    /// when every slot has been replaced.
    fn advance_reload(&mut self) {
        loop {
            let Some(reload) = &mut self.reload else { return };
            let in_flight =
                self.slots.values().filter(|s| s.replacement.is_some_and(|r| r.cause == Cause::Reload)).count() as u32;
            if in_flight >= self.config.supervision.reload_concurrency.max(1) {
                return;
            }
            let Some(index) = reload.queue.pop_front() else {
                if in_flight == 0 {
                    let generation = reload.generation;
                    self.reload = None;
                    self.shared.emit(Event::ReloadDone { generation });
                    self.notify_ready_if_serving();
                    if std::mem::take(&mut self.reload_again) {
                        let _ = self.reload();
                    }
                }
                return;
            };
            let Some(slot) = self.slots.get_mut(&index) else { continue };
            if slot.worker.is_none() {
                // Restarting or crash-looped: new code deserves a fresh start.
                slot.reset();
                slot.restart_at = Some(Instant::now());
                continue;
            }
            if let Err(e) = self.start_replacement(index, Cause::Reload) {
                self.fail_reload(format!("could not start a replacement worker: {e}"));
                return;
            }
        }
    }

    fn start_replacement(&mut self, index: u32, cause: Cause) -> Result<()> {
        let info = self.start_worker(index)?;
        let deadline = Instant::now() + self.config.supervision.ready_timeout;
        if let Some(slot) = self.slots.get_mut(&index) {
            slot.replacement = Some(Replacement { worker: info.id, deadline, cause });
        }
        Ok(())
    }

    /// A replacement will not become ready: kill it; the old worker keeps serving.
    fn replacement_failed(&mut self, index: u32, message: String) {
        let Some(slot) = self.slots.get_mut(&index) else { return };
        let Some(replacement) = slot.replacement.take() else { return };
        self.abandon_worker(replacement.worker);
        match replacement.cause {
            Cause::Reload => self.fail_reload(message),
            Cause::Recycle => {
                // Keep the old worker; do not try to recycle it again.
                if let Some(old) = self.slots.get(&index).and_then(|s| s.worker) {
                    self.conns.forget_budget(old);
                }
            }
        }
    }

    fn fail_reload(&mut self, message: String) {
        let Some(reload) = self.reload.take() else { return };
        self.reload_again = false;
        let in_flight: Vec<u32> = self
            .slots
            .values_mut()
            .filter(|s| s.replacement.is_some_and(|r| r.cause == Cause::Reload))
            .filter_map(|s| s.replacement.take().map(|r| r.worker))
            .collect();
        for worker in in_flight {
            self.abandon_worker(worker);
        }
        self.shared.emit(Event::ReloadFailed { generation: reload.generation, message });
        // The old workers keep serving: ready again, with the reason.
        self.notify_ready_if_serving();
    }

    /// The worker is ready (listening, or said so with `wait_ready`): if it
    /// replaces another, the other is asked to leave now.
    fn on_worker_ready(&mut self, worker: u32) {
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        if !entry.life.become_ready() {
            return;
        }
        let Some(index) = entry.slot else { return };
        let Some(slot) = self.slots.get_mut(&index) else { return };
        let Some(replacement) = slot.replacement.filter(|r| r.worker == worker) else { return };
        slot.replacement = None;
        if let Some(old) = slot.worker.replace(worker) {
            self.stop_worker(old);
        }
        if replacement.cause == Cause::Reload {
            self.advance_reload();
        }
    }

    /// When `READY=1` is due, if it is: every slot's worker listens (at
    /// start, or after a reload; not during one), the slots settled.
    fn ready_due_at(&self) -> Option<Instant> {
        if self.ready_notified || self.reload.is_some() || self.shutdown.is_some() || !self.notifier.active() {
            return None;
        }
        let serving = |s: &Slot| s.worker.and_then(|w| self.workers.get(&w)).is_some_and(|w| w.life.listening());
        if self.slots.is_empty() || !self.slots.values().all(serving) {
            return None;
        }
        Some(self.slot_added_at + READY_SETTLE)
    }

    /// Tells systemd `READY=1` (with a status line) once it is due.
    fn notify_ready_if_serving(&mut self) {
        if self.ready_due_at().is_none_or(|at| at > Instant::now()) {
            return;
        }
        self.ready_notified = true;
        let status = format!("STATUS={} workers listening, generation {}", self.slots.len(), self.generation);
        self.notifier.notify(&format!("READY=1\n{status}"));
    }

    /// Recycles (gracefully) each slot whose serving worker's resident
    /// memory passed `max_memory`, one replacement per slot at a time.
    fn check_memory(&mut self) {
        let Some(limit) = self.config.supervision.max_memory else { return };
        for slot in self.slots.values() {
            if slot.replacement.is_some() {
                continue;
            }
            let Some(entry) = slot.worker.and_then(|w| self.workers.get(&w)) else { continue };
            if !entry.life.serving_ready() {
                continue;
            }
            if sys::process_usage(entry.pid).is_some_and(|u| u.rss_bytes > limit) {
                self.recycle_due.push(slot.index);
            }
        }
        self.start_due_recycles();
    }

    fn start_due_recycles(&mut self) {
        self.note_recycle_due();
        for index in std::mem::take(&mut self.recycle_due) {
            let busy = self.slots.get(&index).is_none_or(|s| s.replacement.is_some());
            if !busy && self.shutdown.is_none() {
                let _ = self.start_replacement(index, Cause::Recycle);
            }
        }
    }

    // ----- connections ---------------------------------------------------

    fn on_listener_ready(&mut self, id: u32) {
        if let Some(listener) = self.listeners.get_mut(&id) {
            listener.ready = true;
        }
        self.accept_from(id, false);
    }

    /// Accepts from every listener that has connections waiting.
    fn accept_ready(&mut self) {
        if self.conns.pending_len() >= self.config.max_pending as usize {
            return;
        }
        let ready: Vec<u32> =
            self.listeners.values().filter(|l| l.ready && l.sockets == Sockets::PrimaryAccepts).map(|l| l.id).collect();
        for id in ready {
            self.accept_from(id, false);
        }
    }

    /// Accepts until the kernel queue is empty, the pending queue is full
    /// (unless `unbounded`, used once at shutdown), or an error says pause.
    fn accept_from(&mut self, id: u32, unbounded: bool) {
        loop {
            if !unbounded && self.conns.pending_len() >= self.config.max_pending as usize {
                return;
            }
            let Some(listener) = self.listeners.get_mut(&id) else { return };
            let Some(socket) = &listener.socket else { return };
            if !listener.ready || listener.paused_until.is_some() || listener.sockets != Sockets::PrimaryAccepts {
                return;
            }
            if !self.conns.has_members(id) {
                // Nobody to hand it to: leave connections in the kernel's
                // backlog until a worker (a restart, a replacement) joins.
                return;
            }
            let raw = socket.as_raw_fd();
            // SAFETY: accept4 on a listening socket we own, no address out-params.
            let ret = unsafe { libc::accept4(raw, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
            if ret >= 0 {
                // SAFETY: a fresh fd from accept4, owned by nothing else.
                let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(ret) });
                let conn = self.next_conn;
                self.next_conn += 1;
                self.conns.dispatch(self.now, Handoff::new(conn, id, fd, self.now));
                continue;
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            match errno {
                libc::EAGAIN => {
                    listener.ready = false;
                    return;
                }
                // The connection died in the queue, or a transient network error (accept(2)).
                libc::EINTR
                | libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH => continue,
                // Out of fds or memory: pause this listener instead of spinning.
                _ => {
                    listener.paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    self.accept_pauses += 1;
                    return;
                }
            }
        }
    }

    fn send_handed_connections(&mut self) {
        for worker in self.conns.take_handing_to() {
            self.flush_handing(worker);
        }
    }

    /// Sends the connections handed to `worker` and not yet sent, as few
    /// records as the fd limit allows (one per listener run).
    fn flush_handing(&mut self, worker: u32) {
        let handing = self.conns.take_handing(worker);
        let mut rest = &handing[..];
        while let Some(&(listener, _, _)) = rest.first() {
            let run = rest.iter().take(channel::MAX_FDS).take_while(|(l, _, _)| *l == listener).count();
            let (batch, tail) = rest.split_at(run);
            rest = tail;
            let conns = batch.iter().map(|(_, conn, _)| *conn).collect();
            let fds: Vec<Arc<OwnedFd>> = batch.iter().map(|(_, _, fd)| fd.clone()).collect();
            self.send_bytes(worker, &Frame::Conns { listener, conns }.encode(), &fds);
        }
    }

    /// Hands out queued connections wherever a worker can take them, and
    /// notes the slots whose worker reached its connection budget.
    fn dispatch_pending(&mut self) {
        self.conns.dispatch_pending(self.now);
        self.note_recycle_due();
    }

    fn note_recycle_due(&mut self) {
        for worker in self.conns.take_recycle_due() {
            if let Some(slot) = self.workers.get(&worker).and_then(|w| w.slot) {
                self.recycle_due.push(slot);
            }
        }
    }

    // ----- worker channels -----------------------------------------------

    /// Sends one message to a worker, after the connections handed to it
    /// this turn (so nothing, a `Disconnect` least of all, overtakes them).
    fn send_frame(&mut self, worker: u32, bytes: &[u8], fds: &[Arc<OwnedFd>]) {
        if self.conns.is_handing(worker) {
            self.flush_handing(worker);
        }
        self.send_bytes(worker, bytes, fds);
    }

    /// Sends one message (as records) to a worker, queueing what the socket
    /// cannot take now. A broken channel is treated as a hang-up.
    fn send_bytes(&mut self, worker: u32, bytes: &[u8], fds: &[Arc<OwnedFd>]) {
        let Some(link) = self.workers.get_mut(&worker).and_then(|w| w.link.as_mut()) else { return };
        let mut broken = false;
        for (index, (header, payload)) in channel::records(bytes).enumerate() {
            let attached: &[Arc<OwnedFd>] = if index == 0 { fds } else { &[] };
            if link.outbox.is_empty() {
                let raw: Vec<RawFd> = attached.iter().map(|fd| fd.as_raw_fd()).collect();
                match channel::send_record(link.fd.as_fd(), header, payload, &raw) {
                    Ok(()) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            link.queued.fetch_add(payload.len(), Ordering::Relaxed);
            link.outbox.push_back(Outgoing { header, payload: payload.to_vec(), fds: attached.to_vec() });
        }
        if broken {
            self.hang_up(worker);
        } else {
            self.arm_writable(worker);
        }
    }

    fn arm_writable(&mut self, worker: u32) {
        let Some(link) = self.workers.get_mut(&worker).and_then(|w| w.link.as_mut()) else { return };
        let want = !link.outbox.is_empty();
        if want != link.writable_armed {
            let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poll.registry().reregister(
                &mut SourceFd(&link.fd.as_raw_fd()),
                token(KIND_CHANNEL, worker),
                interest,
            );
            link.writable_armed = want;
        }
    }

    fn on_worker_writable(&mut self, worker: u32) {
        let Some(link) = self.workers.get_mut(&worker).and_then(|w| w.link.as_mut()) else { return };
        let mut broken = false;
        while let Some(record) = link.outbox.front() {
            let raw: Vec<RawFd> = record.fds.iter().map(|fd| fd.as_raw_fd()).collect();
            match channel::send_record(link.fd.as_fd(), record.header, &record.payload, &raw) {
                Ok(()) => {
                    link.queued.fetch_sub(record.payload.len(), Ordering::Relaxed);
                    link.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            self.hang_up(worker);
        } else {
            self.arm_writable(worker);
        }
    }

    /// Reads what the worker sent, unless the host has fallen behind on
    /// events (`max_event_bytes`): then the worker waits (its channel
    /// fills and its sends block; nothing is dropped) until the host has
    /// taken half, and `resume_reads` reads it.
    fn on_worker_readable(&mut self, worker: u32) {
        if self.shared.events_over_limit() {
            self.shared.reads_paused.store(true, Ordering::SeqCst);
            if !self.unread.contains(&worker) {
                self.unread.push(worker);
            }
            // The host may have caught up between the check and the flag.
            if !self.shared.events_over_limit() && self.shared.reads_paused.swap(false, Ordering::SeqCst) {
                self.shared.wake.set();
            }
            return;
        }
        self.drain_channel(worker);
    }

    /// Reads the channels left unread while the host was behind.
    fn resume_reads(&mut self) {
        if self.unread.is_empty() || self.shared.events_over_limit() {
            return;
        }
        for worker in std::mem::take(&mut self.unread) {
            self.on_worker_readable(worker);
        }
    }

    /// Reads everything the worker sent, whatever the host's backlog (an
    /// exiting worker's last acknowledgements must be seen).
    fn drain_channel(&mut self, worker: u32) {
        loop {
            let Some(link) = self.workers.get_mut(&worker).and_then(|w| w.link.as_mut()) else { return };
            match link.reassembler.read(link.fd.as_fd()) {
                Ok(channel::Read::Message(message)) => self.on_frame(worker, message),
                Ok(channel::Read::WouldBlock) => return,
                Ok(channel::Read::Eof) => return self.hang_up(worker),
                // A peer that dies with our frames unread resets the channel
                // (ECONNRESET): that is a hang-up, not misbehaviour.
                Err(e) if e.code() == Code::Closed => return self.hang_up(worker),
                Err(e) => return self.worker_error(worker, e),
            }
        }
    }

    fn on_frame(&mut self, worker: u32, message: channel::Message) {
        if !message.fds.is_empty() || message.fds_lost {
            // Workers never send fds; the ones that came are closed with the message.
            return self.worker_error(worker, Error::new(Code::Protocol, "worker sent file descriptors"));
        }
        let frame = match Frame::decode(message.data) {
            Ok(frame) => frame,
            Err(e) => return self.worker_error(worker, e),
        };
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        let pid = entry.pid;
        match frame {
            Frame::Hello { .. } => {
                entry.life.hello(Instant::now(), self.config.supervision.heartbeat_interval);
                self.shared.emit(Event::Online { worker, pid });
            }
            Frame::Listen { request, port, host, index } => self.on_listen_request(worker, request, &host, port, index),
            Frame::Unlisten { listener } => self.leave_listener(worker, listener),
            Frame::Ack { conn, accepted } => self.on_ack(worker, conn, accepted),
            Frame::Acks { conns } => {
                // The known ones first: the worker holds them whatever else it
                // got wrong, so they must not be handed to another worker.
                let mut unknown = None;
                for conn in conns {
                    if self.conns.holds(worker, conn) {
                        self.on_ack(worker, conn, true);
                    } else {
                        unknown = unknown.or(Some(conn));
                    }
                }
                if let Some(conn) = unknown {
                    let message = format!("worker acknowledged unknown connection {conn}");
                    self.worker_error(worker, Error::new(Code::Protocol, message));
                }
            }
            Frame::Lost { conns } => self.on_lost(worker, conns),
            Frame::Done { count } => self.conns.done(worker, count),
            Frame::Goodbye => {
                entry.life.goodbye();
                self.conns.stop_offering(worker);
            }
            Frame::Pong { seq } => {
                entry.life.pong(seq);
            }
            Frame::Ready => {
                if self.config.supervision.wait_ready {
                    self.on_worker_ready(worker);
                }
            }
            Frame::User(data) => {
                entry.messages_in += 1;
                self.shared.emit(Event::Message { worker, pid, data });
            }
            Frame::Users(messages) => {
                entry.messages_in += messages.len() as u64;
                self.shared.emit_messages(worker, pid, messages);
            }
            other => self.worker_error(
                worker,
                Error::new(Code::Protocol, format!("worker sent a primary-only frame {other:?}")),
            ),
        }
    }

    fn on_listen_request(&mut self, worker: u32, request: u32, host: &str, port: u16, index: u16) {
        let id = match self.listener_for(host, port, index, Some(worker)) {
            Ok(id) => id,
            Err(e) => {
                let reply = Frame::ListenErr { request, errno: e.errno(), message: e.message().to_owned() };
                return self.send_frame(worker, &reply.encode(), &[]);
            }
        };
        let listener = self.listeners.get_mut(&id).expect("listener_for returned a known id");
        let address = listener.address;
        let own_socket = match listener.socket_for_worker(self.config.backlog) {
            Ok(socket) => socket,
            Err(e) => {
                let reply = Frame::ListenErr { request, errno: e.errno(), message: e.message().to_owned() };
                return self.send_frame(worker, &reply.encode(), &[]);
            }
        };
        // `shared` on the wire: a socket is attached and the worker accepts itself.
        let shared = own_socket.is_some();
        let report_done = self.conns.policy(id).is_some_and(|p| p.wants_done_reports());
        let port = address.port();
        let reply = Frame::ListenOk { request, listener: id, shared, report_done, port, address: address.to_string() };
        let fds: Vec<Arc<OwnedFd>> = own_socket.into_iter().map(Arc::new).collect();
        self.send_frame(worker, &reply.encode(), &fds);
        // Our copy of the worker's socket closes now (a queued record holds
        // its own), before the host hears of the listen below.
        drop(fds);
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        if !entry.listening_on.contains(&id) {
            entry.listening_on.push(id);
        }
        entry.life.listened();
        let pid = entry.pid;
        self.conns.join(worker, id);
        if let Some(listener) = self.listeners.get_mut(&id) {
            listener.idle_since = None;
        }
        self.shared.emit(Event::Listening { worker, pid, address });
        if !self.config.supervision.wait_ready {
            self.on_worker_ready(worker);
        }
        self.notify_ready_if_serving();
    }

    fn leave_listener(&mut self, worker: u32, listener: u32) {
        self.conns.leave(worker, listener);
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.listening_on.retain(|&l| l != listener);
        }
    }

    /// A worker took (or refused) a connection. Dropping a taken or
    /// refused-by-everyone handoff closes the primary's copy.
    fn on_ack(&mut self, worker: u32, conn: u64, accepted: bool) {
        if let Ack::Unknown = self.conns.ack(worker, conn, accepted) {
            let message = format!("worker acknowledged unknown connection {conn}");
            self.worker_error(worker, Error::new(Code::Protocol, message));
        }
    }

    /// The worker could not receive these connections (at its fd limit):
    /// they go back to the front of the queue, not counted as refusals, and
    /// the worker gets none for a moment while its fds free up.
    fn on_lost(&mut self, worker: u32, conns: Vec<u64>) {
        if let Err(conn) = self.conns.lost(worker, conns, self.now + ACCEPT_BACKOFF) {
            let message = format!("worker reported unknown connection {conn} lost");
            self.worker_error(worker, Error::new(Code::Protocol, message));
        }
    }

    /// The worker's channel closed (or broke): its connections go back to
    /// the queue, it leaves every listener, and the host hears of it.
    fn hang_up(&mut self, worker: u32) {
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        let Some(link) = entry.link.take() else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&link.fd.as_raw_fd()));
        drop(link);
        entry.life.hang_up();
        entry.listening_on.clear();
        let pid = entry.pid;
        // What it held goes back to the queue, oldest first, ahead of newer arrivals.
        self.conns.hang_up(worker);
        self.shared.lock_connected().remove(&worker);
        self.shared.emit(Event::Disconnect { worker, pid });
    }

    /// The worker broke the protocol: report it, cut it off, and stop it.
    fn worker_error(&mut self, worker: u32, error: Error) {
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        let pid = entry.pid;
        entry.life.protocol_error(Instant::now());
        self.shared.emit(Event::WorkerError { worker, pid, message: error.message().to_owned() });
        self.hang_up(worker);
    }

    fn on_worker_exit(&mut self, worker: u32) {
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        let status = match &mut entry.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    Some(match (status.code(), status.signal()) {
                        (Some(code), _) => ExitStatus::Code(code),
                        (None, Some(signal)) => ExitStatus::Signal(signal),
                        _ => ExitStatus::Unknown,
                    })
                }
                Ok(None) => None,
                Err(_) => Some(ExitStatus::Unknown),
            },
            None => sys::try_reap(entry.pid).unwrap_or(Some(ExitStatus::Unknown)),
        };
        let Some(status) = status else { return };
        // Read what it sent before dying (acks first), then the hang-up.
        self.drain_channel(worker);
        self.hang_up(worker);
        let Some(entry) = self.workers.remove(&worker) else { return };
        self.conns.remove_worker(worker);
        if let Some(fd) = &entry.pidfd {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        let exit = match status {
            ExitStatus::Code(code) => Exit::Code(code),
            ExitStatus::Signal(signal) => Exit::Signal(signal),
            ExitStatus::Unknown => Exit::Unknown,
        };
        self.shared.emit(Event::Exit { worker, pid: entry.pid, exit, after_disconnect: entry.life.after_disconnect() });
        self.supervise_exit(&entry, exit);
    }

    /// Decides what a worker's exit means for its slot.
    fn supervise_exit(&mut self, entry: &WorkerEntry, exit: Exit) {
        let Some(index) = entry.slot else { return };
        let Some(slot) = self.slots.get_mut(&index) else { return };
        if slot.replacement.is_some_and(|r| r.worker == entry.id) {
            let message = format!("replacement worker {} exited before it was ready", entry.id);
            return self.replacement_failed(index, message);
        }
        if slot.worker != Some(entry.id) {
            return; // an old worker that was replaced, or a slot already removed
        }
        slot.worker = None;
        if self.shutdown.is_some() || entry.life.stop_requested() {
            return;
        }
        let now = Instant::now();
        let policy = &self.config.supervision;
        if entry.life.after_disconnect() && exit == Exit::Code(0) {
            // It left on its own, gracefully: replace it at once, no penalty.
            if policy.restart {
                slot.restart_at = Some(now);
            }
            return;
        }
        // Anything else is a crash, whatever came before it: a worker that
        // said goodbye and then failed (a listen error, say) must meet the
        // backoff and the crash-loop limit, not be restarted at once forever.
        if let AfterCrash::CrashLoop = slot.on_crash(now, now.duration_since(entry.life.started()), policy) {
            self.shared.emit(Event::CrashLoop { slot: index, worker: entry.id, pid: entry.pid });
        }
    }

    // ----- replacing the primary itself ------------------------------------

    /// Starts a new primary from the program's current file with our
    /// listening sockets (see `upgrade.rs`). One at a time; not while stopping.
    fn start_upgrade(&mut self) {
        if self.shutdown.is_some() || self.upgrade.is_some() {
            return;
        }
        // A listener bound for port 0 is named by its place among port-0
        // listeners: the new primary's workers ask for port 0 again.
        let port_zero: HashMap<u32, u16> = self
            .by_address
            .iter()
            .filter(|((address, _), _)| address.port() == 0)
            .map(|(&(_, index), &id)| (id, index))
            .collect();
        let sockets: Vec<(SocketAddr, String, RawFd)> = self
            .listeners
            .values()
            .filter(|l| l.sockets != Sockets::PerWorker)
            .filter_map(|l| {
                let name = port_zero.get(&l.id).map_or_else(|| "listener".to_owned(), |&i| systemd::port_zero_name(i));
                l.socket.as_ref().map(|s| (l.address, name, s.as_raw_fd()))
            })
            .collect();
        let deadline = Instant::now() + self.config.supervision.ready_timeout;
        match upgrade::start(&sockets, deadline) {
            Ok(up) => {
                let registered =
                    self.poll.registry().register(&mut SourceFd(&up.fd()), TOKEN_UPGRADE, Interest::READABLE);
                if let Err(e) = registered {
                    return self.upgrade_failed(up, format!("cannot watch the new primary: {e}"));
                }
                self.upgrade = Some(up);
            }
            Err(e) => self.shared.emit(Event::UpgradeFailed { message: e.message().to_owned() }),
        }
    }

    /// The new primary spoke: once it says READY=1, this one stops.
    fn on_upgrade_news(&mut self) {
        let Some(up) = &self.upgrade else { return };
        if !up.heard_ready() {
            return;
        }
        let Some(up) = self.upgrade.take() else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&up.fd()));
        self.shared.emit(Event::Upgraded { pid: up.pid() });
        drop(up); // the new primary outlives us: not waited for, not signalled
        self.begin_shutdown(self.config.stop_timeout);
    }

    /// Checks on a new primary that has not said it is ready.
    fn watch_upgrade(&mut self, now: Instant) {
        self.on_upgrade_news();
        let Some(up) = &mut self.upgrade else { return };
        let Some(why) = up.failed(now) else { return };
        let Some(up) = self.upgrade.take() else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&up.fd()));
        self.upgrade_failed(up, why);
    }

    fn upgrade_failed(&mut self, mut up: Upgrade, why: String) {
        // It stops its own workers gracefully on SIGTERM.
        let _ = sys::kill(up.pid(), libc::SIGTERM);
        let _ = up.child.try_wait();
        self.shared.emit(Event::UpgradeFailed { message: format!("{why}; this primary keeps serving") });
    }

    // ----- signals, timers, shutdown -------------------------------------

    fn on_signals(&mut self) {
        let Some(pipe) = &self.signals else { return };
        for signal in pipe.take() {
            match signal {
                libc::SIGTERM | libc::SIGINT if self.shutdown.is_some() => {
                    // Asked twice: stop the workers now.
                    let now = Instant::now();
                    for entry in self.workers.values_mut() {
                        entry.life.kill_now(now);
                    }
                }
                libc::SIGTERM | libc::SIGINT => self.begin_shutdown(self.config.stop_timeout),
                libc::SIGHUP => {
                    let _ = self.reload();
                }
                libc::SIGTTIN => {
                    let _ = self.scale(self.slots.len() as u32 + 1);
                }
                libc::SIGTTOU => {
                    let _ = self.scale((self.slots.len() as u32).saturating_sub(1).max(1));
                }
                libc::SIGUSR2 => self.start_upgrade(),
                _ => {}
            }
        }
    }

    /// Every deadline the loop waits for, and what it is: the one place
    /// that says when the loop must wake. Each is waited for only while
    /// `on_timers` will act on it once due (and so move it or clear it):
    /// a deadline that stays in the past makes the loop spin, which debug
    /// builds check at the end of every turn (`check_no_timer_left_due`).
    fn each_timer(&self, mut timer: impl FnMut(Instant, &'static str)) {
        for listener in self.listeners.values() {
            if let Some(at) = listener.paused_until {
                timer(at, "a paused listener resumes");
            }
        }
        let heartbeat_timeout = self.config.supervision.heartbeat_timeout;
        for entry in self.workers.values() {
            entry.life.each_deadline(heartbeat_timeout, &mut timer);
            if entry.pidfd.is_none() {
                timer(self.now + REAP_POLL_INTERVAL, "a worker without a pidfd is polled for its exit");
            }
        }
        self.conns.each_deadline(self.config.ack_timeout, &mut timer);
        if self.shutdown.is_none() {
            for listener in self.listeners.values() {
                if let Some(since) = listener.idle_since {
                    timer(since + self.config.limits.listener_idle, "an unused listener closes");
                }
            }
            for slot in self.slots.values() {
                if let Some(at) = slot.restart_at.filter(|_| slot.worker.is_none() && !slot.failed) {
                    timer(at, "a slot's restart");
                }
                if let Some(replacement) = slot.replacement {
                    timer(replacement.deadline, "a replacement's ready deadline");
                }
            }
        }
        if let Some(shutdown) = self.shutdown.as_ref().filter(|s| !s.disconnects_sent) {
            timer(shutdown.drain_until, "the shutdown stops draining");
        }
        if let Some(at) = self.ready_due_at() {
            timer(at, "systemd is told the cluster is ready");
        }
        if self.upgrade.is_some() {
            timer(self.now + REAP_POLL_INTERVAL, "the new primary is watched until it takes over");
        }
        if self.config.supervision.max_memory.is_some() && self.shutdown.is_none() && !self.slots.is_empty() {
            timer(self.next_memory_check, "workers' memory is checked");
        }
    }

    /// How long the loop may sleep: until the earliest deadline.
    fn next_timer(&self) -> Option<Duration> {
        let mut earliest: Option<Instant> = None;
        self.each_timer(|at, _| earliest = Some(earliest.map_or(at, |e| e.min(at))));
        earliest.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Debug builds: no deadline older than this turn's timers may be left,
    /// or the next wait returns at once, forever (a spin).
    #[cfg(debug_assertions)]
    fn check_no_timer_left_due(&self, timers_ran_at: Instant) {
        self.each_timer(|at, what| {
            assert!(at >= timers_ran_at, "the loop would spin: \"{what}\" is past due and nothing acts on it");
        });
    }

    fn on_timers(&mut self) -> Instant {
        let now = Instant::now();
        let resumed: Vec<u32> = self
            .listeners
            .values_mut()
            .filter(|l| l.paused_until.is_some_and(|at| at <= now))
            .map(|l| {
                l.paused_until = None;
                l.id
            })
            .collect();
        for id in resumed {
            self.accept_from(id, false);
        }
        self.conns.expire_starvation(now);
        self.escalate_stops(now);
        self.check_heartbeats(now);
        self.check_ack_deadlines(now);
        self.notify_ready_if_serving();
        self.watch_upgrade(now);
        if self.shutdown.is_none() && now >= self.next_memory_check {
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL;
            self.check_memory();
        }
        if self.shutdown.is_none() {
            self.restart_due_slots(now);
            self.expire_replacements(now);
            self.close_idle_listeners(now);
        }
        let unwatched: Vec<u32> = self.workers.values().filter(|w| w.pidfd.is_none()).map(|w| w.id).collect();
        for id in unwatched {
            self.on_worker_exit(id);
        }
        now
    }

    fn escalate_stops(&mut self, now: Instant) {
        let stop_timeout = self.shutdown.as_ref().map_or(self.config.stop_timeout, |s| s.grace);
        for entry in self.workers.values_mut() {
            if let Some(signal) = entry.life.due_signal(now, stop_timeout) {
                let _ = sys::kill(entry.pid, signal);
            }
        }
    }

    fn check_heartbeats(&mut self, now: Instant) {
        let Some(interval) = self.config.supervision.heartbeat_interval else { return };
        let timeout = self.config.supervision.heartbeat_timeout;
        let mut to_ping = Vec::new();
        let mut hung = Vec::new();
        for entry in self.workers.values_mut() {
            match entry.life.heartbeat(now, interval, timeout, &mut self.next_ping_seq) {
                Beat::Nothing => {}
                Beat::Ping(seq) => to_ping.push((entry.id, seq)),
                Beat::Hung => hung.push((entry.id, entry.pid)),
            }
        }
        for (worker, seq) in to_ping {
            self.send_frame(worker, &Frame::Ping { seq }.encode(), &[]);
        }
        for (worker, pid) in hung {
            // Its exit is a crash: the slot restarts it.
            self.shared.emit(Event::Unresponsive { worker, pid });
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }

    /// A worker holding a connection unacknowledged past `ack_timeout` is
    /// treated as hung: it is killed, and its connections go to other
    /// workers once it is reaped (not before: until then it could still
    /// take one, and a connection must never be served twice).
    fn check_ack_deadlines(&mut self, now: Instant) {
        let Some(timeout) = self.config.ack_timeout else { return };
        for worker in self.conns.expire_acks(now, timeout) {
            let Some(entry) = self.workers.get_mut(&worker) else { continue };
            entry.life.ack_expired(); // no new connections meanwhile
            let pid = entry.pid;
            self.shared.emit(Event::Unresponsive { worker, pid });
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }

    fn restart_due_slots(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .slots
            .values()
            .filter(|s| s.worker.is_none() && !s.failed && s.restart_at.is_some_and(|at| at <= now))
            .map(|s| s.index)
            .collect();
        for index in due {
            let result = self.start_worker(index);
            let Some(slot) = self.slots.get_mut(&index) else { continue };
            slot.restart_at = None;
            match result {
                Ok(info) => {
                    slot.worker = Some(info.id);
                    slot.restarts += 1;
                    slot.spawn_succeeded();
                }
                Err(e) => self.spawn_failed(index, e, now),
            }
        }
    }

    /// Could not even start a worker (out of fds or processes, the program
    /// gone): no worker ran, so it is not a crash and never crash-loops the
    /// slot. It is retried on a backoff of its own, and the host is told.
    fn spawn_failed(&mut self, index: u32, error: Error, now: Instant) {
        let Some(slot) = self.slots.get_mut(&index) else { return };
        let retry_at = slot.on_spawn_failure(now, &self.config.supervision);
        let mut message = format!("could not start a worker for slot {index}: {}", error.message());
        if matches!(error.errno(), libc::EMFILE | libc::ENFILE) && self.conns.pending_len() > 0 {
            // Out of fds while connections wait for a worker: nobody can
            // serve them until a worker starts, and none can start while
            // they hold the fds. Close the newest few (the oldest are next
            // in line) so the retry can succeed.
            let shed = self.conns.shed_newest(SHED_ON_EMFILE).len();
            message.push_str(&format!("; closed {shed} queued connections to free file descriptors"));
        }
        message.push_str(&format!("; retrying in {:?}", retry_at.saturating_duration_since(now)));
        self.shared.emit(Event::SpawnFailed { slot: index, message });
    }

    /// Closes listeners bound for workers that no worker has used for
    /// `listener_idle`: a worker that asked for thousands of ports, then
    /// left, must not leave the primary holding their fds for good.
    fn close_idle_listeners(&mut self, now: Instant) {
        let idle_for = self.config.limits.listener_idle;
        let mut expired = Vec::new();
        for listener in self.listeners.values_mut() {
            if listener.declared || self.conns.has_members(listener.id) {
                listener.idle_since = None;
                continue;
            }
            let since = *listener.idle_since.get_or_insert(now);
            if now.duration_since(since) >= idle_for {
                expired.push(listener.id);
            }
        }
        for id in expired {
            let Some(mut listener) = self.listeners.remove(&id) else { continue };
            if let Some(socket) = listener.socket.take() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&socket.as_raw_fd()));
            }
            self.by_address.retain(|_, l| *l != id);
            // Nobody served them for that long: close them rather than keep them forever.
            drop(self.conns.remove_route(id));
        }
    }

    fn expire_replacements(&mut self, now: Instant) {
        let expired: Vec<(u32, u32)> = self
            .slots
            .values()
            .filter_map(|s| s.replacement.filter(|r| r.deadline <= now).map(|r| (s.index, r.worker)))
            .collect();
        for (index, worker) in expired {
            let timeout = self.config.supervision.ready_timeout;
            self.replacement_failed(index, format!("replacement worker {worker} was not ready within {timeout:?}"));
        }
    }

    fn begin_shutdown(&mut self, grace: Duration) {
        if self.shutdown.is_some() {
            return;
        }
        self.notifier.notify("STOPPING=1");
        self.reload = None;
        self.reload_again = false;
        // Take what the kernel has already queued, then close the listeners:
        // connections accepted by the kernel are served, not reset.
        let ids: Vec<u32> = self.listeners.keys().copied().collect();
        for id in &ids {
            if let Some(listener) = self.listeners.get_mut(id) {
                listener.ready = true;
                listener.paused_until = None;
            }
            self.accept_from(*id, true);
        }
        // Close the sockets but keep the listeners: they still route what
        // they accepted to their workers.
        for listener in self.listeners.values_mut() {
            if let Some(socket) = listener.socket.take() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&socket.as_raw_fd()));
            }
        }
        self.by_address.clear();
        self.shutdown = Some(ShutdownState { grace, drain_until: Instant::now() + grace, disconnects_sent: false });
        self.dispatch_pending();
    }

    /// Moves the shutdown along; true once it is complete.
    fn advance_shutdown(&mut self) -> bool {
        let Some(shutdown) = &self.shutdown else { return false };
        if !shutdown.disconnects_sent {
            let can_still_dispatch = self.conns.any_offered();
            let drained =
                self.conns.pending_len() == 0 || !can_still_dispatch || Instant::now() >= shutdown.drain_until;
            if !drained {
                return false;
            }
            let grace = shutdown.grace;
            drop(self.conns.close_pending()); // nobody left to serve them
            let ids: Vec<u32> = self.workers.keys().copied().collect();
            for id in ids {
                self.send_frame(id, &Frame::Disconnect.encode(), &[]);
                self.conns.stop_offering(id);
                if let Some(entry) = self.workers.get_mut(&id) {
                    entry.life.ask_to_leave_for_shutdown(Instant::now(), grace);
                }
            }
            if let Some(shutdown) = &mut self.shutdown {
                shutdown.disconnects_sent = true;
            }
        }
        self.workers.is_empty()
    }

    fn finish(&mut self) {
        self.shared.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        // Fail any command that raced in after the last turn.
        let leftovers: Vec<Command> = {
            let mut queue = self.shared.commands.lock().unwrap_or_else(|p| p.into_inner());
            queue.drain(..).collect()
        };
        let stopped = || Error::new(Code::State, "the primary has shut down");
        for command in leftovers {
            match command {
                Command::Fork { reply, .. } => drop(reply.send(Err(stopped()))),
                Command::Listen { reply, .. } => drop(reply.send(Err(stopped()))),
                Command::Reload { reply } => drop(reply.send(Err(stopped()))),
                Command::Scale { reply, .. } => drop(reply.send(Err(stopped()))),
                Command::Stats { reply } => drop(reply.send(Vec::new())),
                _ => {}
            }
        }
        self.signals = None;
        self.shared.emit(Event::Shutdown);
    }
}
