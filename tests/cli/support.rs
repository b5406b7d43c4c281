//! Helpers for the tests of the `rcluster` command: the real binary, real
//! worker processes, real clients. Every process a test starts is stopped
//! by pid when it ends (pass or fail); every wait is bounded; each daemon
//! lives in a temp directory of its own (`RCLUSTER_HOME`), never the real
//! per-user one.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub const RCLUSTER: &str = env!("CARGO_BIN_EXE_rcluster");
pub const TESTWORKER: &str = env!("CARGO_BIN_EXE_rcluster-testworker");

/// The plain Python server that takes its socket by the systemd protocol.
pub fn sd_server() -> String {
    fixture("sd_server.py")
}

pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli").join(name).to_string_lossy().into_owned()
}

/// The Python interpreter itself (not a pyenv-style shim script, which
/// would start a few short-lived processes of its own per worker).
pub fn python() -> &'static str {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique word for this test's processes (in their environment), so
/// "no worker left behind" can be checked by scanning /proc.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("rcluster-cli-{}", unique(tag)));
        std::fs::DirBuilder::new().mode(0o700).create(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pids of live processes whose environment holds `RCLUSTER_TEST_MARK=mark`.
pub fn marked_pids(mark: &str) -> Vec<i32> {
    pids_with_env(&format!("RCLUSTER_TEST_MARK={mark}"))
}

/// Live processes whose environment holds `needle` (`NAME=value`).
fn pids_with_env(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|&b| b == 0).any(|v| v == needle.as_bytes()) && !pid_exited(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` has exited (gone, or a zombie waiting for its reaper).
pub fn pid_exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `marked_pids` with each one's command line, for assertion messages.
pub fn describe_pids(pids: &[i32]) -> String {
    pids.iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1).map(str::to_owned)))
                .unwrap_or_default();
            format!("{pid} (ppid {ppid}): {cmdline}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Asserts no process carries the mark.
pub fn assert_none_left(mark: &str) {
    let left = marked_pids(mark);
    if !left.is_empty() {
        let text = describe_pids(&left);
        kill_marked(mark);
        panic!("processes left behind: {text}");
    }
}

/// SIGKILLs leftover marked processes (a failed test must not leave any).
pub fn kill_marked(mark: &str) {
    for pid in marked_pids(mark) {
        // SAFETY: kill with a pid we found by our own mark.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// One HTTP GET with `Connection: close` (a new connection); returns the body.
pub fn http_get(port: u16) -> std::io::Result<String> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad response {response:?}")));
    }
    Ok(response.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// The pid in a `worker <id> pid <pid> ...` body.
pub fn pid_of(body: &str) -> i32 {
    body.split_whitespace().nth(3).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad body {body:?}"))
}

/// Pids answering over `n` requests.
pub fn serving_pids(port: u16, n: usize) -> std::collections::BTreeSet<i32> {
    (0..n).map(|_| pid_of(&http_get(port).expect("request failed"))).collect()
}

/// `clients` threads, each a new connection per request, until `finish`.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    pub fn start(port: u16, clients: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut errors) = (0, Vec::new());
                    while !stop.load(Ordering::SeqCst) {
                        match http_get(port) {
                            Ok(_) => ok += 1,
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    (ok, errors)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// (answered, failures)
    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = (0, Vec::new());
        for thread in self.threads {
            let (ok, errors) = thread.join().unwrap();
            total.0 += ok;
            total.1.extend(errors);
        }
        total
    }
}

/// `rcluster run ...` in the foreground, its stderr read line by line.
pub struct Foreground {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Foreground {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Foreground {
        let mut child = Command::new(RCLUSTER)
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = channel();
        for stream in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if sender.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Foreground { child, lines, seen: Vec::new() }
    }

    /// Waits for a line containing `text`; returns it.
    pub fn wait_line(&mut self, text: &str, timeout: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {text:?} within {timeout:?}; output: {:#?}", self.seen),
            }
        }
    }

    /// Takes what arrived so far.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// The port of a `listening on HOST:PORT` line.
    pub fn port(&mut self) -> u16 {
        let line = self.wait_line("listening on ", Duration::from_secs(15));
        line.rsplit(':').next().unwrap().trim().parse().unwrap()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill on our own child's pid (not yet reaped: we hold it).
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.drain();
                return status;
            }
            assert!(Instant::now() < deadline, "rcluster run still running after {within:?}: {:#?}", self.seen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        // Its workers follow (PR_SET_PDEATHSIG, channel hang-up).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a CLI call printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// A per-user directory for one test's daemon; the daemon is stopped on drop.
pub struct Home {
    pub dir: TempDir,
}

impl Home {
    pub fn new(tag: &str) -> Home {
        Home { dir: TempDir::new(tag) }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `rcluster ARGS` with this home, bounded by `timeout`.
    pub fn cli_within(&self, args: &[&str], timeout: Duration) -> Output {
        self.command_within(Command::new(RCLUSTER).args(args), timeout)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_within(args, Duration::from_secs(60))
    }

    /// Runs `command` with this home, bounded by `timeout`.
    pub fn command_within(&self, command: &mut Command, timeout: Duration) -> Output {
        let mut child = command
            .env("RCLUSTER_HOME", self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{command:?} did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let output = self.cli(args);
        assert!(output.ok(), "{args:?} failed: {output:?}");
        serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("{args:?}: bad JSON {e}: {}", output.stdout))
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path().join("daemon.pid")).ok()?.trim().parse().ok()
    }

    /// The first address the app's workers listen on (`describe --json`).
    pub fn port_of(&self, app: &str) -> u16 {
        let mut port = None;
        wait_until(Duration::from_secs(15), "the app to listen", || {
            let data = self.json(&["describe", app, "--json"]);
            port = data["listening"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|a| a.as_str())
                .map(|a| a.rsplit(':').next().unwrap().parse().unwrap());
            port.is_some()
        });
        port.unwrap()
    }

    /// Worker pids of an app (`ls --json`).
    pub fn worker_pids(&self, app: &str) -> Vec<i32> {
        let data = self.json(&["ls", "--json"]);
        data["apps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["name"] == app)
            .flat_map(|a| a["workers"].as_array().cloned().unwrap_or_default())
            .map(|w| w["pid"].as_i64().unwrap() as i32)
            .collect()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon_pid().filter(|&p| !pid_exited(p)) {
            // `rcluster kill`, bounded: a daemon that does not answer gets SIGKILL below.
            if let Ok(mut kill) = Command::new(RCLUSTER)
                .arg("kill")
                .env("RCLUSTER_HOME", self.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                let deadline = Instant::now() + Duration::from_secs(30);
                while kill.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = kill.kill();
                let _ = kill.wait();
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while !pid_exited(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !pid_exited(pid) {
                // SAFETY: the daemon's pid from its pid file, checked alive just now.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Workers outliving their daemon (a test that killed it, then
        // failed) still carry this home in their environment: they get
        // a few seconds, then SIGKILL, each by its pid.
        let needle = format!("RCLUSTER_HOME={}", self.path().display());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pids_with_env(&needle).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in pids_with_env(&needle) {
            // SAFETY: a process found alive just now, started for this home.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
