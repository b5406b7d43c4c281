//! One app: what the user asked for ([`AppSpec`]) and the [`rcluster::Primary`]
//! that runs it ([`App`]). `run` hosts one App in the foreground, the daemon
//! hosts many.
//!
//! # Two ways of getting connections
//!
//! - **Without `--listen`** the program uses rcluster (C, Rust, Python, Node):
//!   its own `listen` is served by this primary, with the policy asked for
//!   (`rr` by default). Ready means its first listen (or its `ready()` with
//!   `wait_ready`), as from any primary.
//! - **With `--listen`** the program need not know rcluster: every worker is
//!   started through `rcluster exec-worker` (see `exec.rs`), which asks this
//!   primary for the sockets through the library (policy `shared`, or
//!   `reuseport`), puts them at fds 3, 4, ... (non-blocking) with `LISTEN_FDS`,
//!   `LISTEN_PID` (its own pid, which the program keeps) and
//!   `LISTEN_FDNAMES`, the rcluster channel right above them, and execs the
//!   program. The library sees that listen, so the worker counts as ready
//!   once it holds the sockets, just before the program starts; rcluster
//!   cannot see when the program itself accepts. So a worker being replaced
//!   (reload) keeps accepting on the same socket until its replacement has
//!   run for `reload_grace`, and only then gets SIGTERM (from the monitor
//!   thread below; the program ignores rcluster's disconnect message). Both
//!   accept from one kernel queue, so a connection waits there until one of
//!   them takes it: nothing is refused or lost as long as the grace covers
//!   the program's start. A worker that is stopped for good (stop, scale
//!   down, shutdown) gets SIGTERM at once.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rcluster::{Config, Event, Exit, PolicyKind, Primary, WorkerState, WorkerStats};
use serde::{Deserialize, Serialize};

use crate::cli::AppArgs;
use crate::{fail, Fail, Res};

/// How often the monitor looks at the workers (leaving ones, CPU).
const TICK: Duration = Duration::from_millis(100);

/// Everything that defines an app. Sent from the CLI to the daemon as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppSpec {
    pub name: String,
    pub cmd: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub instances: u32,
    pub listen: Vec<ListenSpec>,
    pub policy: String,
    pub restart: bool,
    pub restart_delay_ms: u64,
    pub restart_delay_max_ms: u64,
    pub crash_loop_count: u32,
    pub reload_grace_ms: u64,
    pub reload_concurrency: u32,
    pub stop_timeout_ms: u64,
    pub ready_timeout_ms: u64,
    pub wait_ready: bool,
    /// The environment the workers start from instead of this process's:
    /// `rcluster start` sends the CLI's, so an app started from a shell
    /// (an activated virtualenv, a PATH) runs as it would there, not with
    /// the daemon's. Empty: inherit this process's (`run`).
    #[serde(default)]
    pub base_env: BTreeMap<String, String>,
}

/// One `--listen` address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListenSpec {
    /// Its name in LISTEN_FDNAMES.
    pub name: String,
    pub host: String,
    pub port: u16,
}

impl Default for AppSpec {
    fn default() -> AppSpec {
        AppSpec {
            name: "app".into(),
            cmd: Vec::new(),
            cwd: None,
            env: BTreeMap::new(),
            instances: 1,
            listen: Vec::new(),
            policy: String::new(),
            restart: true,
            restart_delay_ms: 100,
            restart_delay_max_ms: 10_000,
            crash_loop_count: 5,
            reload_grace_ms: 2000,
            reload_concurrency: 1,
            stop_timeout_ms: 10_000,
            ready_timeout_ms: 30_000,
            wait_ready: false,
            base_env: BTreeMap::new(),
        }
    }
}

/// `N` or `max` (one per CPU).
pub fn parse_instances(text: &str) -> Res<u32> {
    if text == "max" {
        return Ok(std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    }
    match text.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Fail(format!("bad instance count {text:?}: a number from 1, or max"))),
    }
}

/// `500ms`, `2s`, `1.5` (seconds), `1m`.
pub fn parse_duration(text: &str) -> Res<Duration> {
    let (number, unit) = match text.trim() {
        t if t.ends_with("ms") => (&t[..t.len() - 2], 0.001),
        t if t.ends_with('s') => (&t[..t.len() - 1], 1.0),
        t if t.ends_with('m') => (&t[..t.len() - 1], 60.0),
        t => (t, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v * unit)),
        _ => Err(Fail(format!("bad duration {text:?}: e.g. 500ms, 2s, 1m"))),
    }
}

/// `[NAME=]HOST:PORT`, `[NAME=]PORT` (all interfaces), `[::1]:PORT`.
pub fn parse_listen(text: &str, index: usize) -> Res<ListenSpec> {
    let (name, address) = match text.split_once('=') {
        Some((name, address)) => (name.to_owned(), address),
        None => (format!("listen{index}"), text),
    };
    if name.is_empty() || name.contains(':') || !name.is_ascii() {
        fail!("bad listen name {name:?}: ASCII, no ':'");
    }
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port),
        None => ("0.0.0.0".to_owned(), address),
    };
    let host = if host.is_empty() { "0.0.0.0".to_owned() } else { host };
    let Ok(port) = port.parse::<u16>() else { fail!("bad listen address {text:?}: HOST:PORT, e.g. 127.0.0.1:8080") };
    rcluster::parse_address(&host, port).map_err(|e| Fail(format!("bad listen address {text:?}: {e}")))?;
    Ok(ListenSpec { name, host, port })
}

impl AppSpec {
    /// Makes the workers start from this process's environment (see `base_env`).
    pub fn capture_env(&mut self) {
        // Not the variables of a protocol between this CLI and whoever started it.
        const NOT_CARRIED: [&str; 6] = [
            rcluster::ENV_WORKER_ID,
            rcluster::ENV_CHANNEL_FD,
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
        ];
        self.base_env = std::env::vars().filter(|(k, _)| !NOT_CARRIED.contains(&k.as_str())).collect();
    }

    /// From the command line (`run`, `start NAME`).
    pub fn from_args(name: &str, args: &AppArgs) -> Res<AppSpec> {
        let mut spec = AppSpec { name: name.to_owned(), cmd: args.cmd.clone(), ..AppSpec::default() };
        if let Some(n) = &args.instances {
            spec.instances = parse_instances(n)?;
        }
        for (i, listen) in args.listen.iter().enumerate() {
            spec.listen.push(parse_listen(listen, i)?);
        }
        spec.policy = args.policy.clone().unwrap_or_default();
        spec.cwd = match &args.cwd {
            Some(cwd) => Some(std::path::absolute(cwd)?),
            None => Some(std::env::current_dir()?),
        };
        for pair in &args.env {
            let Some((key, value)) = pair.split_once('=') else { fail!("bad --env {pair:?}: KEY=VALUE") };
            spec.env.insert(key.to_owned(), value.to_owned());
        }
        if let Some(d) = &args.reload_grace {
            spec.reload_grace_ms = parse_duration(d)?.as_millis() as u64;
        }
        if let Some(d) = &args.stop_timeout {
            spec.stop_timeout_ms = parse_duration(d)?.as_millis() as u64;
        }
        if let Some(d) = &args.ready_timeout {
            spec.ready_timeout_ms = parse_duration(d)?.as_millis() as u64;
        }
        spec.wait_ready = args.wait_ready;
        spec.restart = !args.no_restart;
        Ok(spec)
    }

    /// The policy, defaulted by the way connections are given.
    pub fn policy(&self) -> Res<PolicyKind> {
        if self.policy.is_empty() {
            return Ok(if self.listen.is_empty() { PolicyKind::RoundRobin } else { PolicyKind::Shared });
        }
        let policy = PolicyKind::from_name(&self.policy)?;
        if !self.listen.is_empty() && matches!(policy, PolicyKind::RoundRobin | PolicyKind::LeastLoaded) {
            fail!(
                "--policy {} needs a program that uses rcluster; with --listen the workers accept themselves (shared or reuseport)",
                self.policy
            );
        }
        Ok(policy)
    }

    /// Checks what can be checked before anything starts.
    pub fn validate(&self) -> Res<()> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            fail!("bad app name {:?}: letters, digits, '-', '_', '.'", self.name);
        }
        if self.cmd.is_empty() {
            fail!("missing command: give it after `--`, e.g. rcluster run -i 2 -- python3 app.py");
        }
        if self.instances == 0 {
            fail!("instances must be at least 1");
        }
        self.policy()?;
        if let Some(cwd) = &self.cwd {
            if !cwd.is_dir() {
                fail!("working directory {} does not exist", cwd.display());
            }
        }
        let path = self.env.get("PATH").or_else(|| self.base_env.get("PATH"));
        find_program(&self.cmd[0], self.cwd.as_deref(), path.map(String::as_str))?;
        Ok(())
    }
}

/// Where `program` would be run from, or a one-line error.
fn find_program(program: &str, cwd: Option<&Path>, path: Option<&str>) -> Res<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let full = match cwd {
            Some(cwd) => cwd.join(program),
            None => PathBuf::from(program),
        };
        if executable(&full) {
            return Ok(full);
        }
        fail!("command not found or not executable: {program}");
    }
    let path = path.map(str::to_owned).or_else(|| std::env::var("PATH").ok()).unwrap_or_default();
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let full = Path::new(dir).join(program);
        if executable(&full) {
            return Ok(full);
        }
    }
    fail!("command not found: {program}")
}

/// Where an app's messages go: `(app name, text)`.
pub type Say = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// How an app is hosted: where its messages go, whether the library handles
/// the signals, where workers' output goes.
#[derive(Clone)]
pub struct Hosting {
    /// The library handles SIGTERM/SIGINT/SIGHUP/SIGTTIN/SIGTTOU (`run`).
    pub handle_signals: bool,
    /// The library speaks systemd's protocols for this process (`run`: a
    /// socket passed by systemd for a `--listen` address is used instead of
    /// a bind, readiness goes to `NOTIFY_SOCKET`). Off in the daemon, whose
    /// apps are not the service systemd started.
    pub systemd: bool,
    /// The daemon's log socket: workers' stdout and stderr go there.
    pub log_socket: Option<PathBuf>,
    /// Where the app's own messages (worker started, exited, ...) go.
    pub say: Say,
}

/// One worker, as `ls` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerRow {
    pub id: u32,
    pub pid: i32,
    pub state: String,
    pub generation: u32,
    pub restarts: u32,
    pub uptime_ms: u64,
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    pub dispatched: u64,
}

/// What the monitor thread keeps.
#[derive(Default)]
struct Watch {
    /// Reloads that ended: generation, and the failure message if any.
    reloads: Vec<(u32, Option<String>)>,
    shut_down: bool,
    stats: Vec<WorkerStats>,
    /// pid -> (CPU ticks, when read, percent over the last interval).
    cpu: HashMap<i32, (u64, Instant, f64)>,
    /// Workers asked to leave (inherited-socket apps), and whether a newer
    /// worker was ever seen in their slot since.
    leaving: HashMap<u32, bool>,
    /// Workers that got their SIGTERM from us.
    terminated: Vec<u32>,
    /// Unexpected exits so far.
    crashes: u32,
    /// Addresses workers listen on through the library (and `--listen` ones).
    listening: std::collections::BTreeSet<String>,
}

/// A running app: the primary and the thread watching its events.
pub struct App {
    pub spec: AppSpec,
    primary: Arc<Primary>,
    /// The addresses bound for `--listen`.
    pub addresses: Vec<SocketAddr>,
    pub started: SystemTime,
    watch: Arc<(Mutex<Watch>, Condvar)>,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

impl App {
    /// Binds the app's addresses and starts its workers. On error nothing
    /// is left running: the primary's drop stops what it started.
    pub fn start(spec: AppSpec, hosting: Hosting) -> Res<Arc<App>> {
        spec.validate()?;
        let policy = spec.policy()?;
        let mut config =
            Config { policy, handle_signals: hosting.handle_signals, systemd: hosting.systemd, ..Config::default() };
        config.spawn.argv = worker_argv(&spec, hosting.log_socket.as_deref())?.into_iter().map(Into::into).collect();
        config.spawn.clear_env = !spec.base_env.is_empty();
        config.spawn.env = spec.base_env.iter().chain(&spec.env).map(|(k, v)| (k.into(), v.into())).collect();
        config.spawn.cwd = spec.cwd.clone().map(Into::into);
        config.stop_timeout = Duration::from_millis(spec.stop_timeout_ms);
        let supervision = &mut config.supervision;
        supervision.restart = spec.restart;
        supervision.restart_delay = Duration::from_millis(spec.restart_delay_ms);
        supervision.restart_delay_max = Duration::from_millis(spec.restart_delay_max_ms.max(spec.restart_delay_ms));
        supervision.crash_loop_count = spec.crash_loop_count.max(1);
        supervision.ready_timeout = Duration::from_millis(spec.ready_timeout_ms);
        supervision.wait_ready = spec.wait_ready && spec.listen.is_empty();
        supervision.reload_concurrency = spec.reload_concurrency.max(1);
        let primary = Arc::new(Primary::new(config)?);
        let mut addresses = Vec::new();
        for listen in &spec.listen {
            let address = primary.listen(&listen.host, listen.port).map_err(|e| {
                Fail(format!("cannot listen on {}:{}: {}", listen.host, listen.port, e.to_string().to_lowercase()))
            })?;
            addresses.push(address);
        }
        for _ in 0..spec.instances {
            primary.fork(Vec::new())?;
        }
        let watch = Arc::new((Mutex::new(Watch::default()), Condvar::new()));
        let app = Arc::new(App {
            spec,
            primary,
            addresses,
            started: SystemTime::now(),
            watch: watch.clone(),
            monitor: Mutex::new(None),
        });
        let monitor = Monitor {
            primary: app.primary.clone(),
            name: app.spec.name.clone(),
            inherited: !app.spec.listen.is_empty(),
            grace: Duration::from_millis(app.spec.reload_grace_ms),
            say: hosting.say.clone(),
            watch,
        };
        let handle = std::thread::Builder::new()
            .name(format!("rcluster-monitor-{}", app.spec.name))
            .spawn(move || monitor.run())
            .map_err(|e| Fail(format!("starting the monitor thread: {e}")))?;
        *app.monitor.lock().unwrap() = Some(handle);
        let listening: Vec<String> = app.addresses.iter().map(|a| a.to_string()).collect();
        let how = if listening.is_empty() { "the program's own listen".to_owned() } else { listening.join(" ") };
        (hosting.say)(
            &app.spec.name,
            &format!(
                "started {} worker(s) of `{}` ({}, policy {})",
                app.spec.instances,
                app.spec.cmd.join(" "),
                how,
                policy.name()
            ),
        );
        Ok(app)
    }

    /// Rolling reload; returns when every worker was replaced and the old
    /// ones are gone, or with the reason it failed.
    pub fn reload(&self) -> Res<String> {
        let crashes_before = self.crashes();
        let generation = self.primary.reload()?;
        let spec = &self.spec;
        let ready_budget = Duration::from_millis(spec.ready_timeout_ms) * (self.instance_count() + 1);
        let (lock, cond) = &*self.watch;
        let mut watch = lock.lock().unwrap();
        let deadline = Instant::now() + ready_budget + Duration::from_secs(5);
        loop {
            if let Some((_, failure)) = watch.reloads.iter().find(|(g, _)| *g >= generation) {
                if let Some(message) = failure {
                    return Err(Fail(format!("reload of {} failed: {message}", spec.name)));
                }
                break;
            }
            if watch.shut_down {
                fail!("reload of {} failed: the app stopped", spec.name);
            }
            let now = Instant::now();
            if now >= deadline {
                fail!("reload of {} failed: no answer within {:?}", spec.name, ready_budget);
            }
            watch = cond.wait_timeout(watch, deadline - now).unwrap().0;
        }
        // Done: wait until the workers it replaced have left.
        let stop = Duration::from_millis(spec.stop_timeout_ms) * 2 + Duration::from_millis(spec.reload_grace_ms);
        let deadline = Instant::now() + stop + Duration::from_secs(2);
        loop {
            let old = watch.stats.iter().filter(|s| s.generation < generation).count();
            if old == 0 {
                let n = watch.stats.len();
                let crashed = watch.crashes - crashes_before;
                if crashed > 0 {
                    // Counted ready (inherited sockets: once they held them), then died.
                    fail!(
                        "reload of {}: the new workers exited unexpectedly {crashed} time(s) (rcluster logs {})",
                        spec.name,
                        spec.name
                    );
                }
                return Ok(format!("reloaded {}: {n} worker(s) of generation {generation}", spec.name));
            }
            let now = Instant::now();
            if now >= deadline || watch.shut_down {
                fail!("reload of {}: replaced, but {old} old worker(s) did not exit in time", spec.name);
            }
            watch = cond.wait_timeout(watch, (deadline - now).min(TICK)).unwrap().0;
        }
    }

    pub fn scale(&self, instances: u32) -> Res<()> {
        if instances == 0 {
            fail!("instances must be at least 1 (use stop)");
        }
        Ok(self.primary.scale(instances)?)
    }

    fn instance_count(&self) -> u32 {
        let watch = self.watch.0.lock().unwrap();
        watch.stats.iter().filter_map(|s| s.slot).collect::<std::collections::HashSet<_>>().len().max(1) as u32
    }

    /// Starts a graceful stop and waits for it (bounded).
    pub fn stop(&self) {
        let stop_timeout = Duration::from_millis(self.spec.stop_timeout_ms);
        let _ = self.primary.shutdown(stop_timeout);
        self.wait_stopped(stop_timeout * 2 + Duration::from_secs(5));
    }

    /// Waits until the primary has shut down (by `stop` or a signal).
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let (lock, cond) = &*self.watch;
        let deadline = Instant::now() + timeout;
        let mut watch = lock.lock().unwrap();
        while !watch.shut_down {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            watch = cond.wait_timeout(watch, deadline - now).unwrap().0;
        }
        drop(watch);
        if let Some(handle) = self.monitor.lock().unwrap().take() {
            let _ = handle.join();
        }
        true
    }

    /// Every address a worker listens on (through the library or `--listen`).
    pub fn listening(&self) -> Vec<String> {
        self.watch.0.lock().unwrap().listening.iter().cloned().collect()
    }

    pub fn crashes(&self) -> u32 {
        self.watch.0.lock().unwrap().crashes
    }

    /// The workers, as the primary sees them now (CPU: over the last second).
    pub fn workers(&self) -> Vec<WorkerRow> {
        let fresh = self.primary.stats().ok();
        let watch = self.watch.0.lock().unwrap();
        fresh
            .as_ref()
            .unwrap_or(&watch.stats)
            .iter()
            .map(|s| WorkerRow {
                id: s.id,
                pid: s.pid,
                state: state_name(s.state).to_owned(),
                generation: s.generation,
                restarts: s.restarts,
                uptime_ms: s.uptime.as_millis() as u64,
                cpu_percent: watch.cpu.get(&s.pid).map_or(0.0, |c| c.2),
                rss_bytes: rss_bytes(s.pid),
                dispatched: s.dispatched,
            })
            .collect()
    }
}

fn state_name(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Starting => "starting",
        WorkerState::Online => "online",
        WorkerState::Listening => "listening",
        WorkerState::Leaving => "stopping",
        WorkerState::Disconnected => "exiting",
    }
}

/// The argv the primary spawns: the program itself, or the trampoline that
/// hands it its sockets and captures its output.
fn worker_argv(spec: &AppSpec, log_socket: Option<&Path>) -> Res<Vec<String>> {
    if spec.listen.is_empty() && log_socket.is_none() {
        return Ok(spec.cmd.clone());
    }
    let me = std::env::current_exe().map_err(|e| Fail(format!("finding the rcluster executable: {e}")))?;
    let mut argv = vec![me.to_string_lossy().into_owned(), "exec-worker".to_owned()];
    for listen in &spec.listen {
        let host = if listen.host.contains(':') { format!("[{}]", listen.host) } else { listen.host.clone() };
        argv.extend(["--listen".to_owned(), format!("{host}:{}", listen.port)]);
        argv.extend(["--name".to_owned(), listen.name.clone()]);
    }
    if let Some(socket) = log_socket {
        argv.extend(["--log".to_owned(), socket.to_string_lossy().into_owned()]);
        argv.extend(["--app".to_owned(), spec.name.clone()]);
    }
    argv.push("--".to_owned());
    argv.extend(spec.cmd.iter().cloned());
    Ok(argv)
}

/// The thread that reads the primary's events, keeps the numbers `ls`
/// shows, and stops replaced workers of inherited-socket apps.
struct Monitor {
    primary: Arc<Primary>,
    name: String,
    inherited: bool,
    grace: Duration,
    say: Say,
    watch: Arc<(Mutex<Watch>, Condvar)>,
}

impl Monitor {
    fn run(self) {
        let mut next_tick = Instant::now();
        let mut next_cpu = Instant::now();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.primary.next_event(Some(wait)) {
                Ok(Some(Event::Shutdown)) | Err(_) => break,
                Ok(Some(event)) => self.on_event(event),
                Ok(None) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                let Ok(stats) = self.primary.stats() else { break };
                let sample_cpu = now >= next_cpu;
                if sample_cpu {
                    next_cpu = now + Duration::from_secs(1);
                }
                self.on_tick(stats, sample_cpu);
            }
        }
        let (lock, cond) = &*self.watch;
        let mut watch = lock.lock().unwrap();
        watch.shut_down = true;
        watch.stats.clear();
        cond.notify_all();
        drop(watch);
        (self.say)(&self.name, "stopped");
    }

    fn on_event(&self, event: Event) {
        let say = |text: String| (self.say)(&self.name, &text);
        let (lock, cond) = &*self.watch;
        match event {
            Event::Fork { worker, pid, generation, .. } => {
                say(format!("worker {worker} started (pid {pid}, generation {generation})"))
            }
            Event::Exit { worker, pid, exit, after_disconnect, .. } => {
                let how = match exit {
                    Exit::Code(code) => format!("exit code {code}"),
                    Exit::Signal(signal) => format!("signal {signal}"),
                    Exit::Unknown => "status unknown".to_owned(),
                };
                let mut watch = lock.lock().unwrap();
                let asked = after_disconnect || watch.terminated.contains(&worker);
                watch.terminated.retain(|&w| w != worker);
                watch.leaving.remove(&worker);
                if asked {
                    say(format!("worker {worker} (pid {pid}) stopped ({how})"));
                } else {
                    watch.crashes += 1;
                    say(format!("worker {worker} (pid {pid}) exited unexpectedly ({how}); it is restarted"));
                }
            }
            Event::CrashLoop { slot, worker, .. } => say(format!(
                "worker {worker} keeps exiting: slot {slot} is not restarted any more (a reload or scale retries)"
            )),
            Event::Listening { worker, address, .. } => {
                lock.lock().unwrap().listening.insert(address.to_string());
                say(format!("worker {worker} listening on {address}"))
            }
            Event::Unresponsive { worker, pid } => say(format!("worker {worker} (pid {pid}) is unresponsive: killed")),
            Event::WorkerError { worker, message, .. } => say(format!("worker {worker}: {message}")),
            Event::ReloadDone { generation } => {
                say(format!("reload done: generation {generation}"));
                lock.lock().unwrap().reloads.push((generation, None));
                cond.notify_all();
            }
            Event::ReloadFailed { generation, message } => {
                say(format!("reload failed: {message}"));
                lock.lock().unwrap().reloads.push((generation, Some(message)));
                cond.notify_all();
            }
            _ => {}
        }
    }

    fn on_tick(&self, stats: Vec<WorkerStats>, sample_cpu: bool) {
        let now = Instant::now();
        let (lock, cond) = &*self.watch;
        let mut watch = lock.lock().unwrap();
        if self.inherited {
            self.stop_leaving_workers(&stats, &mut watch);
        }
        if sample_cpu {
            let mut cpu = HashMap::new();
            for s in &stats {
                let Some(ticks) = cpu_ticks(s.pid) else { continue };
                let percent = match watch.cpu.get(&s.pid) {
                    Some(&(before, at, _)) if now > at => {
                        let seconds = ticks.saturating_sub(before) as f64 / clock_ticks_per_second();
                        100.0 * seconds / now.duration_since(at).as_secs_f64()
                    }
                    _ => 0.0,
                };
                cpu.insert(s.pid, (ticks, now, percent));
            }
            watch.cpu = cpu;
        }
        watch.stats = stats;
        cond.notify_all();
    }

    /// Programs that do not use rcluster never read its disconnect message,
    /// so a worker asked to leave gets SIGTERM from here:
    /// - one that was replaced (a newer worker took its slot): once the
    ///   replacement has run for the reload grace. A replacement that dies
    ///   first does not count (the next one, restarted by the library, must
    ///   run the grace in turn), so a new version that crashes at start does
    ///   not take the old workers down with it; the library's own stop
    ///   timeout still ends them (SIGTERM, then SIGKILL) if none lasts;
    /// - one stopped for good (stop, scale down, shutdown: no successor): at once.
    fn stop_leaving_workers(&self, stats: &[WorkerStats], watch: &mut Watch) {
        for s in stats.iter().filter(|s| s.state == WorkerState::Leaving) {
            if watch.terminated.contains(&s.id) {
                continue;
            }
            let successor = stats
                .iter()
                .filter(|o| o.slot.is_some() && o.slot == s.slot && o.id > s.id && o.state != WorkerState::Leaving)
                .map(|o| o.uptime)
                .max();
            let had_successor = watch.leaving.entry(s.id).or_insert(successor.is_some());
            *had_successor |= successor.is_some();
            let stop_now = match successor {
                Some(uptime) => uptime >= self.grace,
                None => !*had_successor,
            };
            if stop_now {
                let _ = self.primary.kill(s.id, libc::SIGTERM);
                watch.terminated.push(s.id);
            }
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf with a valid name has no side effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn rss_bytes(pid: i32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_with_names_ports_and_ipv6() {
        let l = parse_listen("127.0.0.1:8080", 0).unwrap();
        assert_eq!((l.name.as_str(), l.host.as_str(), l.port), ("listen0", "127.0.0.1", 8080));
        let l = parse_listen("web=[::1]:0", 1).unwrap();
        assert_eq!((l.name.as_str(), l.host.as_str(), l.port), ("web", "::1", 0));
        let l = parse_listen("9000", 2).unwrap();
        assert_eq!((l.host.as_str(), l.port), ("0.0.0.0", 9000));
        assert!(parse_listen("example.com:80", 0).is_err(), "names are not resolved");
        assert!(parse_listen("127.0.0.1:99999", 0).is_err());
        assert!(parse_listen("a:b=127.0.0.1:1", 0).is_err(), "':' separates LISTEN_FDNAMES");
    }

    #[test]
    fn durations_and_instance_counts_parse_or_say_why() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_instances("3").unwrap(), 3);
        assert!(parse_instances("max").unwrap() >= 1);
        assert!(parse_instances("0").is_err());
    }

    #[test]
    fn policies_default_by_route_and_rr_is_refused_with_inherited_sockets() {
        let mut spec = AppSpec { cmd: vec!["true".into()], ..AppSpec::default() };
        assert_eq!(spec.policy().unwrap(), PolicyKind::RoundRobin);
        spec.listen.push(parse_listen("127.0.0.1:0", 0).unwrap());
        assert_eq!(spec.policy().unwrap(), PolicyKind::Shared);
        spec.policy = "reuseport".into();
        assert_eq!(spec.policy().unwrap(), PolicyKind::ReusePort);
        spec.policy = "rr".into();
        assert!(spec.policy().is_err());
        spec.policy = "fastest".into();
        assert!(spec.policy().is_err());
    }

    #[test]
    fn worker_argv_goes_through_the_trampoline_only_when_needed() {
        let mut spec = AppSpec { cmd: vec!["node".into(), "app.js".into()], ..AppSpec::default() };
        assert_eq!(worker_argv(&spec, None).unwrap(), spec.cmd);
        spec.listen.push(parse_listen("api=[::1]:8080", 0).unwrap());
        let argv = worker_argv(&spec, Some(Path::new("/run/x/logs.sock"))).unwrap();
        let tail: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "exec-worker",
                "--listen",
                "[::1]:8080",
                "--name",
                "api",
                "--log",
                "/run/x/logs.sock",
                "--app",
                "app",
                "--",
                "node",
                "app.js"
            ]
        );
    }
}
