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

mod config;
mod core;
mod event_loop;
mod listener;
mod metrics;
pub mod policy;
mod shared;
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
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Code, Error, Result};
use crate::event::{Event, EventQueue, Metrics, WorkerStats};
use crate::spawn::{self};
use crate::sys::Flag;
use crate::wire::Frame;
pub use config::{Config, Limits};
use event_loop::EventLoop;
pub use listener::parse_address;
pub use policy::PolicyKind;
use shared::{Command, Shared};
pub use supervisor::Supervision;
pub(crate) use systemd::VARIABLES as SYSTEMD_VARIABLES;

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
