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
//!   thread, `monitor.rs`; the program ignores rcluster's disconnect message). Both
//!   accept from one kernel queue, so a connection waits there until one of
//!   them takes it: nothing is refused or lost as long as the grace covers
//!   the program's start. A worker that is stopped for good (stop, scale
//!   down, shutdown) gets SIGTERM at once.

mod monitor;
mod spec;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rcluster::{Config, Primary, WorkerState};
use serde::{Deserialize, Serialize};

use crate::{fail, Fail, Res};

use monitor::{rss_bytes, Monitor, Watch};
pub use spec::{parse_duration, parse_instances, parse_listen, AppSpec};

/// How often the monitor looks at the workers (leaving ones, CPU).
const TICK: Duration = Duration::from_millis(100);

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
#[cfg(test)]
mod tests {
    use super::*;

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
