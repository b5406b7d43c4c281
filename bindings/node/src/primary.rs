//! The primary side: a `rcluster::Primary` and the thread that forwards its
//! events to JS.

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;
use rcluster::{
    Config, Event, Exit, PolicyKind, Primary, SpawnOverrides, SpawnSpec, StdioMode, Supervision, WorkerStats,
};

use crate::js_error;

/// How the primary starts workers and schedules connections: `argv` and
/// `policy` from index.js, the rest `cluster.setupPrimary()`'s settings as
/// the app gave them (index.d.ts's `ClusterSettings` extends this
/// interface: the settings are defined here once). Durations are in
/// milliseconds; unset means the core's default unless said otherwise.
#[napi(object)]
pub struct PrimaryOptions {
    /// Program and arguments of every worker (`process.execPath`, execArgv, script, args).
    pub argv: Vec<String>,
    /// Working directory of the workers (default: inherited).
    pub cwd: Option<String>,
    /// `rr`, `shared`, `reuseport` or `least` (index.js maps `schedulingPolicy`).
    pub policy: Option<String>,
    /// Connections a worker may hold handed-over but unacknowledged. Default 8.
    pub max_unacked: Option<u32>,
    /// Connections the primary queues before it stops accepting. Default 1024.
    pub max_pending: Option<u32>,
    /// listen(2) backlog. Default 511.
    pub backlog: Option<i32>,
    /// How long a worker asked to leave may take before SIGTERM, then SIGKILL. Default 10000.
    pub stop_timeout: Option<f64>,
    /// Replace a worker that exits without being asked to. Default false:
    /// Node's cluster never restarts workers (the core's own default is on).
    pub restart: Option<bool>,
    /// First restart delay. Default 100.
    pub restart_delay: Option<f64>,
    /// Longest restart delay. Default 10000.
    pub restart_delay_max: Option<f64>,
    /// Each unexpected exit multiplies the delay by this. Default 2.
    pub restart_backoff: Option<f64>,
    /// A worker that ran this long resets the restart delay. Default 5000.
    pub stable_after: Option<f64>,
    /// This many unexpected exits within crashLoopWindow stop a slot's restarts ('crash_loop'). Default 5.
    pub crash_loop_count: Option<u32>,
    /// See crashLoopCount. Default 30000.
    pub crash_loop_window: Option<f64>,
    /// How long a replacement (reload, recycling) has to become ready. Default 30000.
    pub ready_timeout: Option<f64>,
    /// Ready means cluster.worker.ready() was called, not the first listen. Default false.
    pub wait_ready: Option<bool>,
    /// Workers replaced at once during reload(). Default 1.
    pub reload_concurrency: Option<u32>,
    /// Ping workers this often; 0 or unset: no heartbeat.
    pub heartbeat_interval: Option<f64>,
    /// A worker silent this long is killed and replaced ('unresponsive'). Default 30000.
    pub heartbeat_timeout: Option<f64>,
    /// Replace a worker after it was handed this many connections (rr, least). Default 0: never.
    pub recycle_after: Option<i64>,
    /// Up to this many connections added at random to recycleAfter. Default 0.
    pub recycle_jitter: Option<i64>,
    /// Replace a worker gracefully once its resident memory passes this many bytes (checked every second). Default: no limit.
    pub max_memory: Option<f64>,
    /// 'HOST:PORT' to serve Prometheus metrics (GET /metrics) and GET /healthz on. Default: none.
    pub metrics_address: Option<String>,
}

/// A duration in milliseconds from JS (rounded; negative is 0).
fn millis(ms: Option<f64>, default: Duration) -> Duration {
    ms.map_or(default, |ms| Duration::from_millis(ms.max(0.0).round() as u64))
}

fn supervision(options: &PrimaryOptions) -> Supervision {
    let d = Supervision::default();
    Supervision {
        restart: options.restart.unwrap_or(false),
        restart_delay: millis(options.restart_delay, d.restart_delay),
        restart_delay_max: millis(options.restart_delay_max, d.restart_delay_max),
        restart_backoff: options.restart_backoff.unwrap_or(d.restart_backoff),
        stable_after: millis(options.stable_after, d.stable_after),
        crash_loop_count: options.crash_loop_count.unwrap_or(d.crash_loop_count),
        crash_loop_window: millis(options.crash_loop_window, d.crash_loop_window),
        ready_timeout: millis(options.ready_timeout, d.ready_timeout),
        wait_ready: options.wait_ready.unwrap_or(d.wait_ready),
        reload_concurrency: options.reload_concurrency.unwrap_or(d.reload_concurrency),
        heartbeat_interval: options
            .heartbeat_interval
            .filter(|&ms| ms > 0.0)
            .map(|ms| millis(Some(ms), Duration::ZERO))
            .or(d.heartbeat_interval),
        heartbeat_timeout: millis(options.heartbeat_timeout, d.heartbeat_timeout),
        recycle_after: options.recycle_after.map_or(d.recycle_after, |n| n.max(0) as u64),
        recycle_jitter: options.recycle_jitter.map_or(d.recycle_jitter, |n| n.max(0) as u64),
        // Bytes from JS, whole MiB rounded up in the core's terms as before.
        max_memory: options
            .max_memory
            .filter(|&bytes| bytes > 0.0)
            .map(|bytes| (bytes / 1048576.0).ceil() as u64 * 1024 * 1024)
            .or(d.max_memory),
    }
}

/// One event from the primary, flattened for JS: `kind` says which fields are set.
#[napi(object)]
pub struct ClusterEvent {
    /// The kind's name in the core's table (`eventKinds()`): fork, online,
    /// listening, message, disconnect, exit, worker_error, crash_loop...
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
    /// exit: the primary asked it to go (stop, scale, reload, shutdown).
    pub stop_requested: Option<bool>,
    /// worker_error, spawn_failed, reload_failed, upgrade_failed: what went wrong.
    pub message: Option<String>,
    /// fork, crash_loop, spawn_failed: the worker's slot (none for a raw fork).
    pub slot: Option<u32>,
    /// fork, reload_done, reload_failed: the reload generation.
    pub generation: Option<u32>,
    /// message: the file descriptors that came with it, owned by JS from
    /// here (lib/handles.js wraps or closes each).
    pub fds: Option<Vec<i32>>,
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
            stop_requested: None,
            message: None,
            slot: None,
            generation: None,
            fds: None,
        }
    }

    fn from_event(event: Event) -> ClusterEvent {
        let kind = event.kind().name();
        match event {
            Event::Fork { worker, pid, slot, generation } => {
                ClusterEvent { slot, generation: Some(generation), ..ClusterEvent::new(kind, Some(worker), Some(pid)) }
            }
            Event::Online { worker, pid } => ClusterEvent::new(kind, Some(worker), Some(pid)),
            Event::Listening { worker, pid, address } => ClusterEvent {
                address: Some(address.ip().to_string()),
                port: Some(address.port() as u32),
                family: Some(if address.is_ipv6() { 6 } else { 4 }),
                ..ClusterEvent::new(kind, Some(worker), Some(pid))
            },
            Event::Message { worker, pid, data, fds } => ClusterEvent {
                data: Some(String::from_utf8_lossy(&data).into_owned()),
                fds: crate::fds_to_js(fds),
                ..ClusterEvent::new(kind, Some(worker), Some(pid))
            },
            Event::Disconnect { worker, pid } => ClusterEvent::new(kind, Some(worker), Some(pid)),
            Event::Exit { worker, pid, exit, after_disconnect, stop_requested } => {
                let (code, signal) = match exit {
                    Exit::Code(code) => (Some(code), None),
                    Exit::Signal(signal) => (None, Some(signal)),
                    Exit::Unknown => (None, None),
                };
                ClusterEvent {
                    code,
                    signal,
                    after_disconnect: Some(after_disconnect),
                    stop_requested: Some(stop_requested),
                    ..ClusterEvent::new(kind, Some(worker), Some(pid))
                }
            }
            Event::WorkerError { worker, pid, message } => {
                ClusterEvent { message: Some(message), ..ClusterEvent::new(kind, Some(worker), Some(pid)) }
            }
            Event::CrashLoop { slot, worker, pid } => {
                ClusterEvent { slot: Some(slot), ..ClusterEvent::new(kind, Some(worker), Some(pid)) }
            }
            Event::Unresponsive { worker, pid } => ClusterEvent::new(kind, Some(worker), Some(pid)),
            Event::SpawnFailed { slot, message } => {
                ClusterEvent { slot: Some(slot), message: Some(message), ..ClusterEvent::new(kind, None, None) }
            }
            Event::ReloadDone { generation } => {
                ClusterEvent { generation: Some(generation), ..ClusterEvent::new(kind, None, None) }
            }
            Event::ReloadFailed { generation, message } => ClusterEvent {
                generation: Some(generation),
                message: Some(message),
                ..ClusterEvent::new(kind, None, None)
            },
            Event::Upgraded { pid } => ClusterEvent::new(kind, None, Some(pid)),
            Event::UpgradeFailed { message } => {
                ClusterEvent { message: Some(message), ..ClusterEvent::new(kind, None, None) }
            }
            Event::Shutdown => ClusterEvent::new(kind, None, None),
        }
    }
}

/// A started worker.
#[napi(object)]
pub struct ForkedWorker {
    pub id: u32,
    pub pid: i32,
    /// The primary's ends of the worker's piped stdin, stdout, stderr
    /// (fds JS now owns), where `stdio` asked for a pipe.
    pub stdin: Option<i32>,
    pub stdout: Option<i32>,
    pub stderr: Option<i32>,
}

/// Node's stdio names for a worker's first three streams.
fn stdio_mode(name: &str) -> Result<StdioMode> {
    match name {
        "inherit" => Ok(StdioMode::Inherit),
        "pipe" => Ok(StdioMode::Pipe),
        "ignore" => Ok(StdioMode::Null),
        other => Err(Error::new(
            Status::InvalidArg,
            format!("rcluster: stdio {other:?} is not supported for a worker's stdin, stdout or stderr (use 'pipe', 'inherit' or 'ignore')"),
        )),
    }
}

/// One worker's numbers (`cluster.stats()`).
#[napi(object)]
pub struct WorkerStatsJs {
    pub id: u32,
    pub pid: i32,
    pub slot: Option<u32>,
    /// starting, online, listening, leaving, disconnected.
    pub state: String,
    pub generation: u32,
    /// Connections handed to it so far.
    pub dispatched: i64,
    /// Handed over, not yet acknowledged.
    pub in_flight: u32,
    /// Taken and not yet reported finished (counted under `least` only).
    pub active: u32,
    /// How many workers its slot had to restart.
    pub restarts: u32,
    pub uptime_ms: f64,
    /// CPU time of its process (user + system, from /proc), in ms.
    pub cpu_ms: f64,
    /// Its resident memory, in bytes (from /proc).
    pub rss_bytes: f64,
    /// Application messages it sent the primary, and the primary sent it.
    pub messages_in: f64,
    pub messages_out: f64,
}

impl From<WorkerStats> for WorkerStatsJs {
    fn from(s: WorkerStats) -> WorkerStatsJs {
        WorkerStatsJs {
            id: s.id,
            pid: s.pid,
            slot: s.slot,
            state: s.state.name().to_owned(),
            generation: s.generation,
            dispatched: s.dispatched.min(i64::MAX as u64) as i64,
            in_flight: s.in_flight,
            active: s.active,
            restarts: s.restarts,
            uptime_ms: s.uptime.as_secs_f64() * 1000.0,
            cpu_ms: s.cpu.as_secs_f64() * 1000.0,
            rss_bytes: s.rss_bytes as f64,
            messages_in: s.messages_in as f64,
            messages_out: s.messages_out as f64,
        }
    }
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
    pub fn new(js: &Env, options: PrimaryOptions) -> Result<NativePrimary> {
        if options.argv.is_empty() {
            return Err(Error::new(Status::InvalidArg, "argv must name the worker program"));
        }
        let defaults = Config::default();
        let supervision = supervision(&options);
        let policy = match options.policy.as_deref() {
            None => PolicyKind::RoundRobin,
            Some(name) => PolicyKind::from_name(name).map_err(js_error(js))?,
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
            stop_timeout: millis(options.stop_timeout, defaults.stop_timeout),
            // Signals are the host's: index.js handles them with process.on,
            // which works the same in Node, Bun and Deno.
            handle_signals: false,
            supervision,
            metrics_address: options.metrics_address.clone(),
            // As in Node, a worker's process.send(message, handle) reaches
            // the primary with its handle (lib/handles.js).
            message_fds: true,
            ..defaults
        };
        Ok(NativePrimary { inner: Arc::new(Primary::new(config).map_err(js_error(js))?), started: false })
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
                        tsfn.call(ClusterEvent::from_event(event), ThreadsafeFunctionCallMode::NonBlocking);
                        if last {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tsfn.call(
                            ClusterEvent {
                                message: Some(e.message().to_owned()),
                                // No worker: index.js reports it as a warning.
                                ..ClusterEvent::new(rcluster::EventKind::WorkerError.name(), None, None)
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

    /// Starts a worker with `env` added to its environment; `argv` and `cwd`,
    /// when given, in place of the primary's (Node's `setupPrimary` between forks).
    #[napi]
    pub fn fork(
        &self,
        js: &Env,
        env: HashMap<String, String>,
        argv: Option<Vec<String>>,
        cwd: Option<String>,
        stdio: Option<Vec<String>>,
    ) -> Result<ForkedWorker> {
        let stdio = match stdio {
            None => None,
            Some(names) if names.len() == 3 => {
                Some([stdio_mode(&names[0])?, stdio_mode(&names[1])?, stdio_mode(&names[2])?])
            }
            Some(names) => {
                return Err(Error::new(Status::InvalidArg, format!("stdio needs 3 entries, got {}", names.len())))
            }
        };
        let env = env.into_iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        let overrides = SpawnOverrides {
            argv: argv.map(|argv| argv.into_iter().map(OsString::from).collect()),
            cwd: cwd.map(OsString::from),
            stdio,
        };
        let (info, [stdin, stdout, stderr]) = self.inner.fork_with(env, overrides).map_err(js_error(js))?;
        let raw = |fd: Option<std::os::fd::OwnedFd>| fd.map(std::os::fd::IntoRawFd::into_raw_fd);
        Ok(ForkedWorker { id: info.id, pid: info.pid, stdin: raw(stdin), stdout: raw(stdout), stderr: raw(stderr) })
    }

    /// Binds a listener up front; workers asking for the same address share it.
    #[napi]
    pub fn listen(&self, js: &Env, host: String, port: u32) -> Result<BoundAddress> {
        let port = u16::try_from(port).map_err(|_| Error::new(Status::InvalidArg, format!("bad port {port}")))?;
        let address = self.inner.listen(&host, port).map_err(js_error(js))?;
        Ok(BoundAddress {
            address: address.ip().to_string(),
            port: address.port() as u32,
            family: if address.is_ipv6() { 6 } else { 4 },
        })
    }

    /// Sends a message (UTF-8 text) to a worker.
    #[napi]
    pub fn send(&self, js: &Env, worker: u32, data: String) -> Result<()> {
        self.inner.send(worker, data.as_bytes()).map_err(js_error(js))
    }

    /// Sends a message with file descriptors attached; the caller keeps
    /// them (the library sends duplicates).
    #[napi]
    pub fn send_fds(&self, js: &Env, worker: u32, data: String, fds: Vec<i32>) -> Result<()> {
        let fds = crate::borrow_fds(&fds).map_err(js_error(js))?;
        self.inner.send_fds(worker, data.as_bytes(), &fds).map_err(js_error(js))
    }

    /// Asks a worker to finish what it holds and leave.
    #[napi]
    pub fn disconnect(&self, js: &Env, worker: u32) -> Result<()> {
        self.inner.disconnect(worker).map_err(js_error(js))
    }

    /// Closes a worker's channel at once (Node's `worker.process.disconnect()`).
    #[napi]
    pub fn hang_up(&self, js: &Env, worker: u32) -> Result<()> {
        self.inner.hang_up(worker).map_err(js_error(js))
    }

    /// Sends a signal to a worker's process.
    #[napi]
    pub fn kill(&self, js: &Env, worker: u32, signal: i32) -> Result<()> {
        self.inner.kill(worker, signal).map_err(js_error(js))
    }

    /// Graceful shutdown of the whole cluster; ends with a `shutdown` event.
    #[napi]
    pub fn shutdown(&self, js: &Env, grace_ms: u32) -> Result<()> {
        self.inner.shutdown(Duration::from_millis(grace_ms as u64)).map_err(js_error(js))
    }

    /// Starts a rolling reload; returns the generation the new workers carry.
    /// A `reload` (or `reloadfailed`) event with that generation follows.
    #[napi]
    pub fn reload(&self, js: &Env) -> Result<u32> {
        self.inner.reload().map_err(js_error(js))
    }

    /// Sets the number of worker slots: starts workers, or stops the newest gracefully.
    #[napi]
    pub fn scale(&self, js: &Env, workers: u32) -> Result<()> {
        self.inner.scale(workers).map_err(js_error(js))
    }

    /// A snapshot of every worker the primary knows.
    #[napi]
    pub fn stats(&self, js: &Env) -> Result<Vec<WorkerStatsJs>> {
        Ok(self.inner.metrics().map_err(js_error(js))?.workers.into_iter().map(WorkerStatsJs::from).collect())
    }

    /// Whether the shutdown is complete.
    #[napi(getter)]
    pub fn stopped(&self) -> bool {
        self.inner.is_stopped()
    }
}
