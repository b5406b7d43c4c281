//! The worker program the integration tests spawn. It uses the C ABI only.
//!
//! `rcluster-testworker MODE` (or `TEST_MODE=MODE`), with the address in `TEST_HOST`/`TEST_PORT`:
//! - `http`: serve HTTP (`worker <id> pid <pid>`), leave when asked;
//! - `echo`: send every message back to the primary, prefixed with "echo:";
//! - `die-before-ack`: listen, wait until a connection is queued, exit without taking it;
//! - `listen-report`: try to listen and report the result as a message "rc=<code> errno=<errno>";
//! - `bad-frame`: send a malformed frame straight onto the channel fd;
//! - `exit-code N`: open, then exit with code N.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::ptr;

use rcluster::ffi::*;

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
    let host =
        CString::new(std::env::var("TEST_HOST").unwrap_or_else(|_| "127.0.0.1".into())).unwrap();
    let port: u16 = std::env::var("TEST_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let mut listener = ptr::null_mut();
    let rc = rcluster_worker_listen(worker, host.as_ptr(), port, 5000, &mut listener);
    (rc, listener)
}

fn send(worker: *mut rcluster_worker, text: &str) {
    check(
        rcluster_worker_send(worker, text.as_ptr() as *const _, text.len()),
        "rcluster_worker_send",
    );
}

/// Answers HTTP/1.1 requests on one connection until the client closes.
fn serve(fd: i32, id: u32) {
    // SAFETY: accept handed us this fd; we own it.
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    let body = format!("worker {id} pid {}\n", std::process::id());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let request = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let close = request.contains("connection: close");
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
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn main() {
    // TEST_MODE in the environment overrides the argv mode (one primary, two kinds of worker).
    let mode =
        std::env::var("TEST_MODE").unwrap_or_else(|_| std::env::args().nth(1).unwrap_or_default());
    let mut id = 0u32;
    check(rcluster_worker_id(&mut id), "rcluster_worker_id");
    let worker = open();
    match mode.as_str() {
        "http" => {
            let (rc, listener) = listen(worker);
            check(rc, "rcluster_worker_listen");
            loop {
                let mut fd = -1;
                match rcluster_listener_accept(listener, -1, &mut fd) {
                    0 => serve(fd, id),
                    RCLUSTER_E_CLOSED => break,
                    rc => check(rc, "rcluster_listener_accept"),
                }
            }
            rcluster_listener_close(listener);
            rcluster_worker_close(worker);
        }
        "echo" => loop {
            let mut ev = empty();
            match rcluster_worker_wait_event(worker, &mut ev, -1) {
                0 if ev.kind == RCLUSTER_EVENT_MESSAGE => {
                    // SAFETY: data/len describe the event's owned bytes.
                    let data = if ev.len == 0 {
                        &[][..]
                    } else {
                        unsafe { std::slice::from_raw_parts(ev.data, ev.len) }
                    };
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(data);
                    check(
                        rcluster_worker_send(worker, reply.as_ptr() as *const _, reply.len()),
                        "send",
                    );
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
            check(
                rcluster_listener_fd(listener, &mut fd),
                "rcluster_listener_fd",
            );
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 10_000) };
            // A connection (or something) is waiting on the channel: die without taking it.
            // SAFETY: _exit ends the process at once, as a crash would.
            unsafe { libc::_exit(7) };
        }
        "listen-report" => {
            let (rc, _listener) = listen(worker);
            send(worker, &format!("rc={rc} errno={}", rcluster_last_errno()));
            let mut ev = empty();
            rcluster_worker_wait_event(worker, &mut ev, 10_000);
        }
        "bad-frame" => {
            let fd: i32 = std::env::var("RCLUSTER_CHANNEL_FD")
                .unwrap()
                .parse()
                .unwrap();
            let junk = [1u8 | 2u8, 250, 1, 2, 3];
            // SAFETY: writes a local buffer to our channel fd.
            unsafe { libc::send(fd, junk.as_ptr() as *const _, junk.len(), 0) };
            let mut ev = empty();
            rcluster_worker_wait_event(worker, &mut ev, 10_000);
        }
        "exit-code" => {
            let code: i32 = std::env::args()
                .nth(2)
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
