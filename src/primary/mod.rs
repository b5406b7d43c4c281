//! The primary: owns the listeners, starts and supervises workers, hands
//! them connections, and reports what happens as events.
//!
//! All the work happens on one thread running a mio loop (`event_loop/`),
//! so a host whose own thread is busy (a JS or Python interpreter) never
//! stalls dispatch. The host talks to it through a command queue and pulls
//! [`Event`]s from a queue whose fd is readable while events wait.
//!
//! The loop thread starts on the first call that needs it. Before that the
//! process has one thread, which is what [`Primary::fork_raw`] requires.

mod core;
mod event_loop;
mod listener;
mod metrics;
pub mod policy;
mod shared_sockets;
mod signals;
pub mod supervisor;
pub(crate) mod systemd;
mod upgrade;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Code, Error, Result};
use crate::event::{Event, EventQueue, Metrics, WorkerStats};
use crate::spawn::{self, SpawnSpec};
use crate::sys::Flag;
use crate::wire::Frame;
use event_loop::EventLoop;
pub use listener::parse_address;
pub use policy::PolicyKind;
pub use supervisor::Supervision;
pub(crate) use systemd::VARIABLES as SYSTEMD_VARIABLES;

/// How a primary behaves. `Config::default()` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// How workers are started (argv, environment, cwd).
    pub spawn: SpawnSpec,
    /// The scheduling policy.
    pub policy: PolicyKind,
    /// Connections a worker may hold handed-over but not yet acknowledged
    /// (its credit). Lower is fairer, higher pipelines more. Default 8.
    pub max_unacked: u32,
    /// Connections the primary may hold accepted but not yet handed over.
    /// When full, it stops accepting and the kernel's backlog holds the rest.
    /// Default 1024.
    pub max_pending: u32,
    /// listen(2) backlog of the sockets the primary binds. Default 511.
    pub backlog: i32,
    /// How long a worker asked to disconnect may take before SIGTERM, and
    /// again before SIGKILL. Default 10 s.
    pub stop_timeout: Duration,
    /// Handle SIGTERM and SIGINT (graceful shutdown), SIGHUP (rolling
    /// reload), SIGTTIN and SIGTTOU (one worker more or less). Default off:
    /// the host's signals are the host's.
    pub handle_signals: bool,
    /// Restarts, reloads, heartbeat, recycling.
    pub supervision: Supervision,
    /// A worker holding a handed-over connection unacknowledged this long
    /// is treated as hung: it is killed (an `Unresponsive` event says so),
    /// its connections go to other workers once it is reaped, and its slot
    /// restarts it. `None`: no deadline. Default 30 s.
    pub ack_timeout: Option<Duration>,
    /// What workers may ask of the primary, and how much it queues.
    pub limits: Limits,
    /// Allow a primary in a process that was started as a worker. Off by
    /// default: a program that forgets to check `is_worker` would otherwise
    /// have every worker start workers of its own (a fork bomb).
    pub allow_nested: bool,
    /// Serve Prometheus metrics (`GET /metrics`) and a health check
    /// (`GET /healthz`: 200 only while the cluster serves) on this
    /// `HOST:PORT`, from a thread of their own. `None` (default): no endpoint.
    pub metrics_address: Option<String>,
    /// Speak systemd's protocols (see `systemd.rs`): take the listening
    /// sockets passed with `LISTEN_FDS` for their addresses instead of
    /// binding, and report readiness, reloads and the stop to
    /// `NOTIFY_SOCKET`. Default on: without those variables it does nothing.
    pub systemd: bool,
    /// Accept file descriptors attached to workers' messages (they come
    /// with `Event::Message`). Default off: a worker that attaches any is
    /// cut off (`WorkerError`) and they are closed, since a host that does
    /// not expect them would leave them to the event's drop.
    pub message_fds: bool,
}

/// Bounds on what workers may ask of the primary and on what it queues.
/// `Default` gives the documented defaults; each must be at least 1.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Listeners workers' listen requests may have the primary bind, in all.
    /// Beyond it a listen request for a new address fails with `EMFILE`.
    /// Default 1024.
    pub max_listeners: u32,
    /// Listeners one worker may hold. Default 64.
    pub max_listeners_per_worker: u32,
    /// A listener bound for workers' requests that no live worker has used
    /// for this long is closed (long enough that restarts and reloads keep
    /// it; listeners the host declared with `Primary::listen` stay open).
    /// Default 60 s.
    pub listener_idle: Duration,
    /// Bytes of messages queued for one worker that is not reading its
    /// channel; past it `send` fails with `TooBig` and sends nothing.
    /// Default 64 MiB.
    pub max_send_queue: usize,
    /// Bytes of worker messages waiting in the event queue for the host;
    /// past it the primary stops reading workers' channels (they wait,
    /// nothing is dropped) until the host has taken half. Default 64 MiB.
    pub max_event_bytes: usize,
    /// Largest message a worker may send; a larger one is a protocol
    /// error that cuts the worker off. At most (and by default)
    /// `channel::MAX_MESSAGE`.
    pub max_message: usize,
    /// File descriptors of worker messages waiting in the event queue for
    /// the host (`Config::message_fds`); past it the primary stops reading
    /// workers' channels, as for `max_event_bytes`, so a worker cannot make
    /// the primary run out of fds. Default 256.
    pub max_event_fds: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_listeners: 1024,
            max_listeners_per_worker: 64,
            listener_idle: Duration::from_secs(60),
            max_send_queue: 64 << 20,
            max_event_bytes: 64 << 20,
            max_message: crate::channel::MAX_MESSAGE,
            max_event_fds: 256,
        }
    }
}

impl Config {
    /// Refuses settings that cannot work: nothing would ever be accepted
    /// or handed out, or healthy workers would be killed.
    pub fn validate(&self) -> Result<()> {
        let refuse = |what: &str| Err(Error::new(Code::InvalidArgument, what.to_owned()));
        let s = &self.supervision;
        let l = &self.limits;
        if self.max_unacked == 0 {
            return refuse("max_unacked must be at least 1 (no worker could be handed a connection)");
        }
        if self.max_pending == 0 {
            return refuse("max_pending must be at least 1 (the primary would never accept a connection)");
        }
        if s.heartbeat_interval.is_some_and(|i| i.is_zero()) {
            return refuse("heartbeat_interval must be above 0 (leave it unset for no heartbeat)");
        }
        if s.heartbeat_timeout.is_zero() {
            return refuse("heartbeat_timeout must be above 0 (every worker would be killed as hung)");
        }
        if self.ack_timeout.is_some_and(|t| t.is_zero()) {
            return refuse("ack_timeout must be above 0 (leave it unset for no deadline)");
        }
        if !(s.restart_backoff.is_finite() && s.restart_backoff >= 1.0) {
            return refuse("restart_backoff must be a number >= 1");
        }
        if l.max_listeners == 0 || l.max_listeners_per_worker == 0 {
            return refuse("max_listeners and max_listeners_per_worker must be at least 1");
        }
        if l.max_send_queue == 0 || l.max_event_bytes == 0 || l.max_event_fds == 0 {
            return refuse("max_send_queue, max_event_bytes and max_event_fds must be at least 1");
        }
        if l.max_message == 0 || l.max_message > crate::channel::MAX_MESSAGE {
            return refuse("max_message must be between 1 and the channel's limit (256 MiB)");
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            spawn: SpawnSpec { own_process_group: true, ..SpawnSpec::default() },
            policy: PolicyKind::RoundRobin,
            max_unacked: 8,
            max_pending: 1024,
            backlog: 511,
            stop_timeout: Duration::from_secs(10),
            handle_signals: false,
            supervision: Supervision::default(),
            ack_timeout: Some(Duration::from_secs(30)),
            limits: Limits::default(),
            allow_nested: false,
            systemd: true,
            metrics_address: None,
            message_fds: false,
        }
    }
}

/// A started worker: its id and pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's id (≥ 1, never reused within a primary).
    pub id: u32,
    /// Its process id.
    pub pid: i32,
}

/// What [`Primary::fork_raw`] returned in this process.
#[derive(Debug)]
pub enum RawFork {
    /// We are the primary; the child is this worker.
    Parent(WorkerInfo),
    /// We are the new worker: open it with [`crate::Worker::open`]. The
    /// primary's handle in this process is dead (its fds are closed).
    Child,
}

pub(crate) enum Command {
    Fork {
        env: Vec<(OsString, OsString)>,
        overrides: crate::spawn::SpawnOverrides,
        reply: mpsc::SyncSender<Result<(WorkerInfo, crate::spawn::StdioPipes)>>,
    },
    Listen {
        host: String,
        port: u16,
        reply: mpsc::SyncSender<Result<SocketAddr>>,
    },
    Send {
        worker: u32,
        data: Vec<u8>,
    },
    /// A message with file descriptors (duplicates the loop owns): a frame of its own.
    SendFds {
        worker: u32,
        data: Vec<u8>,
        fds: Vec<std::os::fd::OwnedFd>,
    },
    /// Messages `send_many` packed into frames on the host thread.
    SendFrames {
        worker: u32,
        frames: Vec<Vec<u8>>,
        /// How many messages the frames hold.
        count: usize,
    },
    Disconnect {
        worker: u32,
    },
    Kill {
        worker: u32,
        signal: i32,
    },
    HangUp {
        worker: u32,
    },
    Shutdown {
        grace: Duration,
    },
    Reload {
        reply: mpsc::SyncSender<Result<u32>>,
    },
    Scale {
        workers: u32,
        reply: mpsc::SyncSender<Result<()>>,
    },
    Stats {
        reply: mpsc::SyncSender<Vec<WorkerStats>>,
    },
    Metrics {
        reply: mpsc::SyncSender<Metrics>,
    },
}

/// What the host thread and the loop thread share.
pub(crate) struct Shared {
    events: ManuallyDrop<EventQueue<Event>>,
    commands: Mutex<VecDeque<Command>>,
    /// Readable while commands wait; watched by the loop.
    wake: ManuallyDrop<Flag>,
    /// Workers whose channel is open (for send()'s synchronous check), with
    /// the bytes queued for each: in commands not yet taken by the loop,
    /// plus in its outbox (the loop adds and takes away its part).
    connected: Mutex<HashMap<u32, Arc<AtomicUsize>>>,
    /// Bytes of worker messages in the event queue not yet taken by the host.
    event_bytes: AtomicUsize,
    /// File descriptors of worker messages in the event queue not yet taken.
    event_fds: AtomicUsize,
    /// The loop stopped reading worker channels (`max_event_bytes`): the
    /// host wakes it when it has taken half.
    reads_paused: AtomicBool,
    max_send_queue: usize,
    max_event_bytes: usize,
    max_event_fds: usize,
    /// The loop has finished (after shutdown).
    stopped: AtomicBool,
    /// This process is a raw-forked child: the fds above were closed by hand.
    in_child: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !self.in_child.load(Ordering::SeqCst) {
            // SAFETY: dropped exactly once, here, and only when fork_raw's
            // child path did not already close their fds.
            unsafe {
                ManuallyDrop::drop(&mut self.events);
                ManuallyDrop::drop(&mut self.wake);
            }
        }
    }
}

impl Shared {
    pub(crate) fn emit(&self, event: Event) {
        if let Event::Message { data, fds, .. } = &event {
            self.event_bytes.fetch_add(data.len(), Ordering::Relaxed);
            if !fds.is_empty() {
                self.event_fds.fetch_add(fds.len(), Ordering::Relaxed);
            }
        }
        self.events.push(event);
    }

    /// Emits worker messages (counted against `max_event_bytes`).
    pub(crate) fn emit_messages(&self, worker: u32, pid: i32, messages: Vec<Vec<u8>>) {
        let bytes: usize = messages.iter().map(Vec::len).sum();
        self.event_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.events.push_many(messages.into_iter().map(|data| Event::Message { worker, pid, data, fds: Vec::new() }));
    }

    /// Whether the host has fallen so far behind that the loop must stop
    /// reading workers' messages.
    pub(crate) fn events_over_limit(&self) -> bool {
        self.event_bytes.load(Ordering::Relaxed) > self.max_event_bytes
            || self.event_fds.load(Ordering::Relaxed) > self.max_event_fds
    }

    /// The host took `event`: count its bytes off, and wake a paused loop
    /// once half the limit is free again.
    fn taken(&self, event: &Event) {
        if let Event::Message { data, fds, .. } = event {
            let left = self.event_bytes.fetch_sub(data.len(), Ordering::Relaxed) - data.len();
            let fds_left = match fds.len() {
                0 => self.event_fds.load(Ordering::Relaxed),
                n => self.event_fds.fetch_sub(n, Ordering::Relaxed) - n,
            };
            if left <= self.max_event_bytes / 2
                && fds_left <= self.max_event_fds / 2
                && self.reads_paused.swap(false, Ordering::SeqCst)
            {
                self.wake.set();
            }
        }
    }

    /// Queues a command for the loop and wakes it; false once it has stopped.
    fn submit(&self, command: Command) -> bool {
        if self.stopped.load(Ordering::SeqCst) {
            return false;
        }
        let mut commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        if commands.is_empty() {
            self.wake.set();
        }
        commands.push_back(command);
        true
    }

    fn lock_connected(&self) -> MutexGuard<'_, HashMap<u32, Arc<AtomicUsize>>> {
        self.connected.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A cluster's primary.
pub struct Primary {
    shared: Arc<Shared>,
    /// The loop before its thread starts.
    unstarted: Mutex<Option<EventLoop>>,
    /// The loop's thread has started (`unstarted` is None): the fast path
    /// of every call, which then takes no lock.
    started: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    stop_timeout: Duration,
    /// The metrics endpoint, if asked for (stopped first when the primary ends).
    metrics: Mutex<Option<metrics::MetricsServer>>,
}

impl Primary {
    /// Creates a primary. No thread starts and no worker is spawned yet.
    pub fn new(config: Config) -> Result<Primary> {
        config.validate()?;
        if crate::worker::is_worker() && !config.allow_nested {
            return Err(Error::new(
                Code::State,
                "this process is an rcluster worker: a primary here would start workers of its own (check \
                 is_worker before creating one, or set allow_nested if that is really wanted)",
            ));
        }
        let shared = Arc::new(Shared {
            events: ManuallyDrop::new(EventQueue::new()?),
            commands: Mutex::new(VecDeque::new()),
            wake: ManuallyDrop::new(Flag::new().map_err(|e| Error::os("eventfd", e))?),
            connected: Mutex::new(HashMap::new()),
            event_bytes: AtomicUsize::new(0),
            event_fds: AtomicUsize::new(0),
            reads_paused: AtomicBool::new(false),
            max_send_queue: config.limits.max_send_queue,
            max_event_bytes: config.limits.max_event_bytes,
            max_event_fds: config.limits.max_event_fds,
            stopped: AtomicBool::new(false),
            in_child: AtomicBool::new(false),
        });
        let stop_timeout = config.stop_timeout;
        let metrics = config.metrics_address.as_deref().map(|a| metrics::start(a, shared.clone())).transpose()?;
        let event_loop = EventLoop::new(config, shared.clone())?;
        Ok(Primary {
            shared,
            unstarted: Mutex::new(Some(event_loop)),
            started: AtomicBool::new(false),
            thread: Mutex::new(None),
            stop_timeout,
            metrics: Mutex::new(metrics),
        })
    }

    /// Starts a worker by exec (the config's argv, or this program), with
    /// `env` added to its environment, in a new slot: if it exits without
    /// being asked to, a new worker with the same environment replaces it
    /// (see [`Supervision`]). Returns once the process exists.
    pub fn fork(&self, env: Vec<(OsString, OsString)>) -> Result<WorkerInfo> {
        self.fork_with(env, crate::spawn::SpawnOverrides::default()).map(|(info, _)| info)
    }

    /// [`Primary::fork`] with another program, working directory or standard
    /// streams for this worker than the config's (Node's `setupPrimary`
    /// between forks); its restarts and reloads keep them (a piped stream
    /// becomes /dev/null for them). Returns the primary's ends of the
    /// worker's piped streams with its info.
    pub fn fork_with(
        &self,
        env: Vec<(OsString, OsString)>,
        overrides: crate::spawn::SpawnOverrides,
    ) -> Result<(WorkerInfo, crate::spawn::StdioPipes)> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.command(Command::Fork { env, overrides, reply })?;
        answer.recv().map_err(|_| self.stopped_error())?
    }

    /// Forks a worker without exec; returns in both processes. Only for
    /// single-threaded programs, before anything starts the loop thread
    /// (refused with a `State` error otherwise).
    pub fn fork_raw(&self) -> Result<RawFork> {
        self.check_usable()?;
        let mut unstarted = self.unstarted.lock().unwrap_or_else(|p| p.into_inner());
        let Some(event_loop) = unstarted.as_mut() else {
            return Err(Error::new(
                Code::State,
                "raw fork refused: the primary's loop thread is running; fork before using the primary",
            ));
        };
        let id = event_loop.reserve_worker_id();
        match spawn::fork_raw(id)? {
            spawn::Forked::Parent(spawned) => Ok(RawFork::Parent(event_loop.adopt(id, spawned, None)?)),
            spawn::Forked::Child => {
                // Close everything the primary owns so this worker holds no
                // listener, no other worker's channel and no event fd.
                drop(unstarted.take());
                self.shared.in_child.store(true, Ordering::SeqCst);
                // SAFETY: we are the only thread (fork_raw checked), the flag
                // above stops Shared's Drop from closing these fds again, and
                // nothing else refers to their numbers.
                unsafe {
                    libc::close(self.shared.events.fd());
                    libc::close(self.shared.wake.raw());
                }
                Ok(RawFork::Child)
            }
        }
    }

    /// Binds a listener up front (workers asking for the same address, or for
    /// the port this returns, share it). Returns the bound address.
    pub fn listen(&self, host: &str, port: u16) -> Result<SocketAddr> {
        self.check_usable()?;
        {
            let mut unstarted = self.unstarted.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(event_loop) = unstarted.as_mut() {
                return event_loop.listen(host, port);
            }
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.command(Command::Listen { host: host.to_owned(), port, reply })?;
        answer.recv().map_err(|_| self.stopped_error())?
    }

    /// The fd that is readable while events wait. Owned by the primary.
    pub fn event_fd(&self) -> RawFd {
        self.shared.events.fd()
    }

    /// The next event, waiting up to `timeout` (`Some(ZERO)`: don't wait).
    pub fn next_event(&self, timeout: Option<Duration>) -> Result<Option<Event>> {
        self.check_usable()?;
        self.ensure_started()?;
        let event = self.shared.events.pop_wait(timeout)?;
        if let Some(event) = &event {
            self.shared.taken(event);
        }
        Ok(event)
    }

    /// Sends application bytes to a worker (queued; never blocks).
    /// Fails with `TooBig` and sends nothing when the worker does not read
    /// and `max_send_queue` bytes already wait for it.
    pub fn send(&self, worker: u32, data: &[u8]) -> Result<()> {
        crate::channel::check_limits(data.len().saturating_add(1), 0)?;
        self.reserve_send(worker, data.len())?;
        self.command(Command::Send { worker, data: data.to_vec() })
    }

    /// Sends application bytes with file descriptors attached (at most
    /// `channel::MAX_FDS`, each open: else `TooBig` or `InvalidArgument`,
    /// nothing sent). The caller keeps its fds: they are duplicated before
    /// this returns, and the worker gets its own (`WorkerEvent::Message`).
    /// Queued, in order with `send`; never blocks.
    pub fn send_fds(&self, worker: u32, data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<()> {
        let fds = crate::message_fds::duplicate(data.len(), &crate::message_fds::raw(fds))?;
        self.reserve_send(worker, data.len())?;
        self.command(Command::SendFds { worker, data: data.to_vec(), fds })
    }

    /// Sends several messages to a worker, in order, packed into shared
    /// records on the calling thread (one copy, one command for the batch).
    /// The worker sees each as its own message. Queued; never blocks.
    pub fn send_many(&self, worker: u32, messages: &[&[u8]]) -> Result<()> {
        for message in messages {
            crate::channel::check_limits(message.len().saturating_add(1), 0)?;
        }
        if messages.is_empty() {
            return self.check_connected(worker);
        }
        let frames = Frame::pack_users(messages);
        self.reserve_send(worker, frames.iter().map(Vec::len).sum())?;
        self.command(Command::SendFrames { worker, frames, count: messages.len() })
    }

    /// Asks a worker to finish what it holds and leave; it gets no new
    /// connections from now on. After the stop timeout it gets SIGTERM,
    /// then SIGKILL. Its slot goes with it: it is not replaced.
    pub fn disconnect(&self, worker: u32) -> Result<()> {
        self.check_connected(worker)?;
        self.command(Command::Disconnect { worker })
    }

    /// Closes a worker's channel from this side at once, as Node's
    /// `worker.process.disconnect()` does: its connections go back to the
    /// queue and to other workers, a `Disconnect` event follows, and the
    /// worker sees its primary gone (and, by the worker side's rule, leaves).
    /// Unlike [`Primary::disconnect`] it waits for nothing and arms no stop
    /// timeout; what happens to the process is up to the worker (or a signal).
    pub fn hang_up(&self, worker: u32) -> Result<()> {
        self.check_connected(worker)?;
        self.command(Command::HangUp { worker })
    }

    /// Sends `signal` to a worker's process (only while it is unreaped, so
    /// the pid cannot belong to anyone else). If the signal ends it, that is
    /// an unexpected exit and the worker is replaced; use
    /// [`Primary::disconnect`] or [`Primary::scale`] to have fewer workers.
    pub fn kill(&self, worker: u32, signal: i32) -> Result<()> {
        if !(1..=64).contains(&signal) {
            return Err(Error::new(Code::InvalidArgument, format!("bad signal number {signal}")));
        }
        self.command(Command::Kill { worker, signal })
    }

    /// Starts a graceful shutdown: accept what the kernel already queued and
    /// hand it out, close the listeners, ask every worker to leave (SIGTERM
    /// after `grace`, SIGKILL after another `grace`). Ends with a
    /// [`Event::Shutdown`]. Returns at once; idempotent.
    pub fn shutdown(&self, grace: Duration) -> Result<()> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.command(Command::Shutdown { grace })
    }

    /// Starts a rolling reload: worker by worker (`reload_concurrency` at a
    /// time), start a replacement, wait until it is ready, then stop the old
    /// one gracefully. Listeners stay open throughout, so no connection is
    /// refused. Returns the generation the new workers carry; a
    /// [`Event::ReloadDone`] or [`Event::ReloadFailed`] follows. A reload
    /// asked for while one runs is done again right after it.
    pub fn reload(&self) -> Result<u32> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.command(Command::Reload { reply })?;
        answer.recv().map_err(|_| self.stopped_error())?
    }

    /// Sets the number of worker slots: starts new workers, or stops the
    /// newest ones gracefully.
    pub fn scale(&self, workers: u32) -> Result<()> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.command(Command::Scale { workers, reply })?;
        answer.recv().map_err(|_| self.stopped_error())?
    }

    /// A snapshot of every worker the primary knows, by id.
    pub fn stats(&self) -> Result<Vec<WorkerStats>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.command(Command::Stats { reply })?;
        answer.recv().map_err(|_| self.stopped_error())
    }

    /// The primary's own numbers and every worker's, CPU time and memory
    /// included (read from `/proc` now).
    pub fn metrics(&self) -> Result<Metrics> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.command(Command::Metrics { reply })?;
        answer.recv().map_err(|_| self.stopped_error())
    }

    /// Whether the loop has finished (the shutdown is complete).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::SeqCst)
    }

    fn check_usable(&self) -> Result<()> {
        if self.shared.in_child.load(Ordering::SeqCst) {
            return Err(Error::new(
                Code::State,
                "this process is a worker forked from the primary; the primary handle is not usable here",
            ));
        }
        Ok(())
    }

    fn check_connected(&self, worker: u32) -> Result<()> {
        self.check_usable()?;
        if !self.shared.lock_connected().contains_key(&worker) {
            return Err(Error::new(Code::Closed, format!("worker {worker} is not connected")));
        }
        Ok(())
    }

    /// Counts `bytes` as queued for `worker`, unless that would pass
    /// `max_send_queue` (a worker that does not read its channel).
    fn reserve_send(&self, worker: u32, bytes: usize) -> Result<()> {
        self.check_usable()?;
        let connected = self.shared.lock_connected();
        let Some(queued) = connected.get(&worker) else {
            return Err(Error::new(Code::Closed, format!("worker {worker} is not connected")));
        };
        let limit = self.shared.max_send_queue;
        let before = queued.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > limit && before > 0 {
            queued.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Error::new(
                Code::TooBig,
                format!(
                    "worker {worker} is not reading its channel: {before} bytes already wait for it \
                     (max_send_queue {limit}); nothing was sent"
                ),
            ));
        }
        Ok(())
    }

    fn stopped_error(&self) -> Error {
        Error::new(Code::State, "the primary has shut down")
    }

    fn command(&self, command: Command) -> Result<()> {
        self.check_usable()?;
        self.ensure_started()?;
        if !self.shared.submit(command) {
            return Err(self.stopped_error());
        }
        Ok(())
    }

    fn ensure_started(&self) -> Result<()> {
        if self.started.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut unstarted = self.unstarted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(event_loop) = unstarted.take() {
            let shared = self.shared.clone();
            let handle = std::thread::Builder::new()
                .name("rcluster-primary".into())
                .spawn(move || {
                    // A bug must not leave the host waiting forever: unwinding
                    // drops the loop (closing every channel, so workers leave),
                    // and the host hears that the primary has stopped.
                    let run = std::panic::AssertUnwindSafe(move || event_loop.run());
                    if std::panic::catch_unwind(run).is_err() {
                        shared.stopped.store(true, Ordering::SeqCst);
                        shared.emit(Event::Shutdown);
                    }
                })
                .map_err(|e| Error::os("spawning the primary's loop thread", e))?;
            *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        }
        // Started now or before, or dropped unstarted: nothing is left to start.
        self.started.store(true, Ordering::Release);
        Ok(())
    }
}

impl Primary {
    /// Ends this primary for good, whoever else still holds it: every
    /// thread waiting for an event returns a `Closed` error at once, then it
    /// shuts down (the stop timeout as grace) and waits for the loop to
    /// finish: no worker is left running, none unreaped. The C ABI's free.
    pub fn close(&self) {
        if self.shared.in_child.load(Ordering::SeqCst) {
            return;
        }
        self.shared.events.close();
        drop(self.metrics.lock().unwrap_or_else(|p| p.into_inner()).take());
        let _ = self.shutdown(self.stop_timeout);
        if let Some(handle) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Primary {
    /// Shuts down (if not already) with the stop timeout as grace, and waits
    /// for the loop to finish: no worker is left running, none unreaped.
    fn drop(&mut self) {
        if self.shared.in_child.load(Ordering::SeqCst) {
            return;
        }
        drop(self.metrics.lock().unwrap_or_else(|p| p.into_inner()).take());
        let _ = self.shutdown(self.stop_timeout);
        if let Some(handle) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
    }
}
