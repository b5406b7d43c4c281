//! The primary's event loop: one thread, one mio poll, read top to bottom.
//!
//! Each turn: wait for readiness or the next timer, then handle what is
//! ready — host commands, new connections, worker frames, worker exits,
//! signals — then hand pending connections to workers, fire timers, and
//! move the shutdown along. Every event's handling is a named method below.
//!
//! # Connection ownership
//!
//! An accepted connection is a [`Handoff`]. It sits in `pending` until a
//! worker can take it, then in that worker's `unacked` table until the
//! worker acknowledges it (then the primary closes its copy) or refuses it,
//! disconnects or dies (then it goes back to `pending` for another worker).
//! Credit (`max_unacked`) bounds each worker's table and `max_pending`
//! bounds the queue; when the queue is full the primary stops accepting and
//! the kernel's backlog holds the rest.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::listener::{parse_address, Listener};
use super::signals::SignalPipe;
use super::{Command, Config, Shared, WorkerInfo};
use crate::channel::{self, Reassembler};
use crate::error::{Code, Error, Result};
use crate::event::{Event, Exit};
use crate::spawn::{self, Spawned};
use crate::sys::{self, ExitStatus};
use crate::wire::{self, Frame};

/// Without a pidfd, how often exits are checked with waitpid(pid, WNOHANG).
const REAP_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long accepting pauses after EMFILE/ENFILE/ENOBUFS/ENOMEM, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

// Tokens: the low two bits say what, the rest which.
const KIND_SPECIAL: usize = 0;
const KIND_LISTENER: usize = 1;
const KIND_CHANNEL: usize = 2;
const KIND_PIDFD: usize = 3;
const TOKEN_WAKE: Token = Token(0);
const TOKEN_SIGNALS: Token = Token(1 << 2);

fn token(kind: usize, id: u32) -> Token {
    Token(((id as usize) << 2) | kind)
}

/// An accepted connection the primary still owns.
struct Handoff {
    conn: u64,
    listener: u32,
    fd: Arc<OwnedFd>,
    /// How many workers refused it.
    refusals: u32,
}

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
}

/// Why a worker is being stopped by signal, and what comes next.
#[derive(Clone, Copy)]
struct Escalation {
    at: Instant,
    signal: libc::c_int,
}

struct WorkerSlot {
    id: u32,
    pid: i32,
    child: Option<std::process::Child>,
    pidfd: Option<OwnedFd>,
    link: Option<Link>,
    /// Asked to leave or said goodbye: gets no new connections.
    leaving: bool,
    /// Its exit follows a disconnect it asked for or was asked for.
    after_disconnect: bool,
    unacked: HashMap<u64, Handoff>,
    listening: Vec<u32>,
    escalation: Option<Escalation>,
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
    workers: HashMap<u32, WorkerSlot>,
    listeners: HashMap<u32, Listener>,
    by_address: HashMap<SocketAddr, u32>,
    pending: VecDeque<Handoff>,
    next_worker: u32,
    next_listener: u32,
    next_conn: u64,
    signals: Option<SignalPipe>,
    shutdown: Option<ShutdownState>,
}

impl EventLoop {
    pub(crate) fn new(config: Config, shared: Arc<Shared>) -> Result<EventLoop> {
        let poll = Poll::new().map_err(|e| Error::os("epoll", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&shared.wake.raw()),
                TOKEN_WAKE,
                Interest::READABLE,
            )
            .map_err(|e| Error::os("registering the wake fd", e))?;
        let signals = if config.handle_signals {
            let pipe = SignalPipe::install()?;
            poll.registry()
                .register(
                    &mut SourceFd(&pipe.fd().as_raw_fd()),
                    TOKEN_SIGNALS,
                    Interest::READABLE,
                )
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
            listeners: HashMap::new(),
            by_address: HashMap::new(),
            pending: VecDeque::new(),
            next_worker: 1,
            next_listener: 1,
            next_conn: 1,
            signals,
            shutdown: None,
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
            for event in events.iter() {
                let Token(raw) = event.token();
                let id = (raw >> 2) as u32;
                match raw & 3 {
                    KIND_SPECIAL if event.token() == TOKEN_WAKE => self.on_commands(),
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
            self.dispatch_pending();
            self.accept_ready();
            self.on_timers();
            if self.advance_shutdown() {
                break;
            }
        }
        self.finish();
    }

    // ----- host commands -------------------------------------------------

    fn on_commands(&mut self) {
        let commands: Vec<Command> = {
            let mut queue = self
                .shared
                .commands
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.shared.wake.clear();
            queue.drain(..).collect()
        };
        for command in commands {
            match command {
                Command::Fork { env, reply } => {
                    let _ = reply.send(self.fork(env));
                }
                Command::Listen { host, port, reply } => {
                    let _ = reply.send(self.listen(&host, port));
                }
                Command::Send { worker, data } => {
                    self.send_frame(worker, &Frame::encode_user(&data), &[])
                }
                Command::Disconnect { worker } => self.disconnect(worker),
                Command::Kill { worker, signal } => self.kill(worker, signal),
                Command::Shutdown { grace } => self.begin_shutdown(grace),
            }
        }
    }

    pub(crate) fn reserve_worker_id(&mut self) -> u32 {
        let id = self.next_worker;
        self.next_worker += 1;
        id
    }

    fn fork(&mut self, env: Vec<(OsString, OsString)>) -> Result<WorkerInfo> {
        if self.shutdown.is_some() {
            return Err(Error::new(Code::State, "the primary is shutting down"));
        }
        let mut spec = self.config.spawn.clone();
        spec.env.extend(env);
        let id = self.reserve_worker_id();
        let spawned = spawn::spawn(&spec, id)?;
        self.adopt(id, spawned)
    }

    /// Takes a started worker into the table and watches its channel and pid.
    pub(crate) fn adopt(&mut self, id: u32, spawned: Spawned) -> Result<WorkerInfo> {
        let Spawned {
            pid,
            child,
            channel,
        } = spawned;
        let registry = self.poll.registry();
        registry
            .register(
                &mut SourceFd(&channel.as_raw_fd()),
                token(KIND_CHANNEL, id),
                Interest::READABLE,
            )
            .map_err(|e| Error::os("registering a worker channel", e))?;
        let pidfd = sys::pidfd_open(pid).map_err(|e| Error::os("pidfd_open", e))?;
        if let Some(fd) = &pidfd {
            registry
                .register(
                    &mut SourceFd(&fd.as_raw_fd()),
                    token(KIND_PIDFD, id),
                    Interest::READABLE,
                )
                .map_err(|e| Error::os("registering a pidfd", e))?;
        }
        let link = Link {
            fd: channel,
            reassembler: Reassembler::new(),
            outbox: VecDeque::new(),
            writable_armed: false,
        };
        self.workers.insert(
            id,
            WorkerSlot {
                id,
                pid,
                child,
                pidfd,
                link: Some(link),
                leaving: false,
                after_disconnect: false,
                unacked: HashMap::new(),
                listening: Vec::new(),
                escalation: None,
            },
        );
        self.shared.lock_connected().insert(id);
        self.shared.emit(Event::Fork { worker: id, pid });
        Ok(WorkerInfo { id, pid })
    }

    /// Finds or binds the listener for `host:port`.
    pub(crate) fn listen(&mut self, host: &str, port: u16) -> Result<SocketAddr> {
        let id = self.listener_for(host, port)?;
        Ok(self.listeners[&id].address)
    }

    fn listener_for(&mut self, host: &str, port: u16) -> Result<u32> {
        if self.shutdown.is_some() {
            return Err(
                Error::new(Code::State, "the primary is shutting down").with_errno(libc::ESHUTDOWN)
            );
        }
        let requested = parse_address(host, port)?;
        if let Some(&id) = self.by_address.get(&requested) {
            return Ok(id);
        }
        let id = self.next_listener;
        let listener = Listener::bind(
            id,
            requested,
            self.config.backlog,
            self.config.policy.instantiate(),
        )?;
        if listener.policy.primary_accepts() {
            self.poll
                .registry()
                .register(
                    &mut SourceFd(&listener.socket.as_raw_fd()),
                    token(KIND_LISTENER, id),
                    Interest::READABLE,
                )
                .map_err(|e| Error::os("registering a listener", e))?;
        }
        self.next_listener += 1;
        // Both keys lead here: port 0 as asked, and the port the OS picked.
        self.by_address.insert(requested, id);
        self.by_address.insert(listener.address, id);
        self.listeners.insert(id, listener);
        Ok(id)
    }

    fn disconnect(&mut self, worker: u32) {
        self.send_frame(worker, &Frame::Disconnect.encode(), &[]);
        let stop_timeout = self.config.stop_timeout;
        if let Some(slot) = self.workers.get_mut(&worker) {
            slot.leaving = true;
            slot.after_disconnect = true;
            if slot.escalation.is_none() {
                slot.escalation = Some(Escalation {
                    at: Instant::now() + stop_timeout,
                    signal: libc::SIGTERM,
                });
            }
        }
    }

    fn kill(&mut self, worker: u32, signal: libc::c_int) {
        if let Some(slot) = self.workers.get(&worker) {
            // The slot lives until we reap the pid, so it is still ours.
            let _ = sys::kill(slot.pid, signal);
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
        if self.pending.len() >= self.config.max_pending as usize {
            return;
        }
        let ready: Vec<u32> = self
            .listeners
            .values()
            .filter(|l| l.ready && l.policy.primary_accepts())
            .map(|l| l.id)
            .collect();
        for id in ready {
            self.accept_from(id, false);
        }
    }

    /// Accepts until the kernel queue is empty, the pending queue is full
    /// (unless `unbounded`, used once at shutdown), or an error says pause.
    fn accept_from(&mut self, id: u32, unbounded: bool) {
        loop {
            if !unbounded && self.pending.len() >= self.config.max_pending as usize {
                return;
            }
            let Some(listener) = self.listeners.get_mut(&id) else {
                return;
            };
            if !listener.ready
                || listener.paused_until.is_some()
                || !listener.policy.primary_accepts()
            {
                return;
            }
            // SAFETY: accept4 on a listening socket we own, no address out-params.
            let ret = unsafe {
                libc::accept4(
                    listener.socket.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if ret >= 0 {
                // SAFETY: a fresh fd from accept4, owned by nothing else.
                let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(ret) });
                let conn = self.next_conn;
                self.next_conn += 1;
                self.dispatch(Handoff {
                    conn,
                    listener: id,
                    fd,
                    refusals: 0,
                });
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
                    return;
                }
            }
        }
    }

    /// Hands a connection to the worker the policy picks, or queues it.
    fn dispatch(&mut self, handoff: Handoff) {
        match self.pick_worker(handoff.listener) {
            Some(worker) => self.hand_to(worker, handoff),
            None => self.pending.push_back(handoff),
        }
    }

    fn pick_worker(&mut self, listener: u32) -> Option<u32> {
        let listener = self.listeners.get_mut(&listener)?;
        let workers = &self.workers;
        let max_unacked = self.config.max_unacked as usize;
        listener.policy.pick(&listener.members, &mut |id| {
            let slot = workers.get(&id)?;
            let can_take = slot.link.is_some() && !slot.leaving && slot.unacked.len() < max_unacked;
            can_take.then_some(slot.unacked.len() as u32)
        })
    }

    fn hand_to(&mut self, worker: u32, handoff: Handoff) {
        let frame = wire::encode_conn(handoff.listener, handoff.conn);
        let fd = handoff.fd.clone();
        let Some(slot) = self.workers.get_mut(&worker) else {
            self.pending.push_back(handoff);
            return;
        };
        // Into the table first: if the send fails, the hang-up path re-queues it.
        slot.unacked.insert(handoff.conn, handoff);
        self.send_frame(worker, &frame, &[fd]);
    }

    /// Hands out queued connections wherever a worker can take them,
    /// keeping the order of those that must still wait.
    fn dispatch_pending(&mut self) {
        let mut waiting = VecDeque::new();
        while let Some(handoff) = self.pending.pop_front() {
            match self.pick_worker(handoff.listener) {
                Some(worker) => self.hand_to(worker, handoff),
                None => waiting.push_back(handoff),
            }
        }
        // hand_to may have re-queued into self.pending (a worker died): keep those too.
        waiting.extend(self.pending.drain(..));
        self.pending = waiting;
    }

    // ----- worker channels -----------------------------------------------

    /// Sends one message (as records) to a worker, queueing what the socket
    /// cannot take now. A broken channel is treated as a hang-up.
    fn send_frame(&mut self, worker: u32, bytes: &[u8], fds: &[Arc<OwnedFd>]) {
        let Some(link) = self.workers.get_mut(&worker).and_then(|s| s.link.as_mut()) else {
            return;
        };
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
            link.outbox.push_back(Outgoing {
                header,
                payload: payload.to_vec(),
                fds: attached.to_vec(),
            });
        }
        if broken {
            self.hang_up(worker);
        } else {
            self.arm_writable(worker);
        }
    }

    fn arm_writable(&mut self, worker: u32) {
        let Some(link) = self.workers.get_mut(&worker).and_then(|s| s.link.as_mut()) else {
            return;
        };
        let want = !link.outbox.is_empty();
        if want != link.writable_armed {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self.poll.registry().reregister(
                &mut SourceFd(&link.fd.as_raw_fd()),
                token(KIND_CHANNEL, worker),
                interest,
            );
            link.writable_armed = want;
        }
    }

    fn on_worker_writable(&mut self, worker: u32) {
        let Some(link) = self.workers.get_mut(&worker).and_then(|s| s.link.as_mut()) else {
            return;
        };
        let mut broken = false;
        while let Some(record) = link.outbox.front() {
            let raw: Vec<RawFd> = record.fds.iter().map(|fd| fd.as_raw_fd()).collect();
            match channel::send_record(link.fd.as_fd(), record.header, &record.payload, &raw) {
                Ok(()) => {
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

    fn on_worker_readable(&mut self, worker: u32) {
        loop {
            let Some(link) = self.workers.get_mut(&worker).and_then(|s| s.link.as_mut()) else {
                return;
            };
            match link.reassembler.read(link.fd.as_fd()) {
                Ok(channel::Read::Message(message)) => self.on_frame(worker, message),
                Ok(channel::Read::WouldBlock) => return,
                Ok(channel::Read::Eof) => return self.hang_up(worker),
                Err(e) => return self.worker_error(worker, e),
            }
        }
    }

    fn on_frame(&mut self, worker: u32, message: channel::Message) {
        if !message.fds.is_empty() {
            // Workers never send fds; the ones that came are closed with the message.
            return self.worker_error(
                worker,
                Error::new(Code::Protocol, "worker sent file descriptors"),
            );
        }
        let frame = match Frame::decode(message.data) {
            Ok(frame) => frame,
            Err(e) => return self.worker_error(worker, e),
        };
        let Some(pid) = self.workers.get(&worker).map(|s| s.pid) else {
            return;
        };
        match frame {
            Frame::Hello { .. } => self.shared.emit(Event::Online { worker, pid }),
            Frame::Listen {
                request,
                port,
                host,
            } => self.on_listen_request(worker, request, &host, port),
            Frame::Unlisten { listener } => self.leave_listener(worker, listener),
            Frame::Ack { conn, accepted } => self.on_ack(worker, conn, accepted),
            Frame::Goodbye => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.leaving = true;
                    slot.after_disconnect = true;
                }
            }
            Frame::User(data) => self.shared.emit(Event::Message { worker, pid, data }),
            other => self.worker_error(
                worker,
                Error::new(
                    Code::Protocol,
                    format!("worker sent a primary-only frame {other:?}"),
                ),
            ),
        }
    }

    fn on_listen_request(&mut self, worker: u32, request: u32, host: &str, port: u16) {
        let result = self.listener_for(host, port);
        let reply = match result {
            Ok(id) => {
                let listener = self
                    .listeners
                    .get_mut(&id)
                    .expect("listener_for returned a known id");
                let shared = !listener.policy.primary_accepts();
                if !listener.members.contains(&worker) {
                    listener.members.push(worker);
                }
                let address = listener.address;
                let fd = shared.then(|| listener.socket.try_clone());
                if let Some(slot) = self.workers.get_mut(&worker) {
                    if !slot.listening.contains(&id) {
                        slot.listening.push(id);
                    }
                }
                let frame = Frame::ListenOk {
                    request,
                    listener: id,
                    shared,
                    port: address.port(),
                    address: address.to_string(),
                };
                match fd {
                    // SCM_RIGHTS duplicates the descriptor; a dup here keeps ours independent of the outbox.
                    Some(Ok(socket)) => {
                        self.send_frame(worker, &frame.encode(), &[Arc::new(OwnedFd::from(socket))])
                    }
                    Some(Err(e)) => {
                        let errno = e.raw_os_error().unwrap_or(0);
                        self.send_frame(
                            worker,
                            &Frame::ListenErr {
                                request,
                                errno,
                                message: format!("dup of listener: {e}"),
                            }
                            .encode(),
                            &[],
                        );
                        return;
                    }
                    None => self.send_frame(worker, &frame.encode(), &[]),
                }
                let pid = self.workers.get(&worker).map(|s| s.pid).unwrap_or(0);
                self.shared.emit(Event::Listening {
                    worker,
                    pid,
                    address,
                });
                return;
            }
            Err(e) => Frame::ListenErr {
                request,
                errno: e.errno(),
                message: e.message().to_owned(),
            },
        };
        self.send_frame(worker, &reply.encode(), &[]);
    }

    fn leave_listener(&mut self, worker: u32, listener: u32) {
        if let Some(l) = self.listeners.get_mut(&listener) {
            l.members.retain(|&w| w != worker);
        }
        if let Some(slot) = self.workers.get_mut(&worker) {
            slot.listening.retain(|&l| l != listener);
        }
    }

    fn on_ack(&mut self, worker: u32, conn: u64, accepted: bool) {
        let Some(slot) = self.workers.get_mut(&worker) else {
            return;
        };
        let Some(mut handoff) = slot.unacked.remove(&conn) else {
            return self.worker_error(
                worker,
                Error::new(
                    Code::Protocol,
                    format!("worker acknowledged unknown connection {conn}"),
                ),
            );
        };
        if accepted {
            return; // dropping the handoff closes the primary's copy
        }
        handoff.refusals += 1;
        let members = self
            .listeners
            .get(&handoff.listener)
            .map_or(0, |l| l.members.len());
        if handoff.refusals as usize > members.max(1) * 2 {
            // Every worker keeps refusing it: closing it is all that is left.
            return;
        }
        self.pending.push_back(handoff);
    }

    /// The worker's channel closed (or broke): its connections go back to
    /// the queue, it leaves every listener, and the host hears of it.
    fn hang_up(&mut self, worker: u32) {
        let Some(slot) = self.workers.get_mut(&worker) else {
            return;
        };
        let Some(link) = slot.link.take() else { return };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&link.fd.as_raw_fd()));
        drop(link);
        let mut orphans: Vec<Handoff> = slot.unacked.drain().map(|(_, h)| h).collect();
        orphans.sort_by_key(|h| std::cmp::Reverse(h.conn));
        for handoff in orphans {
            self.pending.push_front(handoff); // oldest first, ahead of newer arrivals
        }
        let listening = std::mem::take(&mut slot.listening);
        let pid = slot.pid;
        for id in listening {
            if let Some(l) = self.listeners.get_mut(&id) {
                l.members.retain(|&w| w != worker);
            }
        }
        self.shared.lock_connected().remove(&worker);
        self.shared.emit(Event::Disconnect { worker, pid });
    }

    /// The worker broke the protocol: report it, cut it off, and stop it.
    fn worker_error(&mut self, worker: u32, error: Error) {
        let Some(slot) = self.workers.get_mut(&worker) else {
            return;
        };
        let pid = slot.pid;
        slot.escalation = Some(Escalation {
            at: Instant::now(),
            signal: libc::SIGTERM,
        });
        self.shared.emit(Event::WorkerError {
            worker,
            pid,
            message: error.message().to_owned(),
        });
        self.hang_up(worker);
    }

    fn on_worker_exit(&mut self, worker: u32) {
        let Some(slot) = self.workers.get_mut(&worker) else {
            return;
        };
        let status = match &mut slot.child {
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
            None => sys::try_reap(slot.pid).unwrap_or(Some(ExitStatus::Unknown)),
        };
        let Some(status) = status else { return };
        // Read what it sent before dying (acks first), then the hang-up.
        self.on_worker_readable(worker);
        self.hang_up(worker);
        let Some(slot) = self.workers.remove(&worker) else {
            return;
        };
        if let Some(fd) = &slot.pidfd {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        let exit = match status {
            ExitStatus::Code(code) => Exit::Code(code),
            ExitStatus::Signal(signal) => Exit::Signal(signal),
            ExitStatus::Unknown => Exit::Unknown,
        };
        self.shared.emit(Event::Exit {
            worker,
            pid: slot.pid,
            exit,
            after_disconnect: slot.after_disconnect,
        });
    }

    // ----- signals, timers, shutdown -------------------------------------

    fn on_signals(&mut self) {
        let Some(pipe) = &self.signals else { return };
        for signal in pipe.take() {
            if signal == libc::SIGTERM || signal == libc::SIGINT {
                if self.shutdown.is_some() {
                    // Asked twice: stop the workers now.
                    let now = Instant::now();
                    for slot in self.workers.values_mut() {
                        slot.escalation = Some(Escalation {
                            at: now,
                            signal: libc::SIGKILL,
                        });
                    }
                } else {
                    self.begin_shutdown(self.config.stop_timeout);
                }
            }
        }
    }

    fn next_timer(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        let mut consider =
            |at: Instant| earliest = Some(earliest.map_or(at, |e: Instant| e.min(at)));
        for listener in self.listeners.values() {
            if let Some(at) = listener.paused_until {
                consider(at);
            }
        }
        for slot in self.workers.values() {
            if let Some(esc) = slot.escalation {
                consider(esc.at);
            }
            if slot.pidfd.is_none() {
                consider(now + REAP_POLL_INTERVAL);
            }
        }
        if let Some(shutdown) = &self.shutdown {
            if !shutdown.disconnects_sent {
                consider(shutdown.drain_until);
            }
        }
        earliest.map(|at| at.saturating_duration_since(now))
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let mut resumed = Vec::new();
        for listener in self.listeners.values_mut() {
            if listener.paused_until.is_some_and(|at| at <= now) {
                listener.paused_until = None;
                resumed.push(listener.id);
            }
        }
        for id in resumed {
            self.accept_from(id, false);
        }
        let stop_timeout = self
            .shutdown
            .as_ref()
            .map_or(self.config.stop_timeout, |s| s.grace);
        let mut unreaped = Vec::new();
        for slot in self.workers.values_mut() {
            if let Some(esc) = slot.escalation.filter(|e| e.at <= now) {
                let _ = sys::kill(slot.pid, esc.signal);
                slot.escalation = (esc.signal != libc::SIGKILL).then_some(Escalation {
                    at: now + stop_timeout,
                    signal: libc::SIGKILL,
                });
            }
            if slot.pidfd.is_none() {
                unreaped.push(slot.id);
            }
        }
        for id in unreaped {
            self.on_worker_exit(id);
        }
    }

    fn begin_shutdown(&mut self, grace: Duration) {
        if self.shutdown.is_some() {
            return;
        }
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
        for (_, listener) in self.listeners.drain() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&listener.socket.as_raw_fd()));
        }
        self.by_address.clear();
        self.shutdown = Some(ShutdownState {
            grace,
            drain_until: Instant::now() + grace,
            disconnects_sent: false,
        });
        self.dispatch_pending();
    }

    /// Moves the shutdown along; true once it is complete.
    fn advance_shutdown(&mut self) -> bool {
        let Some(shutdown) = &self.shutdown else {
            return false;
        };
        if !shutdown.disconnects_sent {
            let can_still_dispatch = self
                .workers
                .values()
                .any(|s| s.link.is_some() && !s.leaving);
            let drained = self.pending.is_empty()
                || !can_still_dispatch
                || Instant::now() >= shutdown.drain_until;
            if !drained {
                return false;
            }
            let grace = shutdown.grace;
            self.pending.clear(); // nobody left to serve them
            let ids: Vec<u32> = self.workers.keys().copied().collect();
            for id in ids {
                self.send_frame(id, &Frame::Disconnect.encode(), &[]);
                if let Some(slot) = self.workers.get_mut(&id) {
                    slot.leaving = true;
                    slot.after_disconnect = true;
                    slot.escalation = Some(Escalation {
                        at: Instant::now() + grace,
                        signal: libc::SIGTERM,
                    });
                }
            }
            if let Some(shutdown) = &mut self.shutdown {
                shutdown.disconnects_sent = true;
            }
        }
        self.workers.is_empty()
    }

    fn finish(&mut self) {
        self.shared
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Fail any command that raced in after the last turn.
        let leftovers: Vec<Command> = {
            let mut queue = self
                .shared
                .commands
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            queue.drain(..).collect()
        };
        for command in leftovers {
            let stopped = || Error::new(Code::State, "the primary has shut down");
            match command {
                Command::Fork { reply, .. } => {
                    let _ = reply.send(Err(stopped()));
                }
                Command::Listen { reply, .. } => {
                    let _ = reply.send(Err(stopped()));
                }
                _ => {}
            }
        }
        self.signals = None;
        self.shared.emit(Event::Shutdown);
    }
}
