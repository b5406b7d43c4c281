//! The example servers against their contract (EXAMPLES.md): the C one
//! (`examples/c/hello_server.c`, built here with gcc against the release
//! `librcluster.so` and the generated header) and the Rust one
//! (`examples/hello_server.rs`).
//!
//! Each test starts a real cluster on an OS-picked port, reads the ready
//! line, talks HTTP to it with std's `TcpStream`, stops it with SIGTERM and
//! checks that it exits 0 leaving no worker behind. Every process a test
//! starts is killed when its guard drops, so a failing test leaves nothing
//! running, and every wait is bounded.
//!
//! The binaries are built once per test run, in the release profile, where
//! `make examples` puts them. When the tests themselves are built in
//! release, the examples are built in a target directory of their own
//! (`target/examples-build`), clear of any lock the outer cargo may hold on
//! its profile directory (cargo 1.95 holds none while tests run; the
//! detour costs one more build and is safe with any version).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a cluster of two workers may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown may take (workers get 5 s to drain, at most).
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long building the library and the examples may take on a clean checkout.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// Socket timeouts of the test client.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ----- building --------------------------------------------------------------

struct Binaries {
    c: PathBuf,
    minimal: PathBuf,
    rust: PathBuf,
}

/// The name the library's SONAME gives it (build.rs): what programs linked
/// with -lrcluster ask the loader for.
const SONAME: &str = concat!("librcluster.so.", env!("CARGO_PKG_VERSION_MAJOR"));

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory and profile this test binary was built in
/// (`<target>/<profile>/deps/examples-<hash>`).
fn own_target() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary in <target>/<profile>/deps");
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let target = profile_dir.parent().expect("a target directory").to_path_buf();
    (target, profile)
}

/// cargo test puts its target directory's library folders on
/// LD_LIBRARY_PATH, which outranks the C example's RUNPATH: the example would
/// load whatever librcluster.so a `cargo build` last left there, not the one
/// build() just made. Those entries are dropped; the others are kept.
fn without_target_library_path(command: &mut Command) {
    let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") else { return };
    let (target, _) = own_target();
    let kept: Vec<PathBuf> = std::env::split_paths(&paths).filter(|p| !p.starts_with(&target)).collect();
    match std::env::join_paths(kept) {
        Ok(joined) if !joined.is_empty() => command.env("LD_LIBRARY_PATH", joined),
        _ => command.env_remove("LD_LIBRARY_PATH"),
    };
}

/// Runs `command` to completion within `timeout`, killing it past that.
fn run_bounded(mut command: Command, timeout: Duration, what: &str) {
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => {
                assert!(status.success(), "{what} failed: {status}");
                return;
            }
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} took more than {timeout:?}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Builds librcluster.so, the Rust example and the C example, once.
fn build() -> Binaries {
    let (target, profile) = own_target();
    let target = if profile == "release" { target.join("examples-build") } else { target };
    let release = target.join("release");

    // Always run cargo: a no-op when everything is fresh, and it keeps the
    // library in step with the sources (and the header, which build.rs writes).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root())
        .args(["build", "--quiet", "--release", "--lib", "--example", "hello_server", "--target-dir"])
        .arg(&target);
    run_bounded(command, BUILD_TIMEOUT, "cargo build --release --lib --example hello_server");
    let library = release.join("librcluster.so");
    assert!(library.exists(), "{} is missing after the build", library.display());
    // The C example asks for the library by its SONAME (as `make lib` links it).
    let soname = release.join(SONAME);
    if std::fs::read_link(&soname).ok().as_deref() != Some(Path::new("librcluster.so")) {
        let _ = std::fs::remove_file(&soname);
        std::os::unix::fs::symlink("librcluster.so", &soname).expect("link librcluster.so.MAJOR");
    }

    // The same command as `make examples`, with paths made absolute; written
    // under a temporary name and renamed, so a running copy is never overwritten.
    let examples = release.join("examples");
    std::fs::create_dir_all(&examples).expect("mkdir examples");
    let c = examples.join("hello_server_c");
    let partial = examples.join(format!("hello_server_c.{}.tmp", std::process::id()));
    let mut command = Command::new(std::env::var_os("CC").unwrap_or_else(|| "gcc".into()));
    command
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
        .arg(format!("-I{}", root().join("include").display()))
        .arg(root().join("examples/c/hello_server.c"))
        .arg("-o")
        .arg(&partial)
        .arg(format!("-L{}", release.display()))
        .args(["-lrcluster", "-Wl,-rpath,$ORIGIN/.."]);
    run_bounded(command, Duration::from_secs(120), "gcc examples/c/hello_server.c");
    std::fs::rename(&partial, &c).expect("rename the C example into place");

    // The README's minimal example, built the same way.
    let minimal = examples.join("minimal_c");
    let partial = examples.join(format!("minimal_c.{}.tmp", std::process::id()));
    let mut command = Command::new(std::env::var_os("CC").unwrap_or_else(|| "gcc".into()));
    command
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
        .arg(format!("-I{}", root().join("include").display()))
        .arg(root().join("examples/c/minimal.c"))
        .arg("-o")
        .arg(&partial)
        .arg(format!("-L{}", release.display()))
        .args(["-lrcluster", "-Wl,-rpath,$ORIGIN/.."]);
    run_bounded(command, Duration::from_secs(120), "gcc examples/c/minimal.c");
    std::fs::rename(&partial, &minimal).expect("rename the minimal C example into place");

    Binaries { c, minimal, rust: examples.join("hello_server") }
}

fn binaries() -> &'static Binaries {
    static BUILT: OnceLock<Binaries> = OnceLock::new();
    // A panic while building leaves the cell empty: the next test tries again
    // and reports its own failure.
    BUILT.get_or_init(build)
}

// ----- a running server ------------------------------------------------------

/// A running example server; killed with its workers when dropped.
struct Server {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    port: u16,
    /// Worker pids seen in response bodies.
    pids: HashSet<i32>,
}

impl Server {
    /// Starts `binary ARGS` and waits for its ready line.
    fn start(binary: &Path, args: &[&str]) -> Server {
        let mut command = Command::new(binary);
        without_target_library_path(&mut command);
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let (lines, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        let mut server = Server { child, stdout, stderr, port: 0, pids: HashSet::new() };
        let line = match server.stdout.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!("no ready line within {READY_TIMEOUT:?} ({e}); stderr:\n{}", server.stderr()),
        };
        server.port = parse_ready(&line, args);
        server
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// One request on a new connection with `Connection: close`; checks the
    /// response and that the server closes. Returns (worker id, pid).
    fn get_once(&mut self) -> (u32, i32) {
        let mut client = Client::connect(self.port);
        client.send(true);
        if let Err(e) = client.reader.get_ref().peek(&mut [0u8]) {
            // No response (a timeout, or a reset): say where the connection is.
            let local = client.reader.get_ref().local_addr().map(|a| a.port()).unwrap_or(0);
            let sockets =
                Command::new("ss").args(["-tanpi"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let ours: Vec<String> = sockets
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains(&format!(":{local} ")) || l.contains(&format!(":{} ", self.port)))
                .map(str::to_owned)
                .collect();
            let tree = Command::new("ps")
                .args(["-o", "pid,ppid,stat,wchan:20,cmd", "--ppid", &self.pid().to_string()])
                .output();
            panic!(
                "no response on a new connection (client port {local}): {e}\nsockets:\n{}\nworkers:\n{}\nstderr:\n{}",
                ours.join("\n"),
                tree.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default(),
                self.stderr()
            );
        }
        let response = client.read_response();
        assert_eq!(header(&response, "connection").as_deref(), Some("close"), "{response:?}");
        client.assert_closed();
        let (id, pid) = parse_body(&response.body);
        self.pids.insert(pid);
        (id, pid)
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of our own unreaped child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    /// Waits up to `timeout` for the primary to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then: exit 0 in time, and no worker seen is left.
    fn stop_gracefully(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(EXIT_TIMEOUT);
        let stderr = self.stderr();
        let status =
            status.unwrap_or_else(|| panic!("still running {EXIT_TIMEOUT:?} after SIGTERM; stderr:\n{stderr}"));
        assert_eq!(status.code(), Some(0), "exit status after SIGTERM: {status}; stderr:\n{stderr}");
        self.assert_workers_gone();
    }

    /// No worker pid seen is left. The primary reaps its workers before it
    /// exits; a moment is allowed all the same.
    fn assert_workers_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut left: Vec<i32> = self.pids.iter().copied().filter(|&p| pid_exists(p)).collect();
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            left.retain(|&p| pid_exists(p));
        }
        assert!(left.is_empty(), "workers left behind: {left:?}; stderr:\n{}", self.stderr());
    }
}

impl Drop for Server {
    /// Kills what is still running: the primary's children first (the
    /// primary is stopped meanwhile so it starts no replacement), then the primary.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.pid();
        // SAFETY: signals to our own unreaped child and to its children,
        // which cannot be reaped (hence their pids not reused) while it is stopped.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
            for worker in children_of(pid) {
                libc::kill(worker, libc::SIGKILL);
            }
            libc::kill(pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Checks the ready line against the arguments and returns the port.
fn parse_ready(line: &str, args: &[&str]) -> u16 {
    let arg = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
    let rest = line.strip_prefix("ready http://127.0.0.1:").unwrap_or_else(|| panic!("bad ready line {line:?}"));
    let (port, rest) = rest.split_once(' ').unwrap_or_else(|| panic!("bad ready line {line:?}"));
    let expected = format!("workers={} policy={}", arg("--workers").unwrap_or("?"), arg("--policy").unwrap_or("rr"));
    assert_eq!(rest, expected, "ready line {line:?}");
    let port: u16 = port.parse().unwrap_or_else(|_| panic!("bad port in {line:?}"));
    assert_ne!(port, 0, "the ready line must give the real port: {line:?}");
    port
}

/// The pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            // The field after the parenthesized command name is the state, then the ppid.
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

// ----- a small HTTP/1.1 client -----------------------------------------------

#[derive(Debug)]
struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn header(response: &Response, name: &str) -> Option<String> {
    response.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_ascii_lowercase())
}

/// `worker <id> pid <pid>\n` → (id, pid).
fn parse_body(body: &str) -> (u32, i32) {
    let words: Vec<&str> = body.split_whitespace().collect();
    match (body.ends_with('\n'), words.as_slice()) {
        (true, ["worker", id, "pid", pid]) => match (id.parse(), pid.parse()) {
            (Ok(id), Ok(pid)) => (id, pid),
            _ => panic!("bad body {body:?}"),
        },
        _ => panic!("bad body {body:?}"),
    }
}

struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client { reader: BufReader::new(stream) }
    }

    fn send(&mut self, close: bool) {
        let request = if close {
            "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        } else {
            "GET / HTTP/1.1\r\nHost: test\r\n\r\n"
        };
        self.reader.get_mut().write_all(request.as_bytes()).expect("send request");
    }

    /// Reads one response, framed by its Content-Length; checks `200 OK`.
    fn read_response(&mut self) -> Response {
        let mut status = String::new();
        self.reader.read_line(&mut status).expect("read status line");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("read header");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("bad header {line:?}"));
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        let mut response = Response { status: status.trim_end().to_string(), headers, body: String::new() };
        assert_eq!(response.status, "HTTP/1.1 200 OK", "{response:?}");
        let length: usize = header(&response, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length: {response:?}"));
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("read body");
        response.body = String::from_utf8(body).expect("utf-8 body");
        response
    }

    fn request(&mut self, close: bool) -> Response {
        self.send(close);
        self.read_response()
    }

    /// The server closes the connection: EOF (or a reset), not a timeout.
    fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "bytes after the last response: {rest:?}"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the connection did not close: {e}"),
        }
    }
}

// ----- the scenarios ---------------------------------------------------------

/// Two workers, rr: both answer, keep-alive, pipelining and `Connection:
/// close` work, SIGTERM stops everything with exit 0.
fn serves_and_stops(binary: &Path) {
    let mut server = Server::start(binary, &["--workers", "2", "--port", "0"]);

    // New connections: rr hands them to both workers.
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for _ in 0..40 {
        *counts.entry(server.get_once().0).or_default() += 1;
    }
    assert_eq!(counts.len(), 2, "requests per worker id: {counts:?}; stderr:\n{}", server.stderr());

    // Keep-alive: several requests on one connection, one worker answers them all.
    let mut client = Client::connect(server.port);
    let mut seen = HashSet::new();
    for _ in 0..5 {
        let response = client.request(false);
        assert_ne!(header(&response, "connection").as_deref(), Some("close"), "{response:?}");
        seen.insert(parse_body(&response.body));
    }
    // Pipelined: three requests in one write, three responses in order.
    client.reader.get_mut().write_all("GET / HTTP/1.1\r\nHost: test\r\n\r\n".repeat(3).as_bytes()).unwrap();
    for _ in 0..3 {
        seen.insert(parse_body(&client.read_response().body));
    }
    // Then `Connection: close`: answered, and the server closes.
    let response = client.request(true);
    assert_eq!(header(&response, "connection").as_deref(), Some("close"), "{response:?}");
    seen.insert(parse_body(&response.body));
    client.assert_closed();
    assert_eq!(seen.len(), 1, "one connection, one worker: {seen:?}");
    server.pids.extend(seen.iter().map(|&(_, pid)| pid));

    assert_eq!(server.pids.len(), 2, "worker pids: {:?}", server.pids);
    server.stop_gracefully();
}

/// The shared policy: the kernel picks the worker, so only service is checked.
fn serves_shared(binary: &Path) {
    serves_with(binary, "shared");
}

/// Ten requests served under `policy`.
fn serves_with(binary: &Path, policy: &str) {
    let mut server = Server::start(binary, &["--workers", "2", "--port", "0", "--policy", policy]);
    for _ in 0..10 {
        server.get_once();
    }
    server.stop_gracefully();
}

/// SIGTERM while requests are under way: a request already sent (even in
/// part) on a keep-alive connection is answered with `Connection: close`, an
/// idle keep-alive connection is closed after the idle grace (1 s), and the
/// primary exits 0 with no worker left.
fn finishes_in_flight_requests(binary: &Path) {
    let mut server = Server::start(binary, &["--workers", "1", "--port", "0"]);
    let mut busy = Client::connect(server.port);
    server.pids.insert(parse_body(&busy.request(false).body).1);
    let mut idle = Client::connect(server.port);
    idle.request(false);
    // Half a request, then SIGTERM, then the rest.
    busy.reader.get_mut().write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stopped = Instant::now();
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    busy.reader.get_mut().write_all(b"st: test\r\n\r\n").unwrap();
    let response = busy.read_response();
    assert_eq!(header(&response, "connection").as_deref(), Some("close"), "{response:?}");
    busy.assert_closed();
    idle.assert_closed();
    let waited = stopped.elapsed();
    assert!(waited < Duration::from_secs(4), "the idle connection stayed open {waited:?}");
    let status = server.wait_exit(EXIT_TIMEOUT).expect("still running after SIGTERM");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
    server.assert_workers_gone();
}

/// Sends requests on new connections until `done` says stop or `timeout`
/// passes; each must succeed. Returns the (id, pid) of every answer, in order.
fn requests_until(
    server: &mut Server,
    timeout: Duration,
    mut done: impl FnMut(&[(u32, i32)]) -> bool,
) -> Vec<(u32, i32)> {
    let deadline = Instant::now() + timeout;
    let mut answers = Vec::new();
    while !done(&answers) {
        assert!(
            Instant::now() < deadline,
            "gave up after {timeout:?}; {} answers, the last ones: {:?}; stderr:\n{}",
            answers.len(),
            &answers[answers.len().saturating_sub(20)..],
            server.stderr()
        );
        answers.push(server.get_once());
    }
    answers
}

/// A worker killed from outside is replaced, and no request fails meanwhile.
fn replaces_a_killed_worker(binary: &Path) {
    let mut server = Server::start(binary, &["--workers", "2", "--port", "0"]);
    let before: HashMap<u32, i32> = requests_until(&mut server, Duration::from_secs(10), |a| {
        a.iter().map(|x| x.0).collect::<HashSet<_>>().len() == 2
    })
    .into_iter()
    .collect();
    let (&victim_id, &victim) = before.iter().next().unwrap();
    // SAFETY: kill(2) on a worker of our server, which has not reaped it (it cannot have exited yet).
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    requests_until(&mut server, Duration::from_secs(15), |answers| {
        let ids: HashSet<u32> = answers.iter().rev().take(10).map(|a| a.0).collect();
        ids.len() == 2 && !ids.contains(&victim_id)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_exists(victim) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_exists(victim), "the killed worker {victim} was not reaped");
    server.stop_gracefully();
}

/// SIGHUP: every worker is replaced, one by one, and no request fails, on
/// a keep-alive connection (answered, then closed by its leaving worker) or
/// on new connections.
fn reloads_on_sighup(binary: &Path) {
    let mut server = Server::start(binary, &["--workers", "2", "--port", "0"]);
    let old: HashSet<u32> = requests_until(&mut server, Duration::from_secs(10), |a| {
        a.iter().map(|x| x.0).collect::<HashSet<_>>().len() == 2
    })
    .into_iter()
    .map(|(id, _)| id)
    .collect();
    let mut client = Client::connect(server.port);
    let first = parse_body(&client.request(false).body);
    server.signal(libc::SIGHUP);
    // The keep-alive connection's worker is asked to leave: it answers what
    // comes, saying `Connection: close`, then closes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = client.request(false);
        assert_eq!(parse_body(&response.body), first, "one connection, one worker");
        if header(&response, "connection").as_deref() == Some("close") {
            client.assert_closed();
            break;
        }
        assert!(Instant::now() < deadline, "the keep-alive connection was never closed; stderr:\n{}", server.stderr());
    }
    // New connections go on until the last ten come from two new workers.
    requests_until(&mut server, Duration::from_secs(20), |answers| {
        let ids: HashSet<u32> = answers.iter().rev().take(10).map(|a| a.0).collect();
        answers.len() >= 10 && ids.len() == 2 && ids.is_disjoint(&old)
    });
    server.stop_gracefully();
}

/// How a deploy puts a new program in place.
#[derive(Clone, Copy, PartialEq)]
enum Deploy {
    /// A new file renamed over the running program's (the kernel then names
    /// the running one "<path> (deleted)", which cannot be exec'd).
    RenameOver,
    /// Releases in their own directories, `current` a symlink switched to
    /// the new one (the kernel names the running program by its resolved
    /// path, the old release).
    SwitchSymlink,
}

/// A deploy while the server runs, then SIGHUP: the reload starts workers
/// running the new program, and a worker killed afterwards is replaced by
/// one running it too.
fn reloads_the_deployed_program(binary: &Path, deploy: Deploy) {
    let name = binary.file_name().expect("a file name");
    let tag = if deploy == Deploy::RenameOver { "rename" } else { "symlink" };
    let dir =
        std::env::temp_dir().join(format!("rcluster-deploy-{}-{tag}-{}", std::process::id(), name.to_string_lossy()));
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = RemoveOnDrop(dir.clone());
    // A release has the build's layout: the program in bin/, the C one's
    // library beside bin/ (its RUNPATH is $ORIGIN/..).
    let library = binary.parent().and_then(Path::parent).map(|d| d.join("librcluster.so"));
    let needs_library = name.to_string_lossy().ends_with("_c");
    let install = |release: &Path| {
        std::fs::create_dir_all(release.join("bin")).expect("mkdir");
        // Written aside, then renamed into place, as deploy tools do.
        let staged = release.join("bin").join("staged");
        std::fs::copy(binary, &staged).expect("copy the program");
        std::fs::rename(&staged, release.join("bin").join(name)).expect("put the program in place");
        if needs_library {
            // Renamed too: a library rewritten in place under a running
            // process that has it mapped would crash it.
            let library = library.clone().filter(|l| l.exists()).expect("the C example's librcluster.so");
            let staged = release.join("librcluster.so.staged");
            std::fs::copy(library, &staged).expect("copy the library");
            std::fs::rename(&staged, release.join(SONAME)).expect("put the library in place");
        }
    };
    let (program, new_program) = match deploy {
        Deploy::RenameOver => {
            install(&dir);
            let program = dir.join("bin").join(name);
            (program.clone(), program)
        }
        Deploy::SwitchSymlink => {
            install(&dir.join("releases/1"));
            std::os::unix::fs::symlink("releases/1", dir.join("current")).expect("symlink");
            (dir.join("current/bin").join(name), dir.join("releases/2/bin").join(name))
        }
    };

    let mut server = Server::start(&program, &["--workers", "2", "--port", "0"]);
    let old: HashSet<u32> = requests_until(&mut server, Duration::from_secs(10), |a| {
        a.iter().map(|x| x.0).collect::<HashSet<_>>().len() == 2
    })
    .into_iter()
    .map(|(id, _)| id)
    .collect();

    match deploy {
        Deploy::RenameOver => install(&dir),
        Deploy::SwitchSymlink => {
            install(&dir.join("releases/2"));
            std::os::unix::fs::symlink("releases/2", dir.join("current.new")).expect("symlink");
            std::fs::rename(dir.join("current.new"), dir.join("current")).expect("switch the symlink");
        }
    }
    server.signal(libc::SIGHUP);
    let answers = requests_until(&mut server, Duration::from_secs(20), |answers| {
        let ids: HashSet<u32> = answers.iter().rev().take(10).map(|a| a.0).collect();
        answers.len() >= 10 && ids.len() == 2 && ids.is_disjoint(&old)
    });
    let expected = std::fs::canonicalize(&new_program).expect("the new program");
    let runs_new_program = |pid: i32| {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("a worker's /proc/PID/exe");
        assert_eq!(exe, expected, "worker {pid} runs {} instead of the deployed program", exe.display());
    };
    let new: HashMap<u32, i32> = answers.iter().rev().take(10).copied().collect();
    new.values().for_each(|&pid| runs_new_program(pid));

    let (&victim_id, &victim) = new.iter().next().unwrap();
    // SAFETY: kill(2) on a worker of our server, which has not reaped it (it answered just now).
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let answers = requests_until(&mut server, Duration::from_secs(15), |answers| {
        let ids: HashSet<u32> = answers.iter().rev().take(10).map(|a| a.0).collect();
        ids.len() == 2 && !ids.contains(&victim_id)
    });
    answers.iter().rev().take(10).filter(|a| !new.contains_key(&a.0)).for_each(|a| runs_new_program(a.1));
    server.stop_gracefully();
}

/// Runs `binary ARGS`, expecting it to exit within 10 s (it is killed
/// otherwise). Returns its status, stdout and stderr.
fn run_to_exit(binary: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut command = Command::new(binary);
    without_target_library_path(&mut command);
    let mut child =
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    // Kills the child if an assertion below fails while it still runs.
    struct KillOnDrop<'a>(&'a mut Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let guard = KillOnDrop(&mut child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{args:?}: still running after 10 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    // It has exited: its pipes hold all it wrote.
    let (mut stdout, mut stderr) = (String::new(), String::new());
    guard.0.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    guard.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status, stdout, stderr)
}

/// Bad arguments: exit code 2 and one line on stderr, nothing started.
fn rejects_bad_arguments(binary: &Path) {
    let cases: [&[&str]; 7] = [
        &["--workers", "0"],
        &["--workers", "two"],
        &["--port", "70000"],
        &["--policy", "fastest"],
        &["--host", "not an address"],
        &["--bogus"],
        &["--port"],
    ];
    for args in cases {
        let (status, stdout, stderr) = run_to_exit(binary, args);
        assert_eq!(status.code(), Some(2), "{args:?}: {status}; stderr: {stderr:?}");
        assert!(stdout.is_empty(), "{args:?}: stdout {stdout:?}");
        assert!(
            stderr.ends_with('\n') && stderr.matches('\n').count() == 1 && stderr.trim().len() > 10,
            "{args:?}: want one line on stderr, got {stderr:?}"
        );
    }
}

/// A port already taken: exit code 1 with a message, no ready line.
fn fails_on_a_port_in_use(binary: &Path) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port().to_string();
    let (status, stdout, stderr) = run_to_exit(binary, &["--workers", "1", "--port", &port]);
    assert_eq!(status.code(), Some(1), "{status}; stderr: {stderr:?}");
    assert!(stdout.is_empty(), "stdout {stdout:?}");
    assert!(stderr.contains(&port), "the message names the address: {stderr:?}");
}

#[test]
fn c_example_serves_and_stops() {
    serves_and_stops(&binaries().c);
}

#[test]
fn c_example_serves_with_shared_policy() {
    serves_shared(&binaries().c);
}

#[test]
fn c_example_serves_with_hybrid_policy() {
    serves_with(&binaries().c, "hybrid");
}

#[test]
fn c_example_finishes_in_flight_requests() {
    finishes_in_flight_requests(&binaries().c);
}

#[test]
fn c_example_rejects_bad_arguments() {
    rejects_bad_arguments(&binaries().c);
}

#[test]
fn c_example_fails_on_a_port_in_use() {
    fails_on_a_port_in_use(&binaries().c);
}

#[test]
fn rust_example_fails_on_a_port_in_use() {
    fails_on_a_port_in_use(&binaries().rust);
}

#[test]
fn rust_example_serves_and_stops() {
    serves_and_stops(&binaries().rust);
}

#[test]
fn rust_example_serves_with_shared_policy() {
    serves_shared(&binaries().rust);
}

#[test]
fn rust_example_finishes_in_flight_requests() {
    finishes_in_flight_requests(&binaries().rust);
}

#[test]
fn rust_example_rejects_bad_arguments() {
    rejects_bad_arguments(&binaries().rust);
}

#[test]
fn c_example_replaces_a_killed_worker() {
    replaces_a_killed_worker(&binaries().c);
}

#[test]
fn c_example_reloads_on_sighup() {
    reloads_on_sighup(&binaries().c);
}

#[test]
fn rust_example_replaces_a_killed_worker() {
    replaces_a_killed_worker(&binaries().rust);
}

#[test]
fn rust_example_reloads_on_sighup() {
    reloads_on_sighup(&binaries().rust);
}

#[test]
fn c_example_reloads_a_program_renamed_over_it() {
    reloads_the_deployed_program(&binaries().c, Deploy::RenameOver);
}

#[test]
fn rust_example_reloads_a_program_renamed_over_it() {
    reloads_the_deployed_program(&binaries().rust, Deploy::RenameOver);
}

#[test]
fn c_example_reloads_through_a_switched_symlink() {
    reloads_the_deployed_program(&binaries().c, Deploy::SwitchSymlink);
}

#[test]
fn rust_example_reloads_through_a_switched_symlink() {
    reloads_the_deployed_program(&binaries().rust, Deploy::SwitchSymlink);
}

/// The README's minimal C example (examples/c/minimal.c): its two workers
/// serve, each event is printed with its name, and SIGTERM stops it with
/// exit 0, the workers gone.
#[test]
fn minimal_c_example_serves_and_stops() {
    let mut child = Command::new(&binaries().minimal)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start minimal_c");
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) on our own child, not yet reaped while this guard lives.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let guard = Kill(child.id() as i32);
    let lines = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || lines.lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    let next = || rx.recv_timeout(READY_TIMEOUT).expect("a line from minimal_c");
    let mut ports = HashSet::new();
    while ports.len() < 2 {
        let line = next();
        if let Some(rest) = line.strip_prefix("listening ") {
            ports.insert((rest.to_owned(), rest.rsplit("port=").next().unwrap().parse::<u16>().unwrap()));
        }
    }
    let port = ports.iter().next().unwrap().1;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.contains("hello from worker "), "{response}");
    // SAFETY: kill(2) on our own running child.
    assert_eq!(unsafe { libc::kill(guard.0, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "minimal_c still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let mut seen: Vec<String> = rx.try_iter().collect();
    seen.retain(|l| l.starts_with("exit ") || l.starts_with("shutdown "));
    assert_eq!(seen.len(), 3, "two exits and the shutdown: {seen:?}");
}
