//! The worker side: the channel to the primary, its events, and listeners
//! whose connections are accepted on a Rust thread and handed to JS as fds.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;
use rcluster::{Code, EventKind, Listener, ShareFlags, SocketKind, Worker, WorkerEvent};

/// A socket the primary shares (`NativeWorker.share`).
#[napi(object)]
pub struct SharedSocket {
    pub fd: i32,
    pub port: u32,
    pub address: String,
}

/// How the primary binds a UDP socket it shares: dgram's `reuseAddr` and
/// `ipv6Only` (`NativeWorker.share`).
#[napi(object)]
pub struct ShareOptions {
    pub reuse_addr: Option<bool>,
    pub ipv6_only: Option<bool>,
}

use crate::gate::Gate;
use crate::js_error;

/// One event from the primary, seen by this worker.
#[napi(object)]
pub struct WorkerEventJs {
    /// message, disconnect, primary_gone (the core's names, `eventKinds()`).
    pub kind: String,
    /// message: the bytes the primary sent, as UTF-8 text (JSON).
    pub data: Option<String>,
    /// primary_gone: why the channel ended.
    pub reason: Option<String>,
    /// message: the file descriptors that came with it, owned by JS from
    /// here (lib/handles.js wraps or closes each).
    pub fds: Option<Vec<i32>>,
}

impl From<WorkerEvent> for WorkerEventJs {
    fn from(event: WorkerEvent) -> WorkerEventJs {
        let kind = event.kind().name().to_owned();
        match event {
            WorkerEvent::Message { data, fds } => WorkerEventJs {
                kind,
                data: Some(String::from_utf8_lossy(&data).into_owned()),
                reason: None,
                fds: crate::fds_to_js(fds),
            },
            WorkerEvent::Disconnect => WorkerEventJs { kind, data: None, reason: None, fds: None },
            WorkerEvent::PrimaryGone => WorkerEventJs::gone("the primary is gone".to_owned()),
        }
    }
}

impl WorkerEventJs {
    fn gone(reason: String) -> WorkerEventJs {
        WorkerEventJs { kind: EventKind::PrimaryGone.name().to_owned(), data: None, reason: Some(reason), fds: None }
    }
}

/// This process's side of the cluster.
#[napi]
pub struct NativeWorker {
    inner: Worker,
    started: bool,
}

#[napi]
impl NativeWorker {
    /// Opens the channel the primary left us (once per process).
    #[napi(factory)]
    pub fn open(js: &Env) -> Result<NativeWorker> {
        Ok(NativeWorker { inner: Worker::open().map_err(js_error(js))?, started: false })
    }

    #[napi(getter)]
    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    /// Starts forwarding events to `onEvent` (once). The thread ends after
    /// the `primary_gone` event (the primary went away, or we closed).
    #[napi]
    pub fn start(&mut self, on_event: Function<WorkerEventJs, ()>) -> Result<()> {
        if self.started {
            return Err(Error::new(Status::GenericFailure, "already started"));
        }
        let tsfn = on_event
            .build_threadsafe_function::<WorkerEventJs>()
            .weak::<true>()
            .callee_handled::<false>()
            .build_callback(|ctx| Ok(ctx.value))?;
        let worker = self.inner.clone();
        std::thread::Builder::new()
            .name("rcluster-node-worker-events".into())
            .spawn(move || loop {
                let event = match worker.next_event(None) {
                    Ok(None) => continue,
                    Ok(Some(event)) => WorkerEventJs::from(event),
                    Err(e) => WorkerEventJs::gone(e.message().to_owned()),
                };
                let last = event.kind == EventKind::PrimaryGone.name();
                tsfn.call(event, ThreadsafeFunctionCallMode::NonBlocking);
                if last {
                    return;
                }
            })
            .map_err(|e| Error::from_reason(format!("spawning the event thread: {e}")))?;
        self.started = true;
        Ok(())
    }

    /// An fd readable when `nextEvent` may have something (for a `NativePoll`).
    #[napi(getter)]
    pub fn fd(&self) -> i32 {
        self.inner.fd()
    }

    /// The next event without waiting, or null when none is waiting (the
    /// polled alternative to `start`). After `primary_gone`, null.
    #[napi]
    pub fn next_event(&self) -> Option<WorkerEventJs> {
        // After `primary_gone` the core only returns errors: it was reported already.
        self.inner.next_event(Some(Duration::ZERO)).ok().flatten().map(WorkerEventJs::from)
    }

    /// Sends a message (UTF-8 text) to the primary.
    #[napi]
    pub fn send(&self, js: &Env, data: String) -> Result<()> {
        self.inner.send(data.as_bytes()).map_err(js_error(js))
    }

    /// Sends a message with file descriptors attached; the caller keeps them.
    #[napi]
    pub fn send_fds(&self, js: &Env, data: String, fds: Vec<i32>) -> Result<()> {
        let fds = crate::borrow_fds(&fds).map_err(js_error(js))?;
        self.inner.send_fds(data.as_bytes(), &fds).map_err(js_error(js))
    }

    /// Asks the primary to listen on `host:port` (port 0: an OS-picked port
    /// every worker's n-th port-0 listen at `host` shares) and serve us its connections.
    /// Blocks until the primary answers (its own thread answers at once).
    #[napi]
    pub fn listen(&self, js: &Env, host: String, port: u32, timeout_ms: Option<u32>) -> Result<NativeListener> {
        let port = u16::try_from(port).map_err(|_| Error::new(Status::InvalidArg, format!("bad port {port}")))?;
        let timeout = Duration::from_millis(timeout_ms.unwrap_or(30_000) as u64);
        let listener = self.inner.listen(&host, port, Some(timeout)).map_err(js_error(js))?;
        NativeListener::new(listener)
    }

    /// Asks the primary for a socket it binds once and shares with every
    /// worker asking the same (`kind`: unix, udp4, udp6; `address` a path
    /// for unix): Node's cluster sharing of pipe servers and dgram sockets.
    /// `options`: how a UDP socket is bound, if this request binds it. The
    /// fd is JS's (close-on-exec). Blocks until the primary answers.
    #[napi]
    pub fn share(
        &self,
        js: &Env,
        kind: String,
        address: String,
        port: u32,
        index: u32,
        options: Option<ShareOptions>,
    ) -> Result<SharedSocket> {
        let kind = SocketKind::from_name(&kind).map_err(js_error(js))?;
        let port = u16::try_from(port).map_err(|_| Error::new(Status::InvalidArg, format!("bad port {port}")))?;
        let index = u16::try_from(index).map_err(|_| Error::new(Status::InvalidArg, format!("bad index {index}")))?;
        let flags = options.map_or(ShareFlags::default(), |o| ShareFlags {
            reuse_addr: o.reuse_addr.unwrap_or(false),
            ipv6_only: o.ipv6_only.unwrap_or(false),
        });
        let (fd, port, address) = self
            .inner
            .share(kind, &address, port, index, flags, Some(Duration::from_secs(30)))
            .map_err(js_error(js))?;
        Ok(SharedSocket { fd: fd.into_raw_fd(), port: port as u32, address })
    }

    /// Tells the primary this worker is ready (for primaries with `waitReady`).
    #[napi]
    pub fn ready(&self, js: &Env) -> Result<()> {
        self.inner.ready().map_err(js_error(js))
    }

    /// Tells the primary `count` accepted connections are finished (the
    /// `least` policy counts on it; a no-op under other policies).
    #[napi]
    pub fn done(&self, js: &Env, count: u32) -> Result<()> {
        self.inner.done(count).map_err(js_error(js))
    }

    /// Whether the primary wants `done` reports (a load-aware policy); known
    /// once a listen has been answered.
    #[napi(getter)]
    pub fn reports_done(&self) -> bool {
        self.inner.reports_done()
    }

    /// Leaves the cluster: refuses queued connections, says goodbye, closes the channel.
    #[napi]
    pub fn close(&self) {
        self.inner.close();
    }
}

/// What an accept thread hands to JS: a connection, or why it ended.
pub(crate) enum Accepted {
    Conn(OwnedFd),
    End(String),
}

/// Starts a thread named `name` that runs `accept_loop`; each connection
/// (or the end) it delivers goes to `on_conn` on the JS thread.
pub(crate) fn spawn_accept_thread(
    name: &str,
    on_conn: Function<ConnEvent, ()>,
    accept_loop: impl FnOnce(&dyn Fn(Accepted)) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    let tsfn =
        on_conn.build_threadsafe_function::<Accepted>().weak::<true>().callee_handled::<false>().build_callback(
            |ctx| {
                // Runs on the JS thread: from here the fd is JS's to close.
                Ok(match ctx.value {
                    Accepted::Conn(fd) => ConnEvent { fd: Some(fd.into_raw_fd()), closed: false, error: None },
                    Accepted::End(reason) => ConnEvent { fd: None, closed: true, error: Some(reason) },
                })
            },
        )?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // A value the JS side can no longer take is dropped here, and
            // dropping an Accepted::Conn closes its fd: nothing leaks.
            accept_loop(&|accepted| {
                tsfn.call(accepted, ThreadsafeFunctionCallMode::NonBlocking);
            })
        })
        .map_err(|e| Error::from_reason(format!("spawning the accept thread: {e}")))
}

/// An accepted connection (`fd`, now owned by JS) or the end of the stream.
#[napi(object)]
pub struct ConnEvent {
    pub fd: Option<i32>,
    /// The listener will give no more connections (the worker is disconnecting or closed).
    pub closed: bool,
    pub error: Option<String>,
}

struct ListenerState {
    listener: Listener,
    gate: Gate,
    started: AtomicBool,
}

impl ListenerState {
    fn accept_loop(&self, deliver: impl Fn(Accepted)) {
        while self.gate.wait_for_permit() && self.gate.wait_readable(self.listener.fd()) {
            match self.listener.accept(Some(Duration::ZERO)) {
                Ok(fd) => {
                    self.gate.took_one();
                    deliver(Accepted::Conn(fd));
                }
                Err(e) if matches!(e.code(), Code::WouldBlock | Code::Timeout) => {}
                // Closed, leaving, or broken: JS hears why, the same way.
                Err(e) => {
                    deliver(Accepted::End(e.message().to_owned()));
                    return;
                }
            }
        }
    }
}

/// A listening address served through the primary. Connections are taken
/// by a Rust thread only while JS has granted permits, so a worker never
/// takes (and acknowledges) more than it said it can serve.
#[napi]
pub struct NativeListener {
    state: Arc<ListenerState>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl NativeListener {
    fn new(listener: Listener) -> Result<NativeListener> {
        Ok(NativeListener {
            state: Arc::new(ListenerState { listener, gate: Gate::new()?, started: AtomicBool::new(false) }),
            thread: Mutex::new(None),
        })
    }
}

#[napi]
impl NativeListener {
    /// The bound IP address.
    #[napi(getter)]
    pub fn address(&self) -> String {
        self.state.listener.address().ip().to_string()
    }

    /// The bound port (the OS-picked one when 0 was asked for).
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.state.listener.address().port() as u32
    }

    /// 4 or 6.
    #[napi(getter)]
    pub fn family(&self) -> u32 {
        if self.state.listener.address().is_ipv6() {
            6
        } else {
            4
        }
    }

    /// Whether this worker accepts on a shared socket itself (`shared` policy).
    #[napi(getter)]
    pub fn shared(&self) -> bool {
        self.state.listener.is_shared()
    }

    /// An fd readable when `acceptMany` may have a connection (for a `NativePoll`).
    #[napi(getter)]
    pub fn fd(&self) -> i32 {
        self.state.listener.fd()
    }

    /// Takes up to `max` connections already waiting, without waiting, on
    /// the JS thread (the polled alternative to `start`): their fds, now
    /// JS's to close, acknowledged to the primary together. An empty array
    /// when none is waiting; null when the listener gives no more
    /// (disconnecting, closed, primary gone).
    #[napi]
    pub fn accept_many(&self, max: u32) -> Result<Option<Vec<i32>>> {
        if self.state.started.load(Ordering::SeqCst) {
            return Err(Error::new(Status::GenericFailure, "the accept thread owns this listener"));
        }
        match self.state.listener.accept_many(max.max(1) as usize, Some(Duration::ZERO)) {
            Ok(fds) => Ok(Some(fds.into_iter().map(IntoRawFd::into_raw_fd).collect())),
            Err(e) if matches!(e.code(), Code::WouldBlock | Code::Timeout) => Ok(Some(Vec::new())),
            Err(_) => Ok(None),
        }
    }

    /// Starts the accept thread; each connection (or the end) goes to `onConn`.
    #[napi]
    pub fn start(&self, on_conn: Function<ConnEvent, ()>) -> Result<()> {
        if self.state.started.swap(true, Ordering::SeqCst) {
            return Err(Error::new(Status::GenericFailure, "already started"));
        }
        let state = self.state.clone();
        let handle = spawn_accept_thread("rcluster-node-accept", on_conn, move |deliver| state.accept_loop(deliver))?;
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(())
    }

    /// Lets the accept thread take `n` more connections.
    #[napi]
    pub fn grant(&self, n: u32) {
        self.state.gate.grant(n);
    }

    /// Stops taking connections: the ones queued here are refused and the
    /// primary gives them to other workers. Returns the permits the accept
    /// thread had not used (exact: the thread has ended when this returns;
    /// it only ever waits in poll or on the permit condvar, which `stop`
    /// wakes). Idempotent.
    #[napi]
    pub fn close(&self) -> u32 {
        let unused = self.stop_thread();
        self.state.listener.close();
        unused
    }

    /// Stops taking connections as `close` does, but keeps this listener's
    /// place among the worker's port-0 servers (a server paused at
    /// `maxConnections`): a port-0 server started meanwhile gets a port of
    /// its own. `resume` takes the address back; `close` gives the place
    /// up. Returns the unused permits, as `close` does.
    #[napi]
    pub fn pause(&self) -> u32 {
        let unused = self.stop_thread();
        self.state.listener.pause();
        unused
    }

    /// Listens again on this paused listener's address and port; the new
    /// listener takes over its port-0 place. On error this one keeps it.
    #[napi]
    pub fn resume(&self, js: &Env, timeout_ms: Option<u32>) -> Result<NativeListener> {
        let timeout = Duration::from_millis(timeout_ms.unwrap_or(30_000) as u64);
        let listener = self.state.listener.resume(Some(timeout)).map_err(js_error(js))?;
        NativeListener::new(listener)
    }

    /// Ends the accept thread, if any (exact: it only ever waits in poll or
    /// on the permit condvar, which `stop` wakes); returns the permits it
    /// had not used.
    fn stop_thread(&self) -> u32 {
        self.state.gate.stop();
        if let Some(handle) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
        self.state.gate.unused()
    }
}
