//! Events: what the primary and the worker report to their host, pulled from
//! a queue whose fd is readable while the queue is not empty.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Code, Error, Result};
use crate::sys::{self, Deadline, Flag};
pub use crate::tables::{EventKind, WorkerState};

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It is gone but its status was taken by someone else's waitpid.
    Unknown,
}

/// Something that happened in the cluster, seen from the primary.
///
/// Not `Clone`: a message's file descriptors have one owner.
#[derive(Debug)]
pub enum Event {
    /// A worker process was started, in `slot` (none for a raw fork), with
    /// the primary's current reload `generation`.
    Fork {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: i32,
        /// Its slot (none for a raw fork).
        slot: Option<u32>,
        /// The primary's reload generation when it started.
        generation: u32,
    },
    /// The worker opened its channel end and said hello.
    Online {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: i32,
    },
    /// The worker is now served connections of `address`.
    Listening {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: i32,
        /// The address served.
        address: SocketAddr,
    },
    /// The worker sent application bytes, with the file descriptors it
    /// attached (only when `Config::message_fds` is on; at most
    /// `message_fds::MAX_FDS`, close-on-exec, owned by whoever holds the
    /// event). Fewer than were sent when this process ran out of fds (the
    /// kernel drops the rest).
    Message {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: i32,
        /// The bytes it sent.
        data: Vec<u8>,
        /// The descriptors it attached.
        fds: Vec<OwnedFd>,
    },
    /// The worker's channel closed.
    Disconnect {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: i32,
    },
    /// The worker process ended. `after_disconnect`: it had been asked to leave, or left on purpose.
    Exit {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: i32,
        /// How it ended.
        exit: Exit,
        /// It had been asked to leave, or left on purpose.
        after_disconnect: bool,
        /// The primary asked it to go (stop, scale, reload, shutdown); a
        /// worker that said goodbye on its own has `after_disconnect` alone
        /// (Node's `exitedAfterDisconnect` tells the two apart).
        stop_requested: bool,
    },
    /// The worker broke the protocol; it is disconnected.
    WorkerError {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: i32,
        /// What went wrong.
        message: String,
    },
    /// A slot's worker kept exiting unexpectedly: restarts of that slot stopped.
    CrashLoop {
        /// The slot it runs in.
        slot: u32,
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: i32,
    },
    /// A worker did not answer the heartbeat, or did not acknowledge a
    /// handed-over connection, in time: it is killed and replaced.
    Unresponsive {
        /// The worker's id.
        worker: u32,
        /// Its process id.
        pid: i32,
    },
    /// A worker for `slot` could not be started (`message` says why and
    /// when it is retried). Not a crash: the slot keeps retrying.
    SpawnFailed {
        /// The slot it runs in.
        slot: u32,
        /// What went wrong.
        message: String,
    },
    /// A rolling reload finished: every slot runs a worker of `generation`.
    ReloadDone {
        /// The reload generation.
        generation: u32,
    },
    /// A rolling reload stopped: a replacement did not become ready. The
    /// workers not yet replaced keep serving.
    ReloadFailed {
        /// The reload generation.
        generation: u32,
        /// What went wrong.
        message: String,
    },
    /// A new primary (`pid`), started on SIGUSR2, took over the listening
    /// sockets and all its workers listen: this one now stops gracefully.
    Upgraded {
        /// The new primary's process id.
        pid: i32,
    },
    /// The new primary did not take over (`message` says why): it was
    /// stopped, and this one keeps serving.
    UpgradeFailed {
        /// What went wrong.
        message: String,
    },
    /// Shutdown finished: every worker is gone, the listeners are closed.
    Shutdown,
}

/// One worker's numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStats {
    /// The worker's id.
    pub id: u32,
    /// Its process id.
    pub pid: i32,
    /// Its slot, or none for a raw-forked worker.
    pub slot: Option<u32>,
    /// Where it is in its life.
    pub state: WorkerState,
    /// The reload generation it was started in.
    pub generation: u32,
    /// Connections handed to it so far.
    pub dispatched: u64,
    /// Connections handed to it and not yet acknowledged.
    pub in_flight: u32,
    /// Connections it took and has not reported finished (`Worker::done`);
    /// counted only under policies that ask for the reports (`least`), else 0.
    pub active: u32,
    /// How many workers its slot had to restart.
    pub restarts: u32,
    /// Time since it was started.
    pub uptime: Duration,
    /// Application messages it sent the primary.
    pub messages_in: u64,
    /// Application messages the primary sent it.
    pub messages_out: u64,
    /// CPU time (user + system) its process has used, from `/proc` (zero
    /// once it has exited).
    pub cpu: Duration,
    /// Its resident memory, from `/proc`, in bytes (zero once it has exited).
    pub rss_bytes: u64,
}

/// The primary's own numbers, beside its workers' (`Primary::metrics`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryStats {
    /// Accepted connections waiting for a worker (the dispatch queue).
    pub pending: u32,
    /// How often accepting paused for lack of fds or memory (EMFILE and the like).
    pub accept_pauses: u64,
    /// Listening sockets open.
    pub listeners: u32,
    /// The reload generation new workers are started with.
    pub generation: u32,
    /// Whether the cluster serves: not stopping, and some worker listens.
    pub serving: bool,
    /// CPU time the primary's process has used (the host's too: one process).
    pub cpu: Duration,
    /// The primary's process's resident memory, in bytes.
    pub rss_bytes: u64,
}

/// A snapshot of the primary and every worker it knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// The primary's own numbers.
    pub primary: PrimaryStats,
    /// Every worker's.
    pub workers: Vec<WorkerStats>,
}

impl Event {
    /// Its kind in the table every layer shares.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Fork { .. } => EventKind::Fork,
            Event::Online { .. } => EventKind::Online,
            Event::Listening { .. } => EventKind::Listening,
            Event::Message { .. } => EventKind::Message,
            Event::Disconnect { .. } => EventKind::Disconnect,
            Event::Exit { .. } => EventKind::Exit,
            Event::WorkerError { .. } => EventKind::WorkerError,
            Event::CrashLoop { .. } => EventKind::CrashLoop,
            Event::Unresponsive { .. } => EventKind::Unresponsive,
            Event::SpawnFailed { .. } => EventKind::SpawnFailed,
            Event::ReloadDone { .. } => EventKind::ReloadDone,
            Event::ReloadFailed { .. } => EventKind::ReloadFailed,
            Event::Upgraded { .. } => EventKind::Upgraded,
            Event::UpgradeFailed { .. } => EventKind::UpgradeFailed,
            Event::Shutdown => EventKind::Shutdown,
        }
    }
}

/// Something that happened, seen from a worker.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The primary sent application bytes, with the file descriptors it
    /// attached (close-on-exec, owned by whoever holds the event; fewer than
    /// were sent when this process ran out of fds).
    Message {
        /// The bytes it sent.
        data: Vec<u8>,
        /// The descriptors it attached.
        fds: Vec<OwnedFd>,
    },
    /// The primary asks this worker to finish what it holds and leave.
    Disconnect,
    /// The primary is gone (the channel hung up).
    PrimaryGone,
}

impl WorkerEvent {
    /// Its kind in the table every layer shares.
    pub fn kind(&self) -> EventKind {
        match self {
            WorkerEvent::Message { .. } => EventKind::Message,
            WorkerEvent::Disconnect => EventKind::Disconnect,
            WorkerEvent::PrimaryGone => EventKind::PrimaryGone,
        }
    }
}

/// A queue whose fd is readable exactly while it holds something.
#[derive(Debug)]
pub struct EventQueue<T> {
    items: Mutex<VecDeque<T>>,
    flag: Flag,
    /// Closed by its owner's free: waiters return `Closed`, pushes are dropped.
    closed: AtomicBool,
}

impl<T> EventQueue<T> {
    /// An empty queue.
    pub fn new() -> Result<EventQueue<T>> {
        Ok(EventQueue {
            items: Mutex::new(VecDeque::new()),
            flag: Flag::new().map_err(|e| Error::os("eventfd", e))?,
            closed: AtomicBool::new(false),
        })
    }

    /// Closes the queue: every waiter, now and later, returns a `Closed`
    /// error (the fd stays readable so pollers wake too), and what is
    /// pushed from now on is dropped.
    pub fn close(&self) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::SeqCst);
        items.clear();
        self.flag.set();
    }

    fn closed_error() -> Error {
        Error::new(Code::Closed, "the object was freed while waiting for an event")
    }

    /// Appends an item; the fd becomes readable.
    pub fn push(&self, item: T) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if items.is_empty() {
            self.flag.set();
        }
        items.push_back(item);
    }

    /// Adds several items under one lock (one wake-up of a waiting reader).
    pub fn push_many(&self, new: impl IntoIterator<Item = T>) {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let was_empty = items.is_empty();
        items.extend(new);
        if was_empty && !items.is_empty() {
            self.flag.set();
        }
    }

    /// Takes the oldest item, if any.
    pub fn pop(&self) -> Option<T> {
        let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let item = items.pop_front();
        if item.is_some() && items.is_empty() && !self.closed.load(Ordering::Relaxed) {
            self.flag.clear();
        }
        item
    }

    /// Waits up to `timeout` for an item.
    pub fn pop_wait(&self, timeout: Option<Duration>) -> Result<Option<T>> {
        if let Some(item) = self.pop() {
            return Ok(Some(item)); // no clock read when something is waiting
        }
        let deadline = Deadline::after(timeout);
        loop {
            if let Some(item) = self.pop() {
                return Ok(Some(item));
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(Self::closed_error());
            }
            if deadline.expired() {
                return Ok(None); // just looked: a poll(0) would say the same
            }
            let mut pfd = [sys::pollfd(self.flag.raw(), libc::POLLIN)];
            if sys::poll(&mut pfd, deadline).map_err(|e| Error::os("poll on event queue", e))? == 0 {
                return Ok(self.pop());
            }
        }
    }

    /// The pollable fd (readable while not empty). Owned by the queue.
    pub fn fd(&self) -> RawFd {
        self.flag.raw()
    }
}
