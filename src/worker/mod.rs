//! The worker side: open the channel the primary left us, listen on addresses
//! through the primary, accept the connections it hands over, exchange
//! messages.
//!
//! There is no thread here. Whoever calls in (accept, next_event, listen)
//! reads the channel under one lock and sorts what arrives into queues: a
//! queue of connections per listener, a queue of events, a table of listen
//! replies. Each queue has an fd that is readable while it holds something,
//! and each pollable fd we hand out is an epoll set of "the channel" plus
//! "my queue", so a host polling any of them wakes for its own work and never
//! misses an item another caller pulled off the channel.
//!
//! A handed-over connection stays the primary's until we acknowledge it, and
//! we acknowledge it the moment `accept` returns it, before the caller can
//! read a byte: if this process dies after that, the ack is already in the
//! primary's receive queue ahead of the hang-up. Connections we cannot take
//! (listener closed, worker closing) are refused, and the primary hands them
//! to another worker.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::channel::{self, Reassembler};
use crate::error::{Code, Error, Result};
use crate::event::{EventQueue, WorkerEvent};
use crate::primary::parse_address;
use crate::spawn::{ENV_CHANNEL_FD, ENV_WORKER_ID};
use crate::sys::{self, Deadline, Flag, PollSet};
use crate::wire::Frame;

mod hybrid;
mod listener;
mod pump;
mod share;

use hybrid::SelfAccepting;
pub use listener::Listener;
use listener::Mode;

static OPENED: AtomicBool = AtomicBool::new(false);

/// How long queued events may be handed out without reading the channel.
const PUMP_EVERY_US: u64 = 1000;

/// What this process is, read once from the environment and kept: the
/// variables are removed when the worker opens (so its own children are
/// ordinary processes), and the answer must not change then.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Identity {
    Unknown,
    NotWorker,
    Worker { id: u32, fd: RawFd },
}

static IDENTITY: Mutex<Identity> = Mutex::new(Identity::Unknown);

fn identity() -> Identity {
    let mut identity = IDENTITY.lock().unwrap_or_else(|p| p.into_inner());
    if *identity == Identity::Unknown {
        *identity = identity_from_env();
    }
    *identity
}

/// A worker is a process whose environment names a worker id and a channel
/// fd that is really an open channel. Variables that outlived their
/// channel (inherited by a child of a worker that never opened, say) make
/// an ordinary process, not an error.
fn identity_from_env() -> Identity {
    let id: Option<u32> = std::env::var(ENV_WORKER_ID).ok().and_then(|v| v.parse().ok()).filter(|&id| id > 0);
    let fd: Option<RawFd> = std::env::var(ENV_CHANNEL_FD).ok().and_then(|v| v.parse().ok()).filter(|&fd| fd >= 0);
    match (id, fd) {
        (Some(id), Some(fd)) if sys::fd_is_open(fd) => {
            // SAFETY: only borrowed for the check, and `fd_is_open` said it is open.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            match channel::check_socket(borrowed) {
                Ok(()) => Identity::Worker { id, fd },
                Err(_) => Identity::NotWorker,
            }
        }
        _ => Identity::NotWorker,
    }
}

/// Makes this process worker `id` on channel `fd` (a raw fork's child, which
/// the identity read before the fork would call the primary).
pub(crate) fn become_worker(id: u32, fd: RawFd) {
    *IDENTITY.lock().unwrap_or_else(|p| p.into_inner()) = Identity::Worker { id, fd };
}

/// Whether this process was started as an rcluster worker: its environment
/// named a worker id and a channel fd that is an open channel. The answer
/// stays the same after the worker opens and removes those variables.
pub fn is_worker() -> bool {
    worker_id().is_some()
}

/// This worker's id, or `None` in a primary or a plain process.
pub fn worker_id() -> Option<u32> {
    match identity() {
        Identity::Worker { id, .. } => Some(id),
        _ => None,
    }
}

/// This process's side of the cluster. Cheap to clone; all clones share one channel.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    id: u32,
    /// This process's pid when the worker was opened (events carry it).
    pid: i32,
    channel: OwnedFd,
    state: Mutex<State>,
    /// Serializes senders so the records of one message stay contiguous.
    send_lock: Mutex<()>,
    events: EventQueue<WorkerEvent>,
    /// Set while `State::replies` holds a reply.
    replies_flag: Flag,
    /// Set once the primary asked us to leave; in every listener's poll set,
    /// so a listener opened after the request (a listen answered while the
    /// `Disconnect` frame was on its way) still wakes and reports `Closed`.
    draining_flag: Flag,
    poll: PollSet,
    closed: AtomicBool,
    /// The primary's policy counts finished connections (`done`).
    report_done: AtomicBool,
    /// When `pump` last read the channel (µs since `born`).
    last_pump_us: AtomicU64,
    /// Connections taken from `hybrid` listeners and not yet reported
    /// finished (`done`): while it holds `SELF_ACCEPT_CAP`, the worker
    /// leaves new ones to the others or calls the primary in.
    held: AtomicU32,
    /// A `hybrid` listen was answered (so `done` looks whether this
    /// worker accepts itself; other policies skip the lock).
    any_hybrid: AtomicBool,
    born: Instant,
}

#[derive(Default)]
struct State {
    reassembler: Reassembler,
    listeners: HashMap<u32, ConnQueue>,
    replies: HashMap<u32, Frame>,
    shared_fds: HashMap<u32, OwnedFd>,
    abandoned: HashSet<u32>,
    next_request: u32,
    /// Port-0 listeners per address, for their index (see [`Worker::listen`]).
    port_zero: HashMap<SocketAddr, PortZero>,
    /// The primary asked us to leave: hand out what is queued, then report Closed.
    draining: bool,
    /// Why the channel is unusable (hang-up or protocol error), once it is.
    gone: Option<Error>,
}

impl State {
    /// A port-0 listener at `key` is closed (or its listen failed): its index is free.
    fn close_port_zero(&mut self, key: SocketAddr, index: u16) {
        if let Some(indexes) = self.port_zero.get_mut(&key) {
            indexes.open.remove(&index);
            if indexes.open.is_empty() {
                self.port_zero.remove(&key);
            }
        }
    }
}

/// This worker's port-0 listeners at one address: the n-th gets index n and
/// shares its port with every worker's n-th (Node's cluster keys port-0
/// servers by address and a per-worker index the same way).
#[derive(Default)]
struct PortZero {
    next: u16,
    open: HashSet<u16>,
}

impl PortZero {
    fn open_next(&mut self) -> u16 {
        let index = self.next;
        self.next = self.next.wrapping_add(1);
        self.open.insert(index);
        index
    }
}

struct ConnQueue {
    conns: VecDeque<(u64, OwnedFd)>,
    flag: Flag,
    handles: u32,
    /// Policy `hybrid`: this worker also accepts on the listening socket.
    hybrid: Option<SelfAccepting>,
}

impl Worker {
    /// Opens the worker side from the environment (`RCLUSTER_WORKER_ID`,
    /// `RCLUSTER_CHANNEL_FD`) and tells the primary we are online.
    /// Once per process.
    pub fn open() -> Result<Worker> {
        let Identity::Worker { id, fd } = identity() else {
            return Err(Error::new(
                Code::State,
                format!("not a worker: {ENV_WORKER_ID} and {ENV_CHANNEL_FD} do not name an open channel"),
            ));
        };
        if !sys::fd_is_open(fd) {
            return Err(Error::new(Code::State, format!("{ENV_CHANNEL_FD}={fd} is not an open fd in this process")));
        }
        if OPENED.swap(true, Ordering::SeqCst) {
            return Err(Error::new(Code::State, "the worker is already open in this process"));
        }
        // SAFETY: the environment protocol hands fd `fd` to this process's
        // worker, and OPENED guarantees we take it exactly once.
        let channel = unsafe { OwnedFd::from_raw_fd(fd) };
        let checked = channel::check_socket(channel.as_fd()).and_then(|()| {
            sys::set_cloexec(channel.as_fd(), true).map_err(|e| Error::os("fcntl(FD_CLOEXEC) on channel", e))
        });
        let opened = match checked {
            Ok(()) => Worker::build(id, channel),
            Err(e) => Err((e, channel)),
        };
        match opened {
            Ok(worker) => {
                // This process's children are ordinary processes (as Node
                // removes NODE_UNIQUE_ID): they neither inherit the channel
                // (close-on-exec) nor the variables that name it.
                std::env::remove_var(ENV_WORKER_ID);
                std::env::remove_var(ENV_CHANNEL_FD);
                Ok(worker)
            }
            Err((e, channel)) => {
                // Not opened: leave the fd as we found it and the process
                // unopened, so a later open says what is really wrong again
                // rather than "already open".
                std::mem::forget(channel);
                OPENED.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Builds a worker over an already-open channel end (tests, raw fork).
    pub fn from_channel(id: u32, channel: OwnedFd) -> Result<Worker> {
        Worker::build(id, channel).map_err(|(e, _channel)| e)
    }

    /// Builds a worker and says hello; on failure the channel comes back.
    fn build(id: u32, channel: OwnedFd) -> std::result::Result<Worker, (Error, OwnedFd)> {
        let (events, replies_flag, draining_flag, poll) = match Worker::queues(&channel) {
            Ok(parts) => parts,
            Err(e) => return Err((e, channel)),
        };
        // SAFETY: getpid is always safe.
        let pid = unsafe { libc::getpid() };
        let worker = Worker {
            inner: Arc::new(Inner {
                id,
                pid,
                channel,
                state: Mutex::new(State::default()),
                send_lock: Mutex::new(()),
                events,
                replies_flag,
                draining_flag,
                poll,
                closed: AtomicBool::new(false),
                report_done: AtomicBool::new(false),
                last_pump_us: AtomicU64::new(0),
                held: AtomicU32::new(0),
                any_hybrid: AtomicBool::new(false),
                born: Instant::now(),
            }),
        };
        if let Err(e) = worker.send_frame(&Frame::Hello { pid }) {
            // Nothing else holds the worker yet: take the channel back.
            let inner = Arc::try_unwrap(worker.inner).unwrap_or_else(|_| unreachable!("the worker was not shared"));
            return Err((e, inner.channel));
        }
        Ok(worker)
    }

    /// The worker's event queue, reply and draining flags, and poll set over `channel`.
    fn queues(channel: &OwnedFd) -> Result<(EventQueue<WorkerEvent>, Flag, Flag, PollSet)> {
        let events = EventQueue::new()?;
        let replies_flag = Flag::new().map_err(|e| Error::os("eventfd", e))?;
        let draining_flag = Flag::new().map_err(|e| Error::os("eventfd", e))?;
        let poll = PollSet::new(&[channel.as_raw_fd(), events.fd()]).map_err(|e| Error::os("epoll", e))?;
        Ok((events, replies_flag, draining_flag, poll))
    }

    /// This worker's id (≥ 1).
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// This process's pid (as when the worker was opened).
    pub fn pid(&self) -> i32 {
        self.inner.pid
    }

    /// An fd that is readable when [`Worker::next_event`] may have something.
    /// Owned by the worker.
    pub fn fd(&self) -> RawFd {
        self.inner.poll.raw()
    }

    /// Asks the primary to listen on `host:port` and serve us its connections.
    /// `host` is an IP address, `localhost`, or empty for all IPv4 interfaces.
    /// Workers asking for the same address share its connections.
    ///
    /// Port 0 lets the OS pick, as Node's cluster does: a worker's first
    /// listener on port 0 at a host shares one port with every other
    /// worker's first, its second another port with their seconds, and so
    /// on (the count restarts once all of this worker's port-0 listeners at
    /// that host are closed; a paused one, [`Listener::pause`], keeps its
    /// place). The primary's own `listen(host, 0)` is the first.
    pub fn listen(&self, host: &str, port: u16, timeout: Option<Duration>) -> Result<Listener> {
        self.check_open()?;
        if host.len() > crate::wire::MAX_STR {
            let what =
                format!("host is {} bytes long; at most {} fit a listen request", host.len(), crate::wire::MAX_STR);
            return Err(Error::new(Code::InvalidArgument, what));
        }
        let port_zero = {
            let mut state = self.inner.lock();
            // An address that does not parse gets index 0: the primary refuses it.
            let key = if port == 0 { parse_address(host, 0).ok() } else { None };
            key.map(|key| (key, state.port_zero.entry(key).or_default().open_next()))
        };
        let listener = self.request_listener(host, port, port_zero, timeout);
        if let (Err(_), Some((key, index))) = (&listener, port_zero) {
            self.inner.lock().close_port_zero(key, index);
        }
        listener
    }

    /// A new request number (replies echo it).
    fn next_request(&self) -> u32 {
        let mut state = self.inner.lock();
        state.next_request = state.next_request.wrapping_add(1);
        state.next_request
    }

    /// Waits up to `timeout` for the reply to `request` (and the fd that
    /// came with it). On timeout the request is abandoned: a late reply is
    /// undone by `pump` when it arrives.
    fn await_reply(
        &self,
        request: u32,
        timeout: Option<Duration>,
        what: impl Fn() -> String,
    ) -> Result<(Frame, Option<OwnedFd>)> {
        let deadline = Deadline::after(timeout);
        loop {
            let mut state = self.inner.lock();
            let refusals = self.inner.pump(&mut state);
            if let Some(reply) = state.replies.remove(&request) {
                if state.replies.is_empty() {
                    self.inner.replies_flag.clear();
                }
                let fd = state.shared_fds.remove(&request);
                drop(state);
                self.inner.refuse(refusals);
                return Ok((reply, fd));
            }
            if let Some(gone) = &state.gone {
                return Err(gone.clone());
            }
            drop(state);
            self.inner.refuse(refusals);
            if !self.inner.wait(&[self.inner.replies_flag.raw()], deadline)? {
                let mut state = self.inner.lock();
                if !state.replies.contains_key(&request) {
                    state.abandoned.insert(request);
                    return Err(Error::new(Code::Timeout, format!("the primary did not answer {}", what())));
                }
            }
        }
    }

    /// Sends a listen request and waits for its answer; `port_zero` is the
    /// port-0 place (address key and index) the listener holds and frees on
    /// close. The index travels only with port 0: an explicit port (a paused
    /// port-0 listener resuming) is keyed by address alone.
    fn request_listener(
        &self,
        host: &str,
        port: u16,
        port_zero: Option<(SocketAddr, u16)>,
        timeout: Option<Duration>,
    ) -> Result<Listener> {
        let request = self.next_request();
        let index = if port == 0 { port_zero.map_or(0, |(_, index)| index) } else { 0 };
        self.send_frame(&Frame::Listen { request, port, host: host.to_owned(), index })?;
        let reply = self.await_reply(request, timeout, || format!("the listen request for {host}:{port}"))?;
        match reply {
            (Frame::ListenOk { listener, shared, address, .. }, shared_fd) => {
                let address: SocketAddr = address
                    .parse()
                    .map_err(|_| Error::new(Code::Protocol, format!("primary sent a bad address {address:?}")))?;
                let mode = match (shared, shared_fd) {
                    // A listening socket with a listen the primary serves: `hybrid`.
                    (false, Some(socket)) => self.hybrid_mode(listener, socket)?,
                    (true, socket) => {
                        let socket =
                            socket.ok_or_else(|| Error::new(Code::Protocol, "shared listener came without its fd"))?;
                        // Only `reuseport` sockets carry SO_REUSEPORT: each is this
                        // worker's alone (a `shared` socket is every worker's).
                        let own = sys::sockopt_int(socket.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT)
                            .map_err(|e| Error::os("getsockopt(SO_REUSEPORT) on the listener", e))?
                            != 0;
                        Mode::Shared {
                            poll: PollSet::new(&[
                                socket.as_raw_fd(),
                                self.inner.channel.as_raw_fd(),
                                self.inner.draining_flag.raw(),
                            ])
                            .map_err(|e| Error::os("epoll", e))?,
                            socket,
                            own,
                        }
                    }
                    (false, None) => {
                        let state = self.inner.lock();
                        let queue = state
                            .listeners
                            .get(&listener)
                            .ok_or_else(|| Error::new(Code::Protocol, "listener vanished"))?;
                        Mode::Dispatched {
                            poll: PollSet::new(&[
                                queue.flag.raw(),
                                self.inner.channel.as_raw_fd(),
                                self.inner.draining_flag.raw(),
                            ])
                            .map_err(|e| Error::os("epoll", e))?,
                        }
                    }
                };
                Ok(Listener {
                    worker: self.clone(),
                    id: listener,
                    address,
                    mode,
                    closed: AtomicBool::new(false),
                    holds_place: AtomicBool::new(port_zero.is_some()),
                    port_zero,
                })
            }
            (reply @ Frame::ListenErr { .. }, _) => Err(reply.listen_error().expect("a ListenErr frame")),
            (other, _) => Err(Error::new(Code::Protocol, format!("unexpected listen reply {other:?}"))),
        }
    }

    /// The next event, waiting up to `timeout` (`Some(0)`: don't wait).
    /// `Ok(None)`: nothing within the time. After `PrimaryGone` has been
    /// returned, further calls return a `Closed` error.
    pub fn next_event(&self, timeout: Option<Duration>) -> Result<Option<WorkerEvent>> {
        // Events already sorted out go first: draining a batch of messages
        // costs a read of the channel per millisecond, not one per message.
        // Reading it at least that often keeps pings answered (and refusals
        // sent) while a long backlog is worked through.
        if self.inner.pumped_recently() {
            if let Some(event) = self.inner.events.pop() {
                return Ok(Some(event));
            }
        }
        let deadline = Deadline::after(timeout);
        loop {
            let mut state = self.inner.lock();
            let refusals = self.inner.pump(&mut state);
            let gone = state.gone.clone();
            drop(state);
            self.inner.refuse(refusals);
            if let Some(event) = self.inner.events.pop() {
                return Ok(Some(event));
            }
            if let Some(gone) = gone {
                return Err(gone);
            }
            if !self.inner.wait(&[self.inner.events.fd()], deadline)? {
                return Ok(None);
            }
        }
    }

    /// Tells the primary this worker is ready, for primaries configured to
    /// wait for it (`wait_ready`) before counting a replacement as started.
    pub fn ready(&self) -> Result<()> {
        self.check_open()?;
        self.send_frame(&Frame::Ready)
    }

    /// Tells the primary that `count` connections this worker accepted are
    /// finished (closed). The load-aware policy (`least`) counts on it;
    /// other policies ignore it.
    ///
    /// Under other policies nothing is sent (the primary said in its listen
    /// reply that it does not want the reports), so calling it always is cheap.
    pub fn done(&self, count: u32) -> Result<()> {
        self.check_open()?;
        if !self.inner.report_done.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Under `hybrid` the primary counts only what it handed over, and
        // hands over only once it stepped in: while this worker accepts
        // itself, the reports would only wake the primary.
        if self.inner.any_hybrid.load(Ordering::Relaxed) {
            let _ =
                self.inner.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| Some(h.saturating_sub(count)));
            if self.inner.lock().listeners.values().any(|q| q.hybrid.as_ref().is_some_and(|h| h.on)) {
                return Ok(());
            }
        }
        self.send_frame(&Frame::Done { count })
    }

    /// Whether the primary wants [`Worker::done`] reports (its policy is
    /// load-aware). Known once a listen has been answered; a binding that
    /// reports from a hot path may skip the call when this is false.
    pub fn reports_done(&self) -> bool {
        self.inner.report_done.load(Ordering::Relaxed)
    }

    /// Sends application bytes to the primary (blocks while the channel is full).
    pub fn send(&self, data: &[u8]) -> Result<()> {
        self.check_open()?;
        channel::check_limits(data.len().saturating_add(1), 0)?;
        self.send_frame(&Frame::User(data.to_vec()))
    }

    /// Sends application bytes with file descriptors attached (at most
    /// `channel::MAX_FDS`, each open: else `TooBig` or `InvalidArgument`,
    /// nothing sent). The caller keeps its fds (the kernel duplicates them
    /// as the message leaves). The primary takes them only if its host asked
    /// (`Config::message_fds`); otherwise it cuts this worker off.
    pub fn send_fds(&self, data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<()> {
        self.check_open()?;
        let raw = crate::message_fds::raw(fds);
        crate::message_fds::check(data.len(), &raw)?;
        let bytes = Frame::encode_user(data);
        let _guard = self.inner.send_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.send_bytes_with_fds_locked(&bytes, &raw)
    }

    /// Sends several messages, in order, packing small ones into shared
    /// records: one system call for many messages instead of one each.
    /// The primary reports each as its own message event.
    pub fn send_many(&self, messages: &[&[u8]]) -> Result<()> {
        self.check_open()?;
        for message in messages {
            channel::check_limits(message.len().saturating_add(1), 0)?;
        }
        let frames = Frame::pack_users(messages);
        let _guard = self.inner.send_lock.lock().unwrap_or_else(|p| p.into_inner());
        for frame in frames {
            self.inner.send_bytes_locked(&frame)?;
        }
        Ok(())
    }

    /// Leaves the cluster gracefully: refuses every connection still queued
    /// (the primary gives them to other workers), says goodbye and closes the
    /// channel. Listeners of this worker stop working. Idempotent.
    pub fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let refusals: Vec<Frame> = {
            let mut state = self.inner.lock();
            let mut refusals = self.inner.pump(&mut state);
            for queue in state.listeners.values_mut() {
                refusals.extend(queue.conns.drain(..).map(|(conn, _fd)| Frame::Ack { conn, accepted: false }));
            }
            refusals
        };
        // Goodbye first: the primary then knows these refusals come from a
        // worker that is leaving, not from one that will not serve them.
        let _ = self.inner.send_frame(&Frame::Goodbye);
        self.inner.refuse(refusals);
        // shutdown (not close) so other threads still polling the fd wake up
        // and see it hung up; the fd is closed when the last handle drops.
        // SAFETY: shutdown on a socket fd we own.
        unsafe { libc::shutdown(self.inner.channel.as_raw_fd(), libc::SHUT_RDWR) };
        self.inner.events.push(WorkerEvent::PrimaryGone);
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::new(Code::Closed, "the worker is closed"));
        }
        Ok(())
    }

    fn send_frame(&self, frame: &Frame) -> Result<()> {
        self.inner.send_frame(frame)
    }
}
