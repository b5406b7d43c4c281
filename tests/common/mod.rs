//! Helpers for the integration tests: a primary driven through the C ABI,
//! a small HTTP client, fd counting. Each test cleans up what it starts.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ptr;
use std::time::{Duration, Instant};

pub use rcluster::ffi::*;

pub const TESTWORKER: &str = env!("CARGO_BIN_EXE_rcluster-testworker");

pub fn last_error() -> String {
    // SAFETY: rcluster_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(rcluster_last_error()) }.to_string_lossy().into_owned()
}

pub fn ok(rc: i32, what: &str) {
    assert_eq!(rc, 0, "{what} failed: {rc} {}", last_error());
}

/// An owned event with its data copied out.
#[derive(Debug, Clone)]
pub struct Ev {
    pub kind: i32,
    pub worker: u32,
    pub pid: i32,
    pub exit_code: i32,
    pub signal: i32,
    pub flags: u32,
    pub port: u16,
    pub slot: i32,
    pub generation: u32,
    pub data: Vec<u8>,
    /// When the test received it.
    pub at: Instant,
}

impl Ev {
    /// Copies what a test keeps of a raw event (the caller still releases it).
    pub fn from_raw(raw: &rcluster_event) -> Ev {
        // SAFETY: an event the library filled: `data` holds `len` bytes until released.
        let data =
            if raw.len == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(raw.data, raw.len) }.to_vec() };
        Ev {
            kind: raw.kind,
            worker: raw.worker_id,
            pid: raw.pid,
            exit_code: raw.exit_code,
            signal: raw.signal,
            flags: raw.flags,
            port: raw.port,
            slot: raw.slot,
            generation: raw.generation,
            data,
            at: Instant::now(),
        }
    }
}

pub fn empty_event() -> rcluster_event {
    // SAFETY: all-zero is a valid empty event.
    unsafe { std::mem::zeroed() }
}

/// A primary running `rcluster-testworker MODE` workers, freed on drop.
pub struct TestPrimary {
    pub handle: *mut rcluster_primary,
    _strings: Vec<CString>,
    pub seen: Vec<Ev>,
}

impl TestPrimary {
    pub fn new(mode: &str, env: &[(&str, &str)], policy: i32) -> TestPrimary {
        Self::with(mode, env, |o| o.policy = policy)
    }

    pub fn with(mode: &str, env: &[(&str, &str)], tweak: impl FnOnce(&mut rcluster_primary_options)) -> TestPrimary {
        let mut strings = vec![CString::new(TESTWORKER).unwrap()];
        strings.extend(mode.split(' ').map(|s| CString::new(s).unwrap()));
        let argc = strings.len();
        for (k, v) in env {
            strings.push(CString::new(format!("{k}={v}")).unwrap());
        }
        let mut argv: Vec<*const i8> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(ptr::null());
        let mut envp: Vec<*const i8> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
        envp.push(ptr::null());
        let mut options: rcluster_primary_options = unsafe { std::mem::zeroed() };
        ok(rcluster_primary_options_init2(&mut options, size_of::<rcluster_primary_options>()), "options_init");
        options.argv = argv.as_ptr();
        options.env = envp.as_ptr();
        options.stop_timeout_ms = 3000;
        tweak(&mut options);
        let mut handle = ptr::null_mut();
        ok(rcluster_primary_new2(&options, &mut handle), "primary_new");
        TestPrimary { handle, _strings: strings, seen: Vec::new() }
    }

    pub fn listen(&self, host: &str, port: u16) -> u16 {
        let host = CString::new(host).unwrap();
        let mut bound = 0;
        ok(rcluster_primary_listen(self.handle, host.as_ptr(), port, &mut bound), "primary_listen");
        bound
    }

    /// Forks a worker with extra `KEY=VALUE` environment (`TEST_MODE` picks
    /// another mode than the primary's for this one).
    pub fn fork_with(&self, env: &[&str]) -> (u32, i32) {
        let strings: Vec<CString> = env.iter().map(|e| CString::new(*e).unwrap()).collect();
        let mut envp: Vec<*const i8> = strings.iter().map(|s| s.as_ptr()).collect();
        envp.push(ptr::null());
        let (mut id, mut pid) = (0, 0);
        ok(rcluster_primary_fork(self.handle, envp.as_ptr(), &mut id, &mut pid), "primary_fork");
        (id, pid)
    }

    pub fn fork(&self) -> (u32, i32) {
        let (mut id, mut pid) = (0, 0);
        ok(rcluster_primary_fork(self.handle, ptr::null(), &mut id, &mut pid), "primary_fork");
        (id, pid)
    }

    pub fn next(&mut self, timeout: Duration) -> Option<Ev> {
        let mut raw = empty_event();
        let rc = rcluster_primary_wait_event(self.handle, &mut raw, timeout.as_millis() as i32);
        if rc != 0 {
            assert!(rc == RCLUSTER_E_TIMEOUT || rc == RCLUSTER_E_AGAIN, "wait_event: {rc} {}", last_error());
            return None;
        }
        let ev = Ev::from_raw(&raw);
        ok(rcluster_event_release(&mut raw), "event_release");
        self.seen.push(ev.clone());
        Some(ev)
    }

    /// Waits for an event matching `pred`, failing the test after `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}; events so far: {:?}", self.seen);
            if let Some(ev) = self.next(left) {
                if pred(&ev) {
                    return ev;
                }
            }
        }
    }

    /// Forks `n` workers and waits until each is listening. Returns the port.
    pub fn start(&mut self, n: usize) -> u16 {
        for _ in 0..n {
            self.fork();
        }
        let mut port = 0;
        for _ in 0..n {
            port = self.wait_for(Duration::from_secs(10), "listening", |e| e.kind == RCLUSTER_EVENT_LISTENING).port;
        }
        port
    }

    /// Shuts down and waits for the SHUTDOWN event.
    pub fn shutdown(&mut self) {
        ok(rcluster_primary_shutdown(self.handle, 3000), "shutdown");
        self.wait_for(Duration::from_secs(20), "shutdown", |e| e.kind == RCLUSTER_EVENT_SHUTDOWN);
    }
}

impl Drop for TestPrimary {
    fn drop(&mut self) {
        rcluster_primary_free(self.handle);
    }
}

/// One HTTP GET with `Connection: close`; returns the body.
pub fn http_get(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    if !response.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad response {response:?}")));
    }
    Ok(body)
}

/// The worker id in a `worker <id> pid <pid>` body.
pub fn worker_of(body: &str) -> u32 {
    body.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad body {body:?}"))
}

/// Counts requests per worker over `n` sequential GETs.
pub fn distribution(port: u16, n: usize) -> HashMap<u32, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let body = http_get(port).expect("request failed");
        *counts.entry(worker_of(&body)).or_default() += 1;
    }
    counts
}

/// This process's open fds.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Whether `pid` exists (zombie or alive).
pub fn pid_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Serializes the tests of one binary that count fds or processes.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A keep-alive HTTP client: reuses its connection until the server says
/// `Connection: close`, then opens a new one.
pub struct KeepAlive {
    port: u16,
    stream: Option<std::io::BufReader<TcpStream>>,
    /// When the open connection was made.
    pub connected_at: Option<Instant>,
}

impl KeepAlive {
    pub fn new(port: u16) -> KeepAlive {
        KeepAlive { port, stream: None, connected_at: None }
    }

    /// Whether the next request reuses an open connection.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// One request; returns the body.
    pub fn get(&mut self) -> std::io::Result<String> {
        use std::io::BufRead;
        if self.stream.is_none() {
            self.connected_at = Some(Instant::now());
            let stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(std::io::BufReader::new(stream));
        }
        let reader = self.stream.as_mut().unwrap();
        let result = (|| {
            reader.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
            let mut status = String::new();
            reader.read_line(&mut status)?;
            if !status.starts_with("HTTP/1.1 200") {
                return Err(std::io::Error::other(format!("bad status line {status:?}")));
            }
            let (mut length, mut close) = (0usize, false);
            loop {
                let mut line = String::new();
                reader.read_line(&mut line)?;
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("connection: close") {
                    close = true;
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            Ok((String::from_utf8_lossy(&body).into_owned(), close))
        })();
        match result {
            Ok((body, close)) => {
                if close {
                    self.stream = None;
                }
                Ok(body)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }
}

/// One answered (or failed) request of a load run.
#[derive(Clone, Debug)]
pub struct Sample {
    pub started: Instant,
    /// When the connection it was sent on was made (`started` for a new one).
    pub connected: Instant,
    /// Sent on a reused keep-alive connection (else a new connection).
    pub keep_alive: bool,
    pub worker: Option<u32>,
    pub error: Option<String>,
}

/// `clients` threads (half a new connection per request, half keep-alive)
/// requesting until `stop` is set; returns every request's outcome.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(port: u16, clients: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..clients)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    let mut keep_alive = KeepAlive::new(port);
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let started = Instant::now();
                        let reused = i % 2 == 1 && keep_alive.is_connected();
                        let connected = if reused { keep_alive.connected_at.unwrap_or(started) } else { started };
                        let result = if i % 2 == 0 { http_get(port) } else { keep_alive.get() };
                        samples.push(match result {
                            Ok(body) => Sample {
                                started,
                                connected,
                                keep_alive: reused,
                                worker: Some(worker_of(&body)),
                                error: None,
                            },
                            Err(e) => Sample {
                                started,
                                connected,
                                keep_alive: reused,
                                worker: None,
                                error: Some(e.to_string()),
                            },
                        });
                    }
                    samples
                })
            })
            .collect();
        Load { stop, threads }
    }

    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.threads.into_iter().flat_map(|t| t.join().unwrap()).collect()
    }
}

/// A port nobody listens on now (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The port in the test primary's `ready PORT PID` line.
pub fn ready_port(line: &str) -> u16 {
    line.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("not a ready line: {line:?}"))
}

/// Whether `pid` has exited (gone, or a zombie waiting for its reaper).
pub fn pid_exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// A primary in a process of its own (`rcluster-testworker primary N MODE`),
/// for tests that watch its fds and CPU, signal it, or kill it. Killed on drop.
pub struct PrimaryProcess {
    pub child: std::process::Child,
    pub port: u16,
    lines: std::sync::mpsc::Receiver<String>,
    output: Vec<String>,
}

impl PrimaryProcess {
    pub fn start(workers: u32, mode: &str, env: &[(&str, &str)]) -> PrimaryProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(TESTWORKER)
            .args(["primary", &workers.to_string(), mode])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A thread reads stdout, so no read here can block forever.
        let (lines, received) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                if line.is_err() || lines.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        let mut output = Vec::new();
        let port = loop {
            let line = received.recv_timeout(Duration::from_secs(15)).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("no ready line within 15 s; output: {output:?}")
            });
            if line.starts_with("ready ") {
                break ready_port(&line);
            }
            output.push(line);
        };
        PrimaryProcess { child, port, lines: received, output }
    }

    /// The next line on the primary's stdout (its workers share it) other
    /// than the ready line, waiting up to `timeout`.
    pub fn read_line(&mut self, timeout: Duration) -> Option<String> {
        if !self.output.is_empty() {
            return Some(self.output.remove(0));
        }
        self.lines.recv_timeout(timeout).ok()
    }

    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).unwrap().count()
    }

    /// User + system CPU time of the primary, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Worker pids answering over `n` requests.
    pub fn pids(&self, n: usize) -> std::collections::HashSet<i32> {
        (0..n).map(|_| http_get(self.port).unwrap().split_whitespace().nth(3).unwrap().parse().unwrap()).collect()
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < within, "primary still running after {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PrimaryProcess {
    fn drop(&mut self) {
        // SIGKILL: the workers follow through the channel hang-up and PDEATHSIG.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
