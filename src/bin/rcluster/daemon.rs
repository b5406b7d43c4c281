//! The per-user daemon (pm2's "God" process): one [`App`] per started app,
//! each its own [`rcluster::Primary`], answering the CLI on `daemon.sock`.
//!
//! One daemon per directory: it holds an exclusive `flock` on `daemon.lock`
//! for its life, so a second one fails with a clear error, and a socket
//! left by a dead daemon (the kernel released its lock) is replaced.
//! SIGTERM or SIGINT stops every app gracefully, then the daemon. If the
//! daemon is killed outright, its workers get SIGTERM from the kernel
//! (`PR_SET_PDEATHSIG`, set by the library when it spawns them, kept across
//! the trampoline's exec), and those that use rcluster also see their
//! channel hang up.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::app::{App, AppSpec, Hosting};
use crate::logs::{log_path, Logs};
use crate::protocol::{ensure_home, Request, Response};
use crate::{fail, Fail, Res};

/// The longest request read (a config file's apps, with their environments).
const MAX_REQUEST: u64 = 16 * 1024 * 1024;

/// An app the daemon knows: running (`app`) or stopped.
struct Entry {
    spec: AppSpec,
    app: Option<Arc<App>>,
    /// Unexpected exits of workers of earlier runs of this app.
    earlier_crashes: u32,
}

struct Daemon {
    home: PathBuf,
    apps: Mutex<BTreeMap<String, Entry>>,
    logs: Logs,
}

pub fn serve() -> Res<i32> {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let home = ensure_home()?;
    // Not to pin whatever directory the first `rcluster start` ran in.
    std::env::set_current_dir(&home)?;
    let lock = File::options().create(true).truncate(false).write(true).open(home.join("daemon.lock"))?;
    // SAFETY: flock on an fd we own; the lock lives as long as the process.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(home.join("daemon.pid")).unwrap_or_default();
        fail!("a daemon is already running for {} (pid {})", home.display(), pid.trim());
    }
    std::fs::write(home.join("daemon.pid"), format!("{}\n", std::process::id()))?;
    let socket = home.join("daemon.sock");
    let log_socket = home.join("logs.sock");
    // We hold the lock, so any socket there is a dead daemon's.
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&log_socket);
    let log_listener = bind_private(&log_socket)?;
    let listener = bind_private(&socket)?;
    let daemon = Arc::new(Daemon { home: home.clone(), apps: Mutex::new(BTreeMap::new()), logs: Logs::new(&home) });

    let logs = daemon.logs.clone();
    std::thread::Builder::new().name("rcluster-logs".into()).spawn(move || logs.serve(log_listener))?;

    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])?;
    let on_signal = daemon.clone();
    std::thread::Builder::new().name("rcluster-signals".into()).spawn(move || {
        for signal in signals.forever() {
            if signal != libc::SIGHUP {
                on_signal.kill_all();
                on_signal.exit();
            }
        }
    })?;
    eprintln!("rcluster daemon {} serving {}", std::process::id(), socket.display());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let daemon = daemon.clone();
        let _ = std::thread::Builder::new().name("rcluster-client".into()).spawn(move || daemon.answer(stream));
    }
    Ok(0)
}

/// A Unix socket only this user can connect to.
fn bind_private(path: &Path) -> Res<UnixListener> {
    let listener = UnixListener::bind(path).map_err(|e| Fail(format!("cannot bind {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The uid of the process at the other end (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

impl Daemon {
    fn answer(&self, stream: UnixStream) {
        // Read the request whoever sent it (a reply to an unread request
        // could reach the caller as a broken pipe), then check who it is.
        let mut line = String::new();
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let response = match (peer_uid(&stream), read) {
            (None, _) => Response::error("permission denied: the caller's uid is unknown"),
            (Some(uid), _) if uid != me => {
                Response::error(format!("permission denied: uid {uid} is not the daemon's user (uid {me})"))
            }
            (Some(_), Err(e)) => Response::error(format!("reading the request: {e}")),
            (Some(_), Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Ok(Request::Kill) => {
                    let count = self.kill_all();
                    reply(&stream, Response::ok(format!("stopped {count} app(s) and the daemon"), json!(null)));
                    self.exit();
                }
                Ok(request) => self.handle(request),
                Err(e) => Response::error(format!("bad request: {e}")),
            },
        };
        reply(&stream, response);
    }

    fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Start { apps } => self.start(apps),
            Request::Ls => Ok(self.ls()),
            Request::Reload { name } => self.running(&name).and_then(|app| app.reload()).map(|m| (m, json!(null))),
            Request::Restart { name } => self.restart(&name),
            Request::Stop { name } => self.stop(&name, false),
            Request::Delete { name } => self.stop(&name, true),
            Request::Scale { name, instances } => self.scale(&name, instances),
            Request::Describe { name } => self.describe(&name),
            Request::Kill => unreachable!("answered above"),
        };
        match result {
            Ok((message, data)) => Response::ok(message, data),
            Err(e) => Response::error(e.0),
        }
    }

    fn hosting(&self) -> Hosting {
        let logs = self.logs.clone();
        Hosting {
            handle_signals: false,
            systemd: false,
            log_socket: Some(self.home.join("logs.sock")),
            say: Arc::new(move |app: &str, text: &str| logs.note(app, text)),
        }
    }

    fn start(&self, specs: Vec<AppSpec>) -> Res<(String, serde_json::Value)> {
        let mut apps = self.apps.lock().unwrap();
        for (i, spec) in specs.iter().enumerate() {
            if apps.contains_key(&spec.name) || specs[..i].iter().any(|s| s.name == spec.name) {
                fail!("an app named {} exists (use reload, restart or delete)", spec.name);
            }
            spec.validate()?;
        }
        let mut started: Vec<Arc<App>> = Vec::new();
        for spec in &specs {
            match App::start(spec.clone(), self.hosting()) {
                Ok(app) => started.push(app),
                Err(e) => {
                    // All or nothing: what this request started stops again.
                    for app in started {
                        app.stop();
                    }
                    fail!("{}: {e}", spec.name);
                }
            }
        }
        let mut lines = Vec::new();
        let mut data = Vec::new();
        for app in started {
            let addresses: Vec<String> = app.addresses.iter().map(|a| a.to_string()).collect();
            let mut line = format!("started {} ({} worker(s)", app.spec.name, app.spec.instances);
            if !addresses.is_empty() {
                line.push_str(&format!(", listening on {}", addresses.join(" ")));
            }
            line.push(')');
            lines.push(line);
            data.push(json!({"name": app.spec.name, "instances": app.spec.instances, "listen": addresses}));
            apps.insert(app.spec.name.clone(), Entry { spec: app.spec.clone(), app: Some(app), earlier_crashes: 0 });
        }
        let message = lines.join("\n");
        Ok((message, json!({ "apps": data })))
    }

    fn running(&self, name: &str) -> Res<Arc<App>> {
        let apps = self.apps.lock().unwrap();
        match apps.get(name) {
            None => Err(Fail(format!("no app named {name}"))),
            Some(Entry { app: None, .. }) => {
                Err(Fail(format!("{name} is stopped (rcluster restart {name} starts it)")))
            }
            Some(Entry { app: Some(app), .. }) => Ok(app.clone()),
        }
    }

    fn stop(&self, name: &str, delete: bool) -> Res<(String, serde_json::Value)> {
        let app = {
            let mut apps = self.apps.lock().unwrap();
            let Some(entry) = apps.get_mut(name) else { fail!("no app named {name}") };
            let app = entry.app.take();
            if let Some(app) = &app {
                entry.earlier_crashes += app.crashes();
            }
            if delete {
                apps.remove(name);
            }
            app
        };
        if let Some(app) = app {
            app.stop();
        }
        Ok((format!("{} {name}", if delete { "deleted" } else { "stopped" }), json!(null)))
    }

    fn restart(&self, name: &str) -> Res<(String, serde_json::Value)> {
        let spec = {
            let apps = self.apps.lock().unwrap();
            let Some(entry) = apps.get(name) else { fail!("no app named {name}") };
            entry.spec.clone()
        };
        self.stop(name, false)?;
        let app = App::start(spec, self.hosting())?;
        let mut apps = self.apps.lock().unwrap();
        let n = app.spec.instances;
        match apps.get_mut(name) {
            Some(entry) => entry.app = Some(app),
            None => {
                // Deleted meanwhile: do not leave it running.
                drop(apps);
                app.stop();
                fail!("{name} was deleted while restarting");
            }
        }
        Ok((format!("restarted {name} ({n} worker(s))"), json!(null)))
    }

    fn scale(&self, name: &str, instances: u32) -> Res<(String, serde_json::Value)> {
        let app = self.running(name)?;
        app.scale(instances)?;
        if let Some(entry) = self.apps.lock().unwrap().get_mut(name) {
            entry.spec.instances = instances;
        }
        Ok((format!("scaled {name} to {instances} worker(s)"), json!(null)))
    }

    fn app_json(&self, name: &str, entry: &Entry) -> serde_json::Value {
        let (status, workers, addresses, listening, crashes, started) = match &entry.app {
            Some(app) => (
                "running",
                app.workers(),
                app.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                app.listening(),
                entry.earlier_crashes + app.crashes(),
                app.started.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            ),
            None => ("stopped", Vec::new(), Vec::new(), Vec::new(), entry.earlier_crashes, 0),
        };
        json!({
            "name": name,
            "status": status,
            "instances": entry.spec.instances,
            "listen": addresses,
            "listening": listening,
            "crashes": crashes,
            "started_unix": started,
            "workers": workers,
        })
    }

    fn ls(&self) -> (String, serde_json::Value) {
        let apps = self.apps.lock().unwrap();
        let list: Vec<serde_json::Value> = apps.iter().map(|(name, entry)| self.app_json(name, entry)).collect();
        (String::new(), json!({ "apps": list }))
    }

    fn describe(&self, name: &str) -> Res<(String, serde_json::Value)> {
        let apps = self.apps.lock().unwrap();
        let Some(entry) = apps.get(name) else { fail!("no app named {name}") };
        let mut data = self.app_json(name, entry);
        data["spec"] = serde_json::to_value(&entry.spec).unwrap_or_default();
        // The CLI's whole environment: too long to show, and not ours to print.
        if let Some(spec) = data["spec"].as_object_mut() {
            spec.remove("base_env");
        }
        data["log"] = json!(log_path(&self.home, name));
        Ok((String::new(), data))
    }

    /// Stops every app gracefully (in parallel); returns how many ran.
    fn kill_all(&self) -> usize {
        let running: Vec<Arc<App>> = {
            let mut apps = self.apps.lock().unwrap();
            apps.values_mut().filter_map(|e| e.app.take()).collect()
        };
        let count = running.len();
        let stoppers: Vec<_> = running.into_iter().map(|app| std::thread::spawn(move || app.stop())).collect();
        for stopper in stoppers {
            let _ = stopper.join();
        }
        count
    }

    fn exit(&self) -> ! {
        let _ = std::fs::remove_file(self.home.join("daemon.sock"));
        let _ = std::fs::remove_file(self.home.join("logs.sock"));
        let _ = std::fs::remove_file(self.home.join("daemon.pid"));
        std::process::exit(0)
    }
}

fn reply(stream: &UnixStream, response: Response) {
    if let Ok(mut line) = serde_json::to_string(&response) {
        line.push('\n');
        let _ = (&*stream).write_all(line.as_bytes());
    }
}
