//! The primary side: a `rcluster::Primary` and the thread that forwards its
//! events to JS.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;
use rcluster::{Config, Event, Exit, PolicyKind, Primary, SpawnSpec};

use crate::to_js_error;

/// How the primary starts workers and schedules connections.
#[napi(object)]
pub struct PrimaryOptions {
    /// Program and arguments of every worker (`process.execPath`, execArgv, script, args).
    pub argv: Vec<String>,
    /// Working directory of the workers (default: inherited).
    pub cwd: Option<String>,
    /// `rr` (the primary accepts and hands connections over) or `shared`.
    pub policy: Option<String>,
    /// Connections a worker may hold handed-over but unacknowledged (default 8).
    pub max_unacked: Option<u32>,
    /// Connections the primary may queue before it stops accepting (default 1024).
    pub max_pending: Option<u32>,
    /// listen(2) backlog (default 511).
    pub backlog: Option<i32>,
    /// How long a worker asked to leave may take before SIGTERM, then SIGKILL (default 10 s).
    pub stop_timeout_ms: Option<u32>,
}

/// One event from the primary, flattened for JS: `kind` says which fields are set.
#[napi(object)]
pub struct ClusterEvent {
    /// fork, online, listening, message, disconnect, exit, error, shutdown.
    pub kind: String,
    pub worker: Option<u32>,
    pub pid: Option<i32>,
    /// listening: the bound IP address.
    pub address: Option<String>,
    /// listening: the bound port.
    pub port: Option<u32>,
    /// listening: 4 or 6.
    pub family: Option<u32>,
    /// message: the bytes the worker sent, as UTF-8 text (JSON).
    pub data: Option<String>,
    /// exit: the exit code, when it exited normally.
    pub code: Option<i32>,
    /// exit: the signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// exit: it had been asked to leave, or left on purpose.
    pub after_disconnect: Option<bool>,
    /// error: what the worker did wrong, or why the event stream ended.
    pub message: Option<String>,
}

impl ClusterEvent {
    fn new(kind: &str, worker: Option<u32>, pid: Option<i32>) -> ClusterEvent {
        ClusterEvent {
            kind: kind.to_owned(),
            worker,
            pid,
            address: None,
            port: None,
            family: None,
            data: None,
            code: None,
            signal: None,
            after_disconnect: None,
            message: None,
        }
    }

    fn from_event(event: Event) -> ClusterEvent {
        match event {
            Event::Fork { worker, pid } => ClusterEvent::new("fork", Some(worker), Some(pid)),
            Event::Online { worker, pid } => ClusterEvent::new("online", Some(worker), Some(pid)),
            Event::Listening {
                worker,
                pid,
                address,
            } => ClusterEvent {
                address: Some(address.ip().to_string()),
                port: Some(address.port() as u32),
                family: Some(if address.is_ipv6() { 6 } else { 4 }),
                ..ClusterEvent::new("listening", Some(worker), Some(pid))
            },
            Event::Message { worker, pid, data } => ClusterEvent {
                data: Some(String::from_utf8_lossy(&data).into_owned()),
                ..ClusterEvent::new("message", Some(worker), Some(pid))
            },
            Event::Disconnect { worker, pid } => {
                ClusterEvent::new("disconnect", Some(worker), Some(pid))
            }
            Event::Exit {
                worker,
                pid,
                exit,
                after_disconnect,
            } => {
                let (code, signal) = match exit {
                    Exit::Code(code) => (Some(code), None),
                    Exit::Signal(signal) => (None, Some(signal)),
                    Exit::Unknown => (None, None),
                };
                ClusterEvent {
                    code,
                    signal,
                    after_disconnect: Some(after_disconnect),
                    ..ClusterEvent::new("exit", Some(worker), Some(pid))
                }
            }
            Event::WorkerError {
                worker,
                pid,
                message,
            } => ClusterEvent {
                message: Some(message),
                ..ClusterEvent::new("error", Some(worker), Some(pid))
            },
            Event::Shutdown => ClusterEvent::new("shutdown", None, None),
        }
    }
}

/// Lets workers inherit this process's stdin, stdout and stderr.
///
/// Node marks fds 0-2 close-on-exec (its own child_process dup2s them into
/// children explicitly), and rcluster's spawn relies on plain inheritance,
/// so without this a Node primary's workers start with 0-2 closed and Node
/// reopens them on /dev/null: their output vanishes. Clearing the flag is
/// harmless for libuv's own children (uv_spawn dup2s their stdio). The
/// proper fix belongs in the core's spawn (clear FD_CLOEXEC on 0-2 in the
/// child, in pre_exec); see bindings/node/README.md.
fn inherit_stdio() {
    for fd in 0..=2 {
        // SAFETY: fcntl F_GETFD/F_SETFD on fds 0-2 with integer arguments;
        // a closed fd just makes the call fail.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
        }
    }
}

/// A started worker.
#[napi(object)]
pub struct ForkedWorker {
    pub id: u32,
    pub pid: i32,
}

/// A bound address.
#[napi(object)]
pub struct BoundAddress {
    pub address: String,
    pub port: u32,
    pub family: u32,
}

/// The primary: owns the listeners and the workers. Dispatch runs on the
/// library's own thread, never on the JS thread.
#[napi]
pub struct NativePrimary {
    inner: Arc<Primary>,
    started: bool,
}

#[napi]
impl NativePrimary {
    #[napi(constructor)]
    pub fn new(options: PrimaryOptions) -> Result<NativePrimary> {
        if options.argv.is_empty() {
            return Err(Error::new(
                Status::InvalidArg,
                "argv must name the worker program",
            ));
        }
        let defaults = Config::default();
        let policy = match options.policy.as_deref() {
            None => PolicyKind::RoundRobin,
            Some(name) => PolicyKind::from_name(name).map_err(to_js_error)?,
        };
        let config = Config {
            spawn: SpawnSpec {
                argv: options.argv.into_iter().map(OsString::from).collect(),
                cwd: options.cwd.map(OsString::from),
                ..defaults.spawn.clone()
            },
            policy,
            max_unacked: options.max_unacked.unwrap_or(defaults.max_unacked),
            max_pending: options.max_pending.unwrap_or(defaults.max_pending),
            backlog: options.backlog.unwrap_or(defaults.backlog),
            stop_timeout: options
                .stop_timeout_ms
                .map_or(defaults.stop_timeout, |ms| Duration::from_millis(ms as u64)),
            // Signals are the host's: index.js handles them with process.on,
            // which works the same in Node, Bun and Deno.
            handle_signals: false,
        };
        inherit_stdio();
        Ok(NativePrimary {
            inner: Arc::new(Primary::new(config).map_err(to_js_error)?),
            started: false,
        })
    }

    /// Starts forwarding events to `onEvent` (once). The forwarding thread
    /// blocks in `next_event` and ends after the `shutdown` event.
    #[napi]
    pub fn start(&mut self, on_event: Function<ClusterEvent, ()>) -> Result<()> {
        if self.started {
            return Err(Error::new(Status::GenericFailure, "already started"));
        }
        let tsfn = on_event
            .build_threadsafe_function::<ClusterEvent>()
            .weak::<true>()
            .callee_handled::<false>()
            .build_callback(|ctx| Ok(ctx.value))?;
        let primary = self.inner.clone();
        std::thread::Builder::new()
            .name("rcluster-node-primary-events".into())
            .spawn(move || loop {
                match primary.next_event(None) {
                    Ok(Some(event)) => {
                        let last = matches!(event, Event::Shutdown);
                        tsfn.call(
                            ClusterEvent::from_event(event),
                            ThreadsafeFunctionCallMode::NonBlocking,
                        );
                        if last {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tsfn.call(
                            ClusterEvent {
                                message: Some(e.message().to_owned()),
                                ..ClusterEvent::new("error", None, None)
                            },
                            ThreadsafeFunctionCallMode::NonBlocking,
                        );
                        return;
                    }
                }
            })
            .map_err(|e| Error::from_reason(format!("spawning the event thread: {e}")))?;
        self.started = true;
        Ok(())
    }

    /// Starts a worker with `env` added to its environment.
    #[napi]
    pub fn fork(&self, env: HashMap<String, String>) -> Result<ForkedWorker> {
        let env = env
            .into_iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        let info = self.inner.fork(env).map_err(to_js_error)?;
        Ok(ForkedWorker {
            id: info.id,
            pid: info.pid,
        })
    }

    /// Binds a listener up front; workers asking for the same address share it.
    #[napi]
    pub fn listen(&self, host: String, port: u32) -> Result<BoundAddress> {
        let port = u16::try_from(port)
            .map_err(|_| Error::new(Status::InvalidArg, format!("bad port {port}")))?;
        let address = self.inner.listen(&host, port).map_err(to_js_error)?;
        Ok(BoundAddress {
            address: address.ip().to_string(),
            port: address.port() as u32,
            family: if address.is_ipv6() { 6 } else { 4 },
        })
    }

    /// Sends a message (UTF-8 text) to a worker.
    #[napi]
    pub fn send(&self, worker: u32, data: String) -> Result<()> {
        self.inner.send(worker, data.as_bytes()).map_err(to_js_error)
    }

    /// Asks a worker to finish what it holds and leave.
    #[napi]
    pub fn disconnect(&self, worker: u32) -> Result<()> {
        self.inner.disconnect(worker).map_err(to_js_error)
    }

    /// Sends a signal to a worker's process.
    #[napi]
    pub fn kill(&self, worker: u32, signal: i32) -> Result<()> {
        self.inner.kill(worker, signal).map_err(to_js_error)
    }

    /// Graceful shutdown of the whole cluster; ends with a `shutdown` event.
    #[napi]
    pub fn shutdown(&self, grace_ms: u32) -> Result<()> {
        self.inner
            .shutdown(Duration::from_millis(grace_ms as u64))
            .map_err(to_js_error)
    }

    /// Whether the shutdown is complete.
    #[napi(getter)]
    pub fn stopped(&self) -> bool {
        self.inner.is_stopped()
    }
}
