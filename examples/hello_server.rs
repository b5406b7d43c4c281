//! rcluster's example HTTP server in Rust, on the crate's Rust API.
//!
//! ```text
//! cargo run --release --example hello_server -- [--workers N] [--port P] [--host H] [--policy rr|shared|reuseport|least]
//! ```
//!
//! One program is both the primary and the workers: the primary starts N
//! copies of this program (same arguments) as workers, and
//! [`rcluster::is_worker`] tells a copy which one it is.
//!
//! The primary binds HOST:PORT up front (so port 0 gives a real port before
//! any worker starts), starts the workers, waits until every one listens,
//! prints `ready http://HOST:PORT workers=N policy=POLICY`, and reports what
//! happens until the cluster shuts down. The library does the rest: with
//! `handle_signals: true`, SIGTERM and SIGINT start a graceful shutdown (the
//! primary exits 0 once every worker is gone), SIGHUP a rolling reload,
//! SIGTTIN/SIGTTOU add or remove a worker; a worker that dies without being
//! asked to is restarted.
//!
//! A worker answers every HTTP/1.1 request with `worker <id> pid <pid>\n`,
//! one thread per connection. When the primary asks it to leave, `accept`
//! hands out what is still queued for it and then says `Closed`; the worker
//! answers every request it already has (with `Connection: close`), closes
//! idle keep-alive connections and exits 0.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcluster::{Code, Config, Event, Exit, PolicyKind, Primary, Worker, WorkerEvent};

const USAGE: &str = "usage: hello_server [--workers N] [--port P] [--host H] [--policy rr|shared|reuseport|least]";
/// The primary tells its workers the port it bound (the real one when 0 was asked).
const PORT_ENV: &str = "HELLO_SERVER_PORT";
/// How long workers have to start listening before the primary gives up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A request head larger than this is refused (431).
const MAX_HEAD: usize = 16 * 1024;
/// How long a leaving worker may take to finish what it holds.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a leaving worker keeps a keep-alive connection that is between
/// requests: a busy client's next request is usually already on its way, and
/// is better answered (with `Connection: close`) than cut off.
const IDLE_GRACE: Duration = Duration::from_secs(1);
/// When the primary is gone: be quick.
const GONE_DRAIN: Duration = Duration::from_secs(1);
/// How often an idle connection thread looks whether the worker is draining.
const IDLE_CHECK: Duration = Duration::from_millis(100);

struct Options {
    workers: usize,
    port: u16,
    host: String,
    policy: PolicyKind,
}

fn main() -> ExitCode {
    let options = parse_args();
    let code = if rcluster::is_worker() { run_worker(&options) } else { run_primary(&options) };
    ExitCode::from(code)
}

// ----- arguments -------------------------------------------------------------

fn bad_usage(message: String) -> ! {
    eprintln!("hello_server: {message} ({USAGE})");
    std::process::exit(2);
}

fn parse_args() -> Options {
    let mut options = Options {
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        port: 8080,
        host: "127.0.0.1".into(),
        policy: PolicyKind::RoundRobin,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        // Both "--flag value" and "--flag=value".
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        if !["--workers", "--port", "--host", "--policy"].contains(&flag.as_str()) {
            bad_usage(format!("unknown argument {arg:?}"));
        }
        let value = inline.or_else(|| args.next()).unwrap_or_else(|| bad_usage(format!("{flag} needs a value")));
        match flag.as_str() {
            "--workers" => options.workers = number(&flag, &value, 1, 1024) as usize,
            "--port" => options.port = number(&flag, &value, 0, 65535) as u16,
            "--host" => {
                if rcluster::parse_address(&value, 0).is_err() {
                    bad_usage(format!(
                        "--host wants an IP address, \"localhost\" or \"\" (all interfaces), not {value:?}"
                    ));
                }
                options.host = value;
            }
            _ => {
                options.policy = PolicyKind::from_name(&value).unwrap_or_else(|_| {
                    bad_usage(format!("--policy wants rr, shared, reuseport or least, not {value:?}"))
                })
            }
        }
    }
    options
}

fn number(flag: &str, text: &str, min: u64, max: u64) -> u64 {
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) && text.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => bad_usage(format!("{flag} wants a whole number from {min} to {max}, not {text:?}")),
    }
}

// ----- primary ---------------------------------------------------------------

struct Supervisor<'a> {
    options: &'a Options,
    primary: Primary,
    port: u16,
    /// Workers that are listening and have not exited.
    listening: HashSet<u32>,
    ready: bool,
    /// Shutting down because something went wrong: exit 1.
    failing: bool,
}

impl Supervisor<'_> {
    fn fail(&mut self, why: &str) {
        if !self.failing {
            eprintln!("hello_server: {why}; shutting down");
        }
        self.failing = true;
        let _ = self.primary.shutdown(Duration::from_secs(2));
    }

    fn print_ready(&self) {
        let host = match self.options.host.as_str() {
            "" => "0.0.0.0".to_string(),
            h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
            h => h.to_string(),
        };
        println!(
            "ready http://{host}:{} workers={} policy={}",
            self.port,
            self.options.workers,
            self.options.policy.name()
        );
        let _ = std::io::stdout().flush();
    }

    fn on_exit(&mut self, worker: u32, pid: i32, exit: Exit, after_disconnect: bool) {
        match exit {
            Exit::Code(code) => eprintln!("hello_server: worker {worker} (pid {pid}) exited with code {code}"),
            Exit::Signal(signal) => {
                eprintln!("hello_server: worker {worker} (pid {pid}) was killed by signal {signal}")
            }
            Exit::Unknown => eprintln!("hello_server: worker {worker} (pid {pid}) is gone"),
        }
        self.listening.remove(&worker);
        // Before ready, only a worker leaving cleanly on request is expected
        // (a SIGTERM during startup); anything else means workers cannot start.
        let expected = self.ready || (after_disconnect && exit == Exit::Code(0));
        if !expected {
            self.fail("a worker exited before every worker was listening");
        }
    }

    /// Handles one event; true once the shutdown is complete.
    fn on_event(&mut self, event: Event) -> bool {
        match event {
            // After ready, a start is a restart, a reload or a scale.
            Event::Fork { worker, pid, .. } if self.ready => {
                eprintln!("hello_server: worker {worker} (pid {pid}) started")
            }
            Event::Listening { worker, .. } => {
                self.listening.insert(worker);
                if !self.ready && !self.failing && self.listening.len() >= self.options.workers {
                    self.ready = true;
                    self.print_ready();
                }
            }
            Event::Exit { worker, pid, exit, after_disconnect } => self.on_exit(worker, pid, exit, after_disconnect),
            Event::WorkerError { worker, message, .. } => {
                eprintln!("hello_server: worker {worker} broke the protocol: {message}")
            }
            Event::CrashLoop { slot, .. } => {
                eprintln!("hello_server: slot {slot} keeps crashing; it is not restarted until a reload (SIGHUP)")
            }
            Event::Unresponsive { worker, pid } => {
                eprintln!("hello_server: worker {worker} (pid {pid}) stopped answering; it is replaced")
            }
            Event::ReloadDone { generation } => {
                eprintln!("hello_server: reload done: every worker is of generation {generation}")
            }
            Event::ReloadFailed { generation, message } => {
                eprintln!("hello_server: reload to generation {generation} stopped: {message}")
            }
            Event::Shutdown => return true,
            _ => {} // Online, Disconnect, Message: nothing to say
        }
        false
    }
}

fn run_primary(options: &Options) -> u8 {
    let config = Config {
        policy: options.policy,
        // SIGTERM/SIGINT: graceful shutdown, SIGHUP: rolling reload, SIGTTIN/SIGTTOU: scale.
        handle_signals: true,
        ..Config::default()
    };
    let primary = match Primary::new(config) {
        Ok(primary) => primary,
        Err(e) => {
            eprintln!("hello_server: cannot create the primary: {e}");
            return 1;
        }
    };
    // Bind first: with --port 0 the workers must ask for the port the OS picked.
    let port = match primary.listen(&options.host, options.port) {
        Ok(address) => address.port(),
        Err(e) => {
            eprintln!("hello_server: cannot listen on {}:{}: {e}", options.host, options.port);
            return 1;
        }
    };
    let mut sup = Supervisor { options, primary, port, listening: HashSet::new(), ready: false, failing: false };
    for _ in 0..options.workers {
        let env = vec![(OsString::from(PORT_ENV), OsString::from(port.to_string()))];
        if let Err(e) = sup.primary.fork(env) {
            if e.code() == Code::State {
                break; // a SIGTERM already started the shutdown
            }
            eprintln!("hello_server: cannot start a worker: {e}");
            sup.fail("cannot start the workers");
            break;
        }
    }

    let startup_deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let timeout = (!sup.ready && !sup.failing).then(|| startup_deadline.saturating_duration_since(Instant::now()));
        match sup.primary.next_event(timeout) {
            Ok(Some(event)) => {
                if sup.on_event(event) {
                    break;
                }
            }
            Ok(None) => {
                if !sup.ready && !sup.failing && Instant::now() >= startup_deadline {
                    sup.fail("the workers did not start listening in time");
                }
            }
            Err(e) => {
                eprintln!("hello_server: reading events: {e}");
                sup.failing = true;
                break;
            }
        }
    }
    if !sup.ready && !sup.failing {
        eprintln!("hello_server: stopped before every worker was listening");
    }
    let failing = sup.failing;
    drop(sup); // frees the primary: every worker is gone and reaped
    u8::from(failing)
}

// ----- worker ----------------------------------------------------------------

/// What the worker's connection threads share with its accept loop.
struct Serving {
    /// Told of every finished connection (the load-aware policy counts them).
    worker: Worker,
    body: String,
    /// Set once the worker drains: from then on keep-alive connections
    /// between requests close (and every answer says `Connection: close`).
    close_idle_at: OnceLock<Instant>,
    /// Connections still open, and a condvar signalled when one closes.
    open: Mutex<usize>,
    closed: Condvar,
}

/// Counts a connection as open while it lives.
struct OpenConn(Arc<Serving>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        let _ = self.0.worker.done(1); // for the load-aware policy
        *self.0.open.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.closed.notify_all();
    }
}

fn run_worker(options: &Options) -> u8 {
    let worker = match Worker::open() {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("hello_server: cannot open the worker: {e}");
            return 1;
        }
    };
    // The primary's real port (the one it bound for --port 0).
    let port = std::env::var(PORT_ENV).ok().and_then(|p| p.parse().ok()).unwrap_or(options.port);
    let listener = match worker.listen(&options.host, port, Some(Duration::from_secs(10))) {
        Ok(listener) => listener,
        Err(e) => {
            // Refused because the primary is shutting down (a SIGTERM during startup), or gone: just leave.
            let leaving = e.code() == Code::Closed || e.errno() == libc::ESHUTDOWN;
            if !leaving {
                eprintln!("hello_server: worker {} cannot listen on {}:{port}: {e}", worker.id(), options.host);
            }
            worker.close();
            return u8::from(!leaving);
        }
    };
    let serving = Arc::new(Serving {
        worker: worker.clone(),
        body: format!("worker {} pid {}\n", worker.id(), std::process::id()),
        close_idle_at: OnceLock::new(),
        open: Mutex::new(0),
        closed: Condvar::new(),
    });

    // After the primary asks us to leave, accept still hands out what was
    // queued for us, then says Closed; likewise when the primary is gone.
    loop {
        match listener.accept(None) {
            Ok(fd) => {
                *serving.open.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                let open = OpenConn(serving.clone());
                std::thread::spawn(move || serve(TcpStream::from(fd), open));
            }
            Err(e) if e.code() == Code::Closed => break,
            Err(e) => {
                eprintln!("hello_server: worker {}: accept: {e}", worker.id());
                break;
            }
        }
    }

    // Asked to leave, or the primary is gone (then be quick).
    let mut primary_gone = false;
    loop {
        match worker.next_event(Some(Duration::ZERO)) {
            Ok(Some(WorkerEvent::PrimaryGone)) | Err(_) => {
                primary_gone = true;
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
        }
    }
    let now = Instant::now();
    let _ = serving.close_idle_at.set(if primary_gone { now } else { now + IDLE_GRACE });
    let deadline = now + if primary_gone { GONE_DRAIN } else { DRAIN };
    let mut open = serving.open.lock().unwrap_or_else(|p| p.into_inner());
    while *open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break; // what is left is cut off when the process exits
        }
        open = serving.closed.wait_timeout(open, left).unwrap_or_else(|p| p.into_inner()).0;
    }
    drop(open);
    listener.close();
    worker.close();
    0
}

/// A parsed request head: how to answer it and what follows it.
struct Request {
    head_only: bool,
    close: bool,
    http10: bool,
    body_length: usize,
    bad: bool,
}

fn parse_head(head: &str) -> Request {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, _target, version) = (parts.next(), parts.next(), parts.next());
    let version_ok =
        parts.next().is_none() && version.is_some_and(|v| v.len() == 8 && v.starts_with("HTTP/1.")) && method.is_some();
    let mut request = Request {
        head_only: method == Some("HEAD"),
        close: version == Some("HTTP/1.0"),
        http10: version == Some("HTTP/1.0"),
        body_length: 0,
        bad: !version_ok,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let has = |token: &str| value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token));
        if name.eq_ignore_ascii_case("connection") {
            if has("close") {
                request.close = true;
            } else if has("keep-alive") {
                request.close = false;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse() {
                Ok(n) => request.body_length = n,
                Err(_) => request.bad = true,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // A chunked body is not parsed here: answer, then close instead of reading it.
            request.close = true;
        }
    }
    request
}

fn response(status: &str, body: &str, head_only: bool, connection: Option<&str>) -> String {
    let connection = connection.map_or(String::new(), |c| format!("Connection: {c}\r\n"));
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n{}",
        body.len(),
        if head_only { "" } else { body }
    )
}

/// Answers HTTP/1.1 requests on one connection until it closes, or until it
/// is idle while the worker drains.
fn serve(mut stream: TcpStream, open: OpenConn) {
    let serving = &open.0;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_CHECK));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf: Vec<u8> = Vec::new();
    let mut skip = 0usize; // request body bytes still to skip
    let mut served = 0u64;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Answer every complete request in the buffer.
        loop {
            let take = skip.min(buf.len());
            buf.drain(..take);
            skip -= take;
            if skip > 0 {
                break;
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() >= MAX_HEAD {
                    let reply = response("431 Request Header Fields Too Large", "", false, Some("close"));
                    let _ = stream.write_all(reply.as_bytes());
                    return;
                }
                break;
            };
            let request = parse_head(&String::from_utf8_lossy(&buf[..end]));
            buf.drain(..end + 4);
            if request.bad {
                let _ = stream.write_all(response("400 Bad Request", "", false, Some("close")).as_bytes());
                return;
            }
            let close = request.close || serving.close_idle_at.get().is_some();
            let connection = if close {
                Some("close")
            } else if request.http10 {
                Some("keep-alive")
            } else {
                None
            };
            let reply = response("200 OK", &serving.body, request.head_only, connection);
            if stream.write_all(reply.as_bytes()).is_err() || close {
                return;
            }
            served += 1;
            skip = request.body_length;
        }
        // Draining, after the grace: a connection between requests closes. One
        // that never sent a request may still be sending it: it waits for the deadline.
        let idle = served > 0 && buf.is_empty() && skip == 0;
        if idle && serving.close_idle_at.get().is_some_and(|&at| Instant::now() >= at) {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}
