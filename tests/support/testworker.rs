//! The worker program the integration tests spawn. It uses the C ABI only.
//!
//! `rcluster-testworker MODE` (or `TEST_MODE=MODE`), with the address in `TEST_HOST`/`TEST_PORT`:
//! - `http`: serve HTTP (`worker <id> pid <pid>`), leave when asked;
//! - `echo`: send every message back to the primary, prefixed with "echo:";
//! - `echo-many`: send back every message waiting, all in one `send_many`;
//! - `die-before-ack`: listen, wait until a connection is queued, exit without taking it;
//! - `listen-report`: try to listen and report the result as a message "rc=<code> errno=<errno>";
//! - `port-zero`: listen twice on port 0 and report "ports A B"; answer one
//!   connection on the second ("second\n") and one on the first ("first\n");
//!   close both, listen on port 0 again and report "again C";
//! - `bad-frame`: send a malformed frame straight onto the channel fd;
//! - `exit-code N`: open, then exit with code N;
//! - `hang`: listen, then never call into the library again (a stuck loop);
//! - `late-ready`: listen, wait 300 ms, say ready, serve HTTP;
//! - `never-ready`: listen and serve HTTP, never say ready;
//! - `goodbye-exit`: open, close the worker gracefully, exit with `TEST_EXIT_CODE` (default 1);
//! - `listen-flood`: listen on port 0 `TEST_FLOOD` times (keeping every
//!   listener) and report "flood ok=K err=E errno=X" (the last error's errno);
//! - `no-ack`: listen, then keep reading events (pings are answered) but
//!   never accept: connections stay unacknowledged;
//! - `refuse-all`: listen and read the channel itself (raw frames, no
//!   library), refusing every connection handed over (answering pings),
//!   never serving one;
//! - `child-env`: report what a child process sees of the worker variables,
//!   whether this is still a worker, and what creating a primary here gives;
//! - `flood-messages`: send `TEST_COUNT` messages of `TEST_SIZE` bytes, each
//!   starting with its decimal sequence number and a space;
//! - `send-fds`: write a packed-messages frame (which may carry none) with fds
//!   attached straight onto the channel;
//! - `handles`: messages with fds, see `handles.rs`;
//! - `random-frames`: write `TEST_COUNT` random records straight onto the channel;
//! - `share-udp`: ask for shared UDP sockets with `Share` frames written
//!   straight onto the channel (no C API asks for one) and report what came
//!   back: "six reuse_addr=R ipv6_only=V port=P" for `::` asked with both
//!   flags, then "four reuse_addr=R port=Q" for 0.0.0.0 on the same port
//!   asked with none, then "unknown errno=E" for a request with a flag bit
//!   no version knows; with `TEST_SHARE_MALFORMED=1`, then a `Share` frame
//!   cut short; exits when asked to leave or the channel closes;
//! - `primary N [MODE]`: be a primary of N workers in MODE (default `http`);
//!   print `ready PORT PID` and serve until killed (tests that kill the primary or
//!   watch its fds and CPU). `TEST_MAX_PENDING` / `TEST_MAX_UNACKED` /
//!   `TEST_HEARTBEAT_MS` / `TEST_METRICS` (its metrics address) set those options; `TEST_PRIMARY_PORT` is the port it listens on; `TEST_NOFILE` lowers its fd limit once the workers listen;
//!   `TEST_SIGNALS=1` opts into signal handling; `TEST_UPGRADE_FAILS=1` makes
//!   a primary started with `LISTEN_FDS` (a SIGUSR2 upgrade) exit at once; `TEST_CLOEXEC_STDIO=1` marks
//!   its stdio close-on-exec first (as Node does). Exits 0 after shutdown.
//!   With `TEST_ANNOUNCE=1`, `http` workers print `worker ID listening`.
//!   `TEST_ACCEPT_BATCH=N` makes `http` take connections N at a time
//!   (`rcluster_listener_accept_many`, reporting `batch K` for K > 1);
//!   `TEST_ACCEPT_AFTER_MS` delays its first accept.
//!
//! Not workers (run directly by a test):
//! - `stale-env`: report `rcluster_is_worker()` and whether a primary can be
//!   created, in a process whose environment names a channel that is not one;
//! - `open-twice`: try `rcluster_worker_open` twice and report both results;
//! - `print-handle`: create a primary and print its handle's value.
//!
//! `http` also takes `TEST_LINGER_MS` (stay that long after draining, as a
//! slow leaver), `TEST_STARVE=1` (after listening, fill this process's fd
//! table, so handed-over descriptors cannot be received) and
//! `TEST_HANG_UNLESS=PATH` (take no connection until PATH exists), and
//! `TEST_GROW_WORKER=ID` with `TEST_GROW_MB=N` (worker ID holds N MiB more).
//!
//! `http` serves each connection on its own thread (`TEST_DELAY_MS` makes
//! every answer that much slower; `TEST_SERVE_INLINE=1` serves each on the
//! accepting thread instead, one at a time, as a single-threaded server
//! does) and reports each finished connection. Asked to leave, it takes
//! the connections still queued for it, answers the next request on each
//! open connection with `Connection: close` (idle ones get a grace second),
//! and exits 0 once all are done: a busy client never sees a reset.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcluster::ffi::*;

mod handles;

fn check(rc: i32, what: &str) {
    if rc != 0 {
        // SAFETY: rcluster_last_error returns a valid NUL-terminated string.
        let msg = unsafe { std::ffi::CStr::from_ptr(rcluster_last_error()) };
        eprintln!("testworker: {what} failed: {rc} {msg:?}");
        std::process::exit(3);
    }
}

fn open() -> *mut rcluster_worker {
    let mut worker = ptr::null_mut();
    check(rcluster_worker_open(&mut worker), "rcluster_worker_open");
    worker
}

fn listen(worker: *mut rcluster_worker) -> (i32, *mut rcluster_listener) {
    let host = CString::new(std::env::var("TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into())).unwrap();
    let port: u16 = std::env::var("TEST_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(0);
    let mut listener = ptr::null_mut();
    let rc = rcluster_worker_listen(worker, host.as_ptr(), port, 5000, &mut listener);
    (rc, listener)
}

fn send(worker: *mut rcluster_worker, text: &str) {
    check(rcluster_worker_send(worker, text.as_ptr() as *const _, text.len()), "rcluster_worker_send");
}

/// Answers HTTP/1.1 requests on one connection until the client closes,
/// or, once `draining`, after the next request (or a second of idleness).
fn serve(fd: i32, id: u32, draining: &AtomicBool) {
    // SAFETY: accept handed us this fd; we own it.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let body = format!("worker {id} pid {}\n", std::process::id());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut idle_since: Option<Instant> = None;
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let request = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            if let Some(delay) = std::env::var("TEST_DELAY_MS").ok().and_then(|d| d.parse().ok()) {
                std::thread::sleep(Duration::from_millis(delay)); // a slow worker
            }
            let close = request.contains("connection: close") || draining.load(Ordering::SeqCst);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n{}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" },
                body
            );
            if stream.write_all(response.as_bytes()).is_err() || close {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                idle_since = None;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if draining.load(Ordering::SeqCst) && buf.is_empty() {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(1) {
                        return;
                    }
                }
            }
            Err(_) => return,
        }
    }
}

/// Serves HTTP through `listener` until the primary asks us to leave, then drains.
fn serve_http(worker: *mut rcluster_worker, listener: *mut rcluster_listener, id: u32) {
    let draining = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(0));
    // TEST_ACCEPT_BATCH=N: take connections with accept_many, up to N at a
    // time, and tell the primary each batch's size ("batch K") when K > 1.
    // TEST_ACCEPT_AFTER_MS: let connections queue up before the first accept.
    let batch: usize = std::env::var("TEST_ACCEPT_BATCH").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    if let Some(ms) = std::env::var("TEST_ACCEPT_AFTER_MS").ok().and_then(|n| n.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let inline = std::env::var_os("TEST_SERVE_INLINE").is_some();
    let mut fds = vec![-1; batch.max(1)];
    loop {
        let (rc, taken) = if batch > 0 {
            let mut count = 0usize;
            let rc = rcluster_listener_accept_many(listener, -1, fds.as_mut_ptr(), batch, &mut count);
            if count > 1 {
                let report = format!("batch {count}");
                check(rcluster_worker_send(worker, report.as_ptr() as *const _, report.len()), "send");
            }
            (rc, count)
        } else {
            (rcluster_listener_accept(listener, -1, &mut fds[0]), 1)
        };
        match rc {
            0 => {
                for &fd in &fds[..taken] {
                    if inline {
                        serve(fd, id, &draining);
                        rcluster_worker_done(worker, 1);
                        continue;
                    }
                    let (draining, active) = (draining.clone(), active.clone());
                    active.fetch_add(1, Ordering::SeqCst);
                    let handle = worker as usize; // a handle is a number, usable from any thread
                    std::thread::spawn(move || {
                        serve(fd, id, &draining);
                        rcluster_worker_done(handle as *mut rcluster_worker, 1);
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
            RCLUSTER_E_LEAVING | RCLUSTER_E_CLOSED => break,
            rc => check(rc, "rcluster_listener_accept"),
        }
    }
    draining.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    rcluster_listener_close(listener);
    if let Some(ms) = std::env::var("TEST_LINGER_MS").ok().and_then(|n| n.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms)); // a worker slow to leave
    }
    rcluster_worker_close(worker);
}

/// Fills this process's fd table: the limit is lowered to just above the
/// highest fd in use and every free number below it is taken.
fn starve_fds() {
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(2);
    let rlim = libc::rlimit { rlim_cur: highest + 1, rlim_max: highest + 1 };
    // SAFETY: setrlimit with a valid struct; open of a static path.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &rlim);
        while libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) >= 0 {}
    }
}

/// Reads the channel directly (the library is not called again) and
/// refuses every connection handed over; answers pings so the heartbeat
/// sees a live worker.
fn refuse_all(channel_fd: i32) -> ! {
    use rcluster::channel::{self, Reassembler};
    use rcluster::wire::Frame;
    // SAFETY: the channel fd stays open for the life of the process.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(channel_fd) };
    let mut reassembler = Reassembler::new();
    // Listens with a raw frame, not rcluster_worker_listen: the library,
    // reading the channel for its answer, would keep a connection sent
    // right behind it for an accept that never comes (the test's client
    // then waits for good), and this worker must refuse every one.
    let host = std::env::var("TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("TEST_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(0);
    let listen = Frame::Listen { request: 1, port, host, index: 0 };
    channel::send_message(fd, &listen.encode(), &[], None).expect("sending the listen request");
    loop {
        match reassembler.read_blocking(fd, None) {
            Ok(channel::Read::Message(message)) => {
                if let Ok(Frame::ListenOk { .. }) = Frame::decode(message.data) {
                    break;
                }
            }
            other => panic!("refuse-all: no answer to the listen request: {:?}", other.err()),
        }
    }
    loop {
        let message = match reassembler.read_blocking(fd, None) {
            Ok(channel::Read::Message(message)) => message,
            _ => std::process::exit(0),
        };
        let reply = match Frame::decode(message.data) {
            Ok(Frame::Conns { conns, .. }) => {
                conns.into_iter().map(|conn| Frame::Ack { conn, accepted: false }).collect()
            }
            Ok(Frame::Ping { seq }) => vec![Frame::Pong { seq }],
            Ok(Frame::Disconnect) => std::process::exit(0),
            _ => vec![],
        };
        for frame in reply {
            let _ = channel::send_message(fd, &frame.encode(), &[], None);
        }
    }
}

/// `share-udp` (see the module doc): reads the channel directly, the
/// library not called again once the worker is open.
fn share_udp(channel_fd: i32) -> ! {
    use rcluster::channel::{self, Reassembler};
    use rcluster::wire::Frame;
    use rcluster::{ShareFlags, SocketKind};
    use std::os::fd::AsRawFd;
    // SAFETY: the channel fd stays open for the life of the process.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(channel_fd) };
    let mut reassembler = Reassembler::new();
    // The reply to `request`, answering pings meanwhile; exits when the channel closes.
    let mut ask = |request: u32, kind: SocketKind, address: &str, port: u16, flags: u8| {
        let share = Frame::Share { request, kind: kind as u8, port, index: 0, address: address.into(), flags };
        check(if channel::send_message(fd, &share.encode(), &[], None).is_ok() { 0 } else { -1 }, "send share");
        loop {
            let message = match reassembler.read_blocking(fd, None) {
                Ok(channel::Read::Message(message)) => message,
                _ => std::process::exit(0),
            };
            match Frame::decode(message.data) {
                Ok(Frame::Ping { seq }) => {
                    let _ = channel::send_message(fd, &Frame::Pong { seq }.encode(), &[], None);
                }
                Ok(reply @ (Frame::ShareOk { .. } | Frame::ListenErr { .. })) => {
                    return (reply, message.fds.into_iter().next());
                }
                _ => {}
            }
        }
    };
    // An int socket option as 1 or 0 (-1 if it cannot be read).
    let option = |socket: &std::os::fd::OwnedFd, level, name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid out-pointers sized for an int.
        let rc = unsafe {
            libc::getsockopt(socket.as_raw_fd(), level, name, &mut value as *mut libc::c_int as *mut _, &mut len)
        };
        if rc == 0 {
            (value != 0) as i32
        } else {
            -1
        }
    };
    let both = ShareFlags { reuse_addr: true, ipv6_only: true }.to_wire();
    let mut report = Vec::new();
    let six_port = match ask(1, SocketKind::Udp6, "::", 0, both) {
        (Frame::ShareOk { port, .. }, Some(six)) => {
            let reuse = option(&six, libc::SOL_SOCKET, libc::SO_REUSEADDR);
            let v6only = option(&six, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
            report.push(format!("six reuse_addr={reuse} ipv6_only={v6only} port={port}"));
            port
        }
        other => panic!("six: {other:?}"),
    };
    match ask(2, SocketKind::Udp4, "0.0.0.0", six_port, 0) {
        (Frame::ShareOk { port, .. }, Some(four)) => {
            report.push(format!("four reuse_addr={} port={port}", option(&four, libc::SOL_SOCKET, libc::SO_REUSEADDR)))
        }
        (reply, _) => report.push(format!("four failed {:?}", reply.listen_error())),
    }
    match ask(3, SocketKind::Udp4, "127.0.0.1", 0, 0x80) {
        (reply @ Frame::ListenErr { .. }, None) => {
            report.push(format!("unknown errno={}", reply.listen_error().map_or(0, |e| e.errno())))
        }
        other => report.push(format!("unknown answered {other:?}")),
    }
    let _ = channel::send_message(fd, &Frame::User(report.join("; ").into_bytes()).encode(), &[], None);
    if std::env::var("TEST_SHARE_MALFORMED").as_deref() == Ok("1") {
        let mut cut =
            Frame::Share { request: 4, kind: 2, port: 0, index: 0, address: "127.0.0.1".into(), flags: 0 }.encode();
        cut.truncate(cut.len() - 3);
        let _ = channel::send_message(fd, &cut, &[], None);
    }
    loop {
        match reassembler.read_blocking(fd, None) {
            Ok(channel::Read::Message(message)) => match Frame::decode(message.data) {
                Ok(Frame::Ping { seq }) => {
                    let _ = channel::send_message(fd, &Frame::Pong { seq }.encode(), &[], None);
                }
                Ok(Frame::Disconnect) => std::process::exit(0),
                _ => {}
            },
            _ => std::process::exit(0),
        }
    }
}

/// A primary of N workers, for tests that watch or kill the primary itself.
fn run_primary(n: u32, mode: &str) {
    if std::env::var_os("TEST_UPGRADE_FAILS").is_some() && std::env::var_os("LISTEN_FDS").is_some() {
        // A broken new version, started by SIGUSR2 (which passes the sockets).
        eprintln!("testworker: this version fails at start");
        std::process::exit(5);
    }
    let exe = std::ffi::CString::new(std::env::current_exe().unwrap().into_os_string().into_encoded_bytes()).unwrap();
    let mode = std::ffi::CString::new(mode).unwrap();
    let argv = [exe.as_ptr(), mode.as_ptr(), ptr::null()];
    let mut options: rcluster_primary_options = unsafe { std::mem::zeroed() };
    check(rcluster_primary_options_init2(&mut options, size_of::<rcluster_primary_options>()), "options_init");
    options.argv = argv.as_ptr();
    let knob = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    if let Some(v) = knob("TEST_MAX_PENDING") {
        options.max_pending = v;
    }
    if let Some(v) = knob("TEST_MAX_UNACKED") {
        options.max_unacked = v;
    }
    options.handle_signals = knob("TEST_SIGNALS").unwrap_or(0) as i32;
    if let Some(ms) = knob("TEST_HEARTBEAT_MS") {
        options.heartbeat_interval_ms = ms;
    }
    if let Some(mb) = knob("TEST_MAX_MEMORY_MB") {
        options.max_memory_mb = mb;
    }
    let metrics = std::env::var("TEST_METRICS").ok().map(|a| CString::new(a).unwrap());
    if let Some(address) = &metrics {
        options.metrics_address = address.as_ptr();
    }
    if std::env::var_os("TEST_CLOEXEC_STDIO").is_some() {
        // As Node does: the workers must still inherit them.
        for fd in 0..3 {
            // SAFETY: fcntl on the standard fds.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    let mut p = ptr::null_mut();
    check(rcluster_primary_new2(&options, &mut p), "primary_new");
    let mut port = 0u16;
    let wanted = knob("TEST_PRIMARY_PORT").unwrap_or(0) as u16;
    check(rcluster_primary_listen(p, c"127.0.0.1".as_ptr(), wanted, &mut port), "primary_listen");
    for _ in 0..n {
        check(rcluster_primary_fork(p, ptr::null(), ptr::null_mut(), ptr::null_mut()), "fork");
    }
    let mut listening = 0;
    let mut ev = empty();
    while listening < n {
        check(rcluster_primary_wait_event(p, &mut ev, 10_000), "wait_event");
        if ev.kind == RCLUSTER_EVENT_LISTENING {
            listening += 1;
        }
        rcluster_event_release(&mut ev);
    }
    if let Some(limit) = knob("TEST_NOFILE") {
        // The soft limit only: workers started later raise theirs back.
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        let mut rlim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit into a valid struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) };
        rlim.rlim_cur = open + limit as u64;
        // SAFETY: setrlimit with a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) };
    }
    println!("ready {port} {}", std::process::id());
    loop {
        if rcluster_primary_wait_event(p, &mut ev, -1) == 0 {
            let kind = ev.kind;
            rcluster_event_release(&mut ev);
            if kind == RCLUSTER_EVENT_SHUTDOWN {
                check(rcluster_primary_free(p), "primary_free");
                std::process::exit(0);
            }
        }
    }
}

fn main() {
    // TEST_MODE in the environment overrides the argv mode (one primary, two kinds of worker).
    let mode = std::env::var("TEST_MODE").unwrap_or_else(|_| std::env::args().nth(1).unwrap_or_default());
    if mode == "primary" {
        let n = std::env::args().nth(2).and_then(|n| n.parse().ok()).unwrap_or(2);
        return run_primary(n, &std::env::args().nth(3).unwrap_or_else(|| "http".into()));
    }
    match mode.as_str() {
        "stale-env" => {
            let mut p = ptr::null_mut();
            let mut options: rcluster_primary_options = unsafe { std::mem::zeroed() };
            check(rcluster_primary_options_init2(&mut options, size_of::<rcluster_primary_options>()), "options_init");
            let rc = rcluster_primary_new2(&options, &mut p);
            println!("is_worker={} primary_new={rc}", rcluster_is_worker());
            if rc == 0 {
                rcluster_primary_free(p);
            }
            return;
        }
        "open-twice" => {
            for attempt in 1..=2 {
                let mut worker = ptr::null_mut();
                let rc = rcluster_worker_open(&mut worker);
                // SAFETY: rcluster_last_error returns a valid NUL-terminated string.
                let msg = unsafe { std::ffi::CStr::from_ptr(rcluster_last_error()) }.to_string_lossy().into_owned();
                println!("open {attempt}: {rc} {msg}");
            }
            return;
        }
        "print-handle" => {
            let mut p = ptr::null_mut();
            let mut options: rcluster_primary_options = unsafe { std::mem::zeroed() };
            check(rcluster_primary_options_init2(&mut options, size_of::<rcluster_primary_options>()), "options_init");
            check(rcluster_primary_new2(&options, &mut p), "primary_new");
            println!("handle {}", p as usize);
            rcluster_primary_free(p);
            return;
        }
        _ => {}
    }
    let mut id = 0u32;
    check(rcluster_worker_id(&mut id), "rcluster_worker_id");
    // A worker restarted by a primary that lowered its own soft fd limit
    // (TEST_NOFILE) takes the usual one back.
    let mut rlim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim);
        rlim.rlim_cur = rlim.rlim_max.min(1024);
        libc::setrlimit(libc::RLIMIT_NOFILE, &rlim);
    }
    // Read before open, which removes it from the environment: the modes
    // that play a misbehaving worker write on the channel fd directly.
    let channel_fd: i32 = std::env::var("RCLUSTER_CHANNEL_FD").ok().and_then(|v| v.parse().ok()).unwrap_or(-1);
    let worker = open();
    match mode.as_str() {
        "http" | "never-ready" => {
            let (rc, listener) = listen(worker);
            check(rc, "rcluster_worker_listen");
            if std::env::var_os("TEST_ANNOUNCE").is_some() {
                println!("worker {id} listening");
            }
            if std::env::var_os("TEST_STARVE").is_some() {
                starve_fds();
            }
            if std::env::var("TEST_GROW_WORKER").is_ok_and(|w| w == id.to_string()) {
                // A worker whose memory grows past the primary's max_memory.
                let mb: usize = std::env::var("TEST_GROW_MB").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
                let hog = vec![1u8; mb << 20];
                std::mem::forget(std::hint::black_box(hog));
            }
            if let Some(marker) = std::env::var_os("TEST_HANG_UNLESS") {
                // Until the marker exists, a worker that never takes a connection.
                while !std::path::Path::new(&marker).exists() {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            // TEST_SAY_REPORTS_DONE: tell the primary whether it wants done reports.
            if std::env::var_os("TEST_SAY_REPORTS_DONE").is_some() {
                let mut reports = -1;
                check(rcluster_worker_reports_done(worker, &mut reports), "rcluster_worker_reports_done");
                let said = format!("reports_done {reports}");
                check(rcluster_worker_send(worker, said.as_ptr() as *const _, said.len()), "send");
            }
            // The listener knows where it is bound (the primary picked the port).
            let mut host = [0 as std::ffi::c_char; 64];
            let (mut port, mut port_again) = (0u16, 0u16);
            check(rcluster_listener_address(listener, host.as_mut_ptr(), host.len(), &mut port), "listener_address");
            check(rcluster_listener_port(listener, &mut port_again), "listener_port");
            let host = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) }.to_string_lossy().into_owned();
            let expected = std::env::var("TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into());
            if host != expected || port == 0 || port != port_again {
                eprintln!("testworker: listener address {host}:{port} (port {port_again}), expected host {expected}");
                std::process::exit(4);
            }
            serve_http(worker, listener, id);
        }
        "late-ready" => {
            let (rc, listener) = listen(worker);
            check(rc, "rcluster_worker_listen");
            std::thread::sleep(Duration::from_millis(300));
            check(rcluster_worker_ready(worker), "rcluster_worker_ready");
            serve_http(worker, listener, id);
        }
        "hang" => {
            let (rc, _listener) = listen(worker);
            check(rc, "rcluster_worker_listen");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "echo" => loop {
            let mut ev = empty();
            match rcluster_worker_wait_event(worker, &mut ev, -1) {
                0 if ev.kind == RCLUSTER_EVENT_MESSAGE => {
                    // SAFETY: data/len describe the event's owned bytes.
                    let data =
                        if ev.len == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(ev.data, ev.len) } };
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(data);
                    check(rcluster_worker_send(worker, reply.as_ptr() as *const _, reply.len()), "send");
                    rcluster_event_release(&mut ev);
                }
                0 => {
                    rcluster_event_release(&mut ev);
                    if ev.kind != RCLUSTER_EVENT_MESSAGE {
                        break;
                    }
                }
                _ => break,
            }
        },
        "die-before-ack" => {
            let (rc, listener) = listen(worker);
            check(rc, "rcluster_worker_listen");
            let mut fd = -1;
            check(rcluster_listener_fd(listener, &mut fd), "rcluster_listener_fd");
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 10_000) };
            // A connection (or something) is waiting on the channel: die without taking it.
            // SAFETY: _exit ends the process at once, as a crash would.
            unsafe { libc::_exit(7) };
        }
        "echo-many" => loop {
            // Take every message waiting, answer them all with one send_many.
            let mut replies: Vec<Vec<u8>> = Vec::new();
            let mut timeout = -1;
            loop {
                let mut ev = empty();
                let rc = rcluster_worker_wait_event(worker, &mut ev, timeout);
                if rc != 0 || ev.kind != RCLUSTER_EVENT_MESSAGE {
                    rcluster_event_release(&mut ev);
                    if rc == RCLUSTER_E_AGAIN {
                        break;
                    }
                    std::process::exit(0);
                }
                // SAFETY: data/len describe the event's owned bytes.
                let data = if ev.len == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(ev.data, ev.len) } };
                replies.push(data.to_vec());
                rcluster_event_release(&mut ev);
                timeout = 0;
            }
            let ptrs: Vec<*const std::ffi::c_void> = replies.iter().map(|r| r.as_ptr() as *const _).collect();
            let lens: Vec<usize> = replies.iter().map(|r| r.len()).collect();
            check(rcluster_worker_send_many(worker, ptrs.as_ptr(), lens.as_ptr(), replies.len()), "send_many");
        },
        "listen-report" => {
            let (rc, _listener) = listen(worker);
            send(worker, &format!("rc={rc} errno={}", rcluster_last_errno()));
            let mut ev = empty();
            rcluster_worker_wait_event(worker, &mut ev, 10_000);
        }
        "port-zero" => {
            let port_of = |listener| {
                let mut port = 0u16;
                check(rcluster_listener_port(listener, &mut port), "listener_port");
                port
            };
            let (rc, first) = listen(worker);
            check(rc, "rcluster_worker_listen (first)");
            let (rc, second) = listen(worker);
            check(rc, "rcluster_worker_listen (second)");
            send(worker, &format!("ports {} {}", port_of(first), port_of(second)));
            for (listener, answer) in [(second, "second\n"), (first, "first\n")] {
                let mut fd = -1;
                check(rcluster_listener_accept(listener, 10_000, &mut fd), "rcluster_listener_accept");
                // SAFETY: accept handed us this fd; we own it.
                let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
                let _ = stream.write_all(answer.as_bytes());
            }
            check(rcluster_listener_close(first), "listener_close");
            check(rcluster_listener_close(second), "listener_close");
            let (rc, again) = listen(worker);
            check(rc, "rcluster_worker_listen (again)");
            send(worker, &format!("again {}", port_of(again)));
            let mut ev = empty();
            rcluster_worker_wait_event(worker, &mut ev, 10_000);
        }
        "bad-frame" => {
            let fd = channel_fd;
            let junk = [1u8 | 2u8, 250, 1, 2, 3];
            // SAFETY: writes a local buffer to our channel fd.
            unsafe { libc::send(fd, junk.as_ptr() as *const _, junk.len(), 0) };
            let mut ev = empty();
            rcluster_worker_wait_event(worker, &mut ev, 10_000);
        }
        "goodbye-exit" => {
            rcluster_worker_close(worker);
            std::process::exit(std::env::var("TEST_EXIT_CODE").ok().and_then(|c| c.parse().ok()).unwrap_or(1));
        }
        "listen-flood" => {
            let count: usize = std::env::var("TEST_FLOOD").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
            let (mut ok, mut err, mut errno) = (0, 0, 0);
            let mut listeners = Vec::new();
            let host = CString::new(std::env::var("TEST_FLOOD_HOST").unwrap_or_else(|_| "127.0.0.1".into())).unwrap();
            for _ in 0..count {
                let mut listener = ptr::null_mut();
                match rcluster_worker_listen(worker, host.as_ptr(), 0, 5000, &mut listener) {
                    0 => {
                        ok += 1;
                        listeners.push(listener);
                    }
                    _ => {
                        err += 1;
                        errno = rcluster_last_errno();
                    }
                }
            }
            send(worker, &format!("flood ok={ok} err={err} errno={errno}"));
            let mut ev = empty();
            while rcluster_worker_wait_event(worker, &mut ev, -1) == 0 {
                let kind = ev.kind;
                rcluster_event_release(&mut ev);
                if kind != RCLUSTER_EVENT_MESSAGE {
                    break;
                }
            }
        }
        "no-ack" => {
            let (rc, _listener) = listen(worker);
            check(rc, "rcluster_worker_listen");
            let mut ev = empty();
            loop {
                // Reading events answers pings; nobody ever accepts.
                let rc = rcluster_worker_wait_event(worker, &mut ev, 50);
                rcluster_event_release(&mut ev);
                if rc == RCLUSTER_E_CLOSED {
                    break;
                }
            }
        }
        "refuse-all" => refuse_all(channel_fd),
        "child-env" => {
            let child = std::process::Command::new("sh")
                .args(["-c", "echo \"${RCLUSTER_WORKER_ID:-unset} ${RCLUSTER_CHANNEL_FD:-unset}\""])
                .output()
                .unwrap();
            let seen = String::from_utf8_lossy(&child.stdout).trim().to_string();
            let mut p = ptr::null_mut();
            let mut options: rcluster_primary_options = unsafe { std::mem::zeroed() };
            check(rcluster_primary_options_init2(&mut options, size_of::<rcluster_primary_options>()), "options_init");
            let nested = rcluster_primary_new2(&options, &mut p);
            send(worker, &format!("child={seen} is_worker={} primary_new={nested}", rcluster_is_worker()));
            let mut ev = empty();
            rcluster_worker_wait_event(worker, &mut ev, 10_000);
        }
        "handles" => handles::run(worker),
        "flood-messages" => {
            let knob =
                |name: &str, default: usize| std::env::var(name).ok().and_then(|n| n.parse().ok()).unwrap_or(default);
            let (count, size) = (knob("TEST_COUNT", 1000), knob("TEST_SIZE", 1000));
            for seq in 0..count {
                let mut message = format!("{seq} ").into_bytes();
                message.resize(size.max(message.len()), b'x');
                check(rcluster_worker_send(worker, message.as_ptr() as *const _, message.len()), "send");
            }
            let mut ev = empty();
            rcluster_worker_wait_event(worker, &mut ev, 60_000);
        }
        "send-fds" => {
            use rcluster::wire::Frame;
            let fds = [0, 1, 2];
            // SAFETY: the channel fd stays open; fds 0-2 are this process's stdio.
            let channel = unsafe { std::os::fd::BorrowedFd::borrow_raw(channel_fd) };
            // A frame that carries no fds (a message's own frame may carry some).
            let frame = Frame::Users(vec![b"with fds".to_vec()]).encode();
            let _ = rcluster::channel::send_message(channel, &frame, &fds, None);
            let mut ev = empty();
            rcluster_worker_wait_event(worker, &mut ev, 10_000);
        }
        "share-udp" => share_udp(channel_fd),
        "random-frames" => {
            let count: usize = std::env::var("TEST_COUNT").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
            let mut state = std::process::id() as u64 | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for _ in 0..count {
                let len = (next() % 64) as usize;
                let record: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                // SAFETY: writes a local buffer to our channel fd.
                if unsafe { libc::send(channel_fd, record.as_ptr() as *const _, record.len(), libc::MSG_NOSIGNAL) } < 0
                {
                    break;
                }
            }
            let mut ev = empty();
            rcluster_worker_wait_event(worker, &mut ev, 10_000);
        }
        "exit-code" => {
            let code: i32 = std::env::var("TEST_EXIT_CODE")
                .ok()
                .or_else(|| std::env::args().nth(2))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            std::process::exit(code);
        }
        other => {
            eprintln!("testworker: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}

fn empty() -> rcluster_event {
    // SAFETY: rcluster_event is plain data; all-zero is a valid empty event.
    unsafe { std::mem::zeroed() }
}
