//! The opt-in metrics endpoint (`Config::metrics_address`): Prometheus's
//! text format at `GET /metrics`, and `GET /healthz`, which answers 200
//! only while the cluster serves (not stopping, some worker listening) and
//! 503 otherwise.
//!
//! It runs on a thread of its own, not the dispatch loop's, so a slow or
//! hostile scraper never stalls dispatch: each request takes one snapshot
//! from the loop (`Command::Metrics`) and is answered from it. One
//! connection at a time, each bounded by a 2 s timeout; the bodies are a few
//! kilobytes.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Command, Shared};
use crate::error::{Code, Error, Result};
use crate::event::{Metrics, WorkerState, WorkerStats};
use crate::sys::{self, Deadline};

const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The endpoint's thread; stopped and joined when dropped.
pub(crate) struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `address` (`HOST:PORT`, an IP literal or `localhost`) and serves it.
pub(crate) fn start(address: &str, shared: Arc<Shared>) -> Result<MetricsServer> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| Error::new(Code::Address, format!("metrics address {address:?} is not HOST:PORT")))?;
    let socket_address = super::parse_address(host, port)?;
    let listener = TcpListener::bind(socket_address).map_err(|e| {
        Error::new(Code::Address, format!("cannot serve metrics on {address}: {e}"))
            .with_errno(e.raw_os_error().unwrap_or(0))
    })?;
    listener.set_nonblocking(true).map_err(|e| Error::os("set_nonblocking on the metrics listener", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("rcluster-metrics".into())
        .spawn(move || serve(listener, &shared, &stopping))
        .map_err(|e| Error::os("spawning the metrics thread", e))?;
    Ok(MetricsServer { stop, thread: Some(thread) })
}

fn serve(listener: TcpListener, shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        // Wake at least every 250 ms to see the stop flag.
        let mut pfd = [sys::pollfd(listener.as_raw_fd(), libc::POLLIN)];
        if !matches!(sys::poll(&mut pfd, Deadline::after(Some(Duration::from_millis(250)))), Ok(n) if n > 0) {
            continue;
        }
        while let Ok((stream, _)) = listener.accept() {
            let _ = answer(stream, shared);
        }
    }
}

fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(request.split(|&b| b == b'\r').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match snapshot(shared) {
            Some(metrics) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(&metrics)),
            None => ("503 Service Unavailable", "text/plain", "the primary has stopped\n".to_owned()),
        },
        ("GET", "/healthz") => match snapshot(shared) {
            Some(m) if m.primary.serving => ("200 OK", "text/plain", "serving\n".to_owned()),
            Some(_) => ("503 Service Unavailable", "text/plain", "not serving\n".to_owned()),
            None => ("503 Service Unavailable", "text/plain", "the primary has stopped\n".to_owned()),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics or /healthz\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// One snapshot from the loop, or `None` once it has stopped.
fn snapshot(shared: &Shared) -> Option<Metrics> {
    let (reply, answer) = mpsc::sync_channel(1);
    if !shared.submit(Command::Metrics { reply }) {
        return None;
    }
    answer.recv_timeout(IO_TIMEOUT).ok()
}

/// Prometheus's text exposition format, version 0.0.4.
fn render(m: &Metrics) -> String {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &mut dyn Iterator<Item = (String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let p = &m.primary;
    let one = |v: String| std::iter::once((String::new(), v));
    family(
        "rcluster_serving",
        "gauge",
        "1 while the cluster serves: not stopping, some worker listening.",
        &mut one((p.serving as u8).to_string()),
    );
    family(
        "rcluster_pending_connections",
        "gauge",
        "Accepted connections waiting for a worker.",
        &mut one(p.pending.to_string()),
    );
    family(
        "rcluster_accept_pauses_total",
        "counter",
        "Times accepting paused for lack of fds or memory.",
        &mut one(p.accept_pauses.to_string()),
    );
    family("rcluster_listeners", "gauge", "Listening sockets open.", &mut one(p.listeners.to_string()));
    family(
        "rcluster_generation",
        "gauge",
        "The reload generation new workers are started with.",
        &mut one(p.generation.to_string()),
    );
    family(
        "rcluster_primary_cpu_seconds_total",
        "counter",
        "CPU time of the primary's process.",
        &mut one(seconds(p.cpu)),
    );
    family(
        "rcluster_primary_resident_memory_bytes",
        "gauge",
        "Resident memory of the primary's process.",
        &mut one(p.rss_bytes.to_string()),
    );
    let states = [
        (WorkerState::Starting, "starting"),
        (WorkerState::Online, "online"),
        (WorkerState::Listening, "listening"),
        (WorkerState::Leaving, "leaving"),
        (WorkerState::Disconnected, "disconnected"),
    ];
    family(
        "rcluster_workers",
        "gauge",
        "Workers the primary knows, by state.",
        &mut states.iter().map(|(state, name)| {
            (format!("{{state=\"{name}\"}}"), m.workers.iter().filter(|w| w.state == *state).count().to_string())
        }),
    );
    let labels = |w: &WorkerStats| {
        let slot = w.slot.map_or_else(|| "none".to_owned(), |s| s.to_string());
        format!("{{worker=\"{}\",pid=\"{}\",slot=\"{slot}\",generation=\"{}\"}}", w.id, w.pid, w.generation)
    };
    let per_worker: [PerWorker; 9] = [
        ("rcluster_worker_dispatched_connections_total", "counter", "Connections handed to the worker.", |w| {
            w.dispatched.to_string()
        }),
        ("rcluster_worker_in_flight_connections", "gauge", "Connections handed over, not yet acknowledged.", |w| {
            w.in_flight.to_string()
        }),
        (
            "rcluster_worker_active_connections",
            "gauge",
            "Connections taken, not reported finished (least only).",
            |w| w.active.to_string(),
        ),
        ("rcluster_worker_slot_restarts_total", "counter", "Workers its slot had to restart.", |w| {
            w.restarts.to_string()
        }),
        ("rcluster_worker_uptime_seconds", "gauge", "Time since the worker was started.", |w| seconds(w.uptime)),
        (
            "rcluster_worker_messages_received_total",
            "counter",
            "Application messages the worker sent the primary.",
            |w| w.messages_in.to_string(),
        ),
        ("rcluster_worker_messages_sent_total", "counter", "Application messages the primary sent the worker.", |w| {
            w.messages_out.to_string()
        }),
        ("rcluster_worker_cpu_seconds_total", "counter", "CPU time of the worker's process.", |w| seconds(w.cpu)),
        ("rcluster_worker_resident_memory_bytes", "gauge", "Resident memory of the worker's process.", |w| {
            w.rss_bytes.to_string()
        }),
    ];
    for (name, kind, help, value) in per_worker {
        family(name, kind, help, &mut m.workers.iter().map(|w| (labels(w), value(w))));
    }
    out
}

/// A per-worker family: name, type, help, and the value for one worker.
type PerWorker = (&'static str, &'static str, &'static str, fn(&WorkerStats) -> String);

fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}
