//! rcluster's example HTTP server in Rust, on the crate's Rust API (the
//! contract every example keeps: examples/README.md).
//!
//! ```text
//! cargo run --release --example hello_server -- [--workers N] [--port P] [--host H] [--policy rr|shared|reuseport|least|hybrid]
//! ```
//!
//! One program is both the primary and its workers: the primary starts N
//! copies of itself, and [`rcluster::is_worker`] tells a copy which it is.
//! The primary binds HOST:PORT, starts the workers, prints `ready ...` once
//! all listen, and leaves the rest to the library (`handle_signals`:
//! SIGTERM/SIGINT stop gracefully, SIGHUP reloads worker by worker, a crashed
//! worker is restarted). A worker accepts and serves each connection on a
//! thread of its own (keep-alive, pipelining) until the primary asks it to
//! leave: `accept` then says [`Code::Leaving`], requests already received are
//! answered with `Connection: close`, idle connections closed, and the
//! worker exits 0.

use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rcluster::{Code, Config, Event, Exit, PolicyKind, Primary, Worker};

const USAGE: &str =
    "usage: hello_server [--workers N] [--port P] [--host H] [--policy rr|shared|reuseport|least|hybrid]";
/// The port the primary bound (the real one when 0 was asked), for its workers.
const PORT_ENV: &str = "HELLO_SERVER_PORT";
/// A leaving worker keeps an idle keep-alive connection this long (a busy
/// client's next request is usually on its way, better answered than cut off)...
const IDLE_GRACE: Duration = Duration::from_secs(1);
/// ...and everything else at most this long.
const DRAIN: Duration = Duration::from_secs(5);

struct Options {
    workers: usize,
    port: u16,
    host: String,
    policy: PolicyKind,
}

fn main() -> ExitCode {
    let options = parse_args();
    ExitCode::from(if rcluster::is_worker() { run_worker(&options) } else { run_primary(&options) })
}

fn bad_usage(message: String) -> ! {
    eprintln!("hello_server: {message} ({USAGE})");
    std::process::exit(2);
}

fn parse_args() -> Options {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut options = Options { workers, port: 8080, host: "127.0.0.1".into(), policy: PolicyKind::RoundRobin };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // "--flag value" or "--flag=value".
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let mut value =
            || inline.clone().or_else(|| args.next()).unwrap_or_else(|| bad_usage(format!("{flag} needs a value")));
        let number = |text: String, min: u64, max: u64| match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) && text.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => bad_usage(format!("{flag} wants a whole number from {min} to {max}, not {text:?}")),
        };
        match flag.as_str() {
            "--workers" => options.workers = number(value(), 1, 1024) as usize,
            "--port" => options.port = number(value(), 0, 65535) as u16,
            "--host" => {
                options.host = value();
                if rcluster::parse_address(&options.host, 0).is_err() {
                    bad_usage(format!("--host wants an IP address, \"localhost\" or \"\", not {:?}", options.host));
                }
            }
            "--policy" => {
                let name = value();
                options.policy = PolicyKind::from_name(&name).unwrap_or_else(|e| bad_usage(e.to_string()));
            }
            _ => bad_usage(format!("unknown argument {arg:?}")),
        }
    }
    options
}

// ----- the primary -----------------------------------------------------------

fn run_primary(options: &Options) -> u8 {
    // handle_signals: SIGTERM/SIGINT graceful stop, SIGHUP rolling reload.
    let config = Config { policy: options.policy, handle_signals: true, ..Config::default() };
    let primary = match Primary::new(config) {
        Ok(primary) => primary,
        Err(e) => return fail(&format!("cannot create the primary: {e}")),
    };
    // Bound first, so that with --port 0 every worker asks for the port the OS picked.
    let port = match primary.listen(&options.host, options.port) {
        Ok(address) => address.port(),
        Err(e) => return fail(&format!("cannot listen on {}:{}: {e}", options.host, options.port)),
    };
    for _ in 0..options.workers {
        // Workers run this program with these arguments; an error is a SIGTERM during startup.
        if primary.fork(vec![(OsString::from(PORT_ENV), OsString::from(port.to_string()))]).is_err() {
            break;
        }
    }
    let (mut listening, mut failed) = (0, false);
    loop {
        // Until ready, wait at most 30 s for the workers; then as long as it runs.
        let timeout = (listening < options.workers && !failed).then_some(Duration::from_secs(30));
        let event = match primary.next_event(timeout) {
            Ok(Some(event)) => event,
            Ok(None) | Err(_) => {
                eprintln!("hello_server: the workers did not start listening in time");
                failed = true;
                let _ = primary.shutdown(Duration::from_secs(2));
                continue;
            }
        };
        match event {
            Event::Listening { .. } => {
                listening += 1;
                if listening == options.workers {
                    let host = match options.host.as_str() {
                        "" => "0.0.0.0".to_string(),
                        h if h.contains(':') => format!("[{h}]"),
                        h => h.to_string(),
                    };
                    println!("ready http://{host}:{port} workers={} policy={}", options.workers, options.policy.name());
                    let _ = std::io::stdout().flush();
                }
            }
            // Before ready, only a worker leaving cleanly on request (a SIGTERM during startup) is expected.
            Event::Exit { exit, after_disconnect, .. }
                if listening < options.workers && !failed && !(after_disconnect && exit == Exit::Code(0)) =>
            {
                eprintln!("hello_server: a worker exited before all were listening");
                failed = true;
                let _ = primary.shutdown(Duration::from_secs(2));
            }
            Event::Shutdown => break,
            Event::Message { .. } => {}
            other => eprintln!("hello_server: {} {other:?}", other.kind().name()),
        }
    }
    u8::from(failed)
}

fn fail(message: &str) -> u8 {
    eprintln!("hello_server: {message}");
    1
}

// ----- a worker --------------------------------------------------------------

/// What the connection threads share: the answer, and when the worker started leaving.
struct Serving {
    worker: Worker,
    body: String,
    leaving_since: OnceLock<Instant>,
    open: AtomicUsize,
}

fn run_worker(options: &Options) -> u8 {
    let worker = match Worker::open() {
        Ok(worker) => worker,
        Err(e) => return fail(&format!("cannot open the worker: {e}")),
    };
    let port = std::env::var(PORT_ENV).ok().and_then(|p| p.parse().ok()).unwrap_or(options.port);
    let listener = match worker.listen(&options.host, port, Some(Duration::from_secs(10))) {
        Ok(listener) => listener,
        // Leaving: the cluster stopped while we started; Closed: the primary is gone.
        Err(e) if matches!(e.code(), Code::Leaving | Code::Closed) => return 0,
        Err(e) => return fail(&format!("worker cannot listen on {}:{port}: {e}", options.host)),
    };
    let body = format!("worker {} pid {}\n", worker.id(), std::process::id());
    let serving = Arc::new(Serving { worker: worker.clone(), body, leaving_since: OnceLock::new(), open: 0.into() });
    // A blocking accept also answers the primary's heartbeat. After the
    // connections already queued for us it says Leaving (asked to go) or
    // Closed (the primary is gone).
    loop {
        match listener.accept(None) {
            Ok(fd) => {
                serving.open.fetch_add(1, Ordering::SeqCst);
                let serving = serving.clone();
                std::thread::spawn(move || serve(TcpStream::from(fd), &serving));
            }
            Err(e) if matches!(e.code(), Code::Leaving | Code::Closed) => break,
            Err(e) => {
                eprintln!("hello_server: accept: {e}");
                break;
            }
        }
    }
    let since = *serving.leaving_since.get_or_init(Instant::now);
    while serving.open.load(Ordering::SeqCst) > 0 && since.elapsed() < DRAIN {
        std::thread::sleep(Duration::from_millis(10));
    }
    listener.close();
    worker.close();
    0
}

/// Answers each complete request; closes on `Connection: close`, HTTP/1.0, a
/// request with a body, or once the worker is leaving.
fn serve(mut stream: TcpStream, serving: &Serving) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100))); // to notice leaving
    let (mut input, mut chunk) = (Vec::new(), [0u8; 16 * 1024]);
    loop {
        if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&input[..end]).to_ascii_lowercase();
            input.drain(..end + 4);
            let close = ["\nconnection: close", "http/1.0", "\ncontent-length:", "\ntransfer-encoding:"]
                .iter()
                .any(|s| head.contains(s))
                || serving.leaving_since.get().is_some();
            let connection = if close { "Connection: close\r\n" } else { "" };
            let body = &serving.body;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n{body}",
                body.len()
            );
            if stream.write_all(reply.as_bytes()).is_err() || close {
                break;
            }
            continue;
        }
        // Once leaving, an idle connection gets a grace, a half-received request the drain time.
        let grace = if input.is_empty() { IDLE_GRACE } else { DRAIN };
        if serving.leaving_since.get().is_some_and(|since| since.elapsed() >= grace) || input.len() > 16 * 1024 {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => break,
        }
    }
    drop(stream);
    let _ = serving.worker.done(1); // the `least` policy counts the connections a worker holds
    serving.open.fetch_sub(1, Ordering::SeqCst);
}
