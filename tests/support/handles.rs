//! The testworker's `handles` mode: messages that carry file descriptors.
//!
//! On each message from the primary it takes every fd, then by the text:
//! - `serve`: fd 0 is a listening TCP socket (the seed's `child.send('server',
//!   server)`); accept one connection on it, answer `worker ID\n`, close the
//!   connection and the socket, and tell the primary `served`;
//! - `sticky LINE`: fd 0 is a client connection whose first line the primary
//!   read; answer `worker ID got LINE\n` on it and close it;
//! - `bounce`: send the same message with the same fds back, then close ours;
//! - `unasked`: send a message with stdin attached (to a primary that did not
//!   ask for fds);
//! - `flood N`: send N messages, each with 16 copies of stdin attached;
//! - `bad-sends`: try a closed fd and one fd too many, and report both
//!   results as `bad-sends RC1 RC2`.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rcluster::ffi::*;

fn send_fds(worker: *mut rcluster_worker, data: &[u8], fds: &[i32]) -> i32 {
    rcluster_worker_send_fds(worker, data.as_ptr() as *const _, data.len(), fds.as_ptr(), fds.len())
}

/// Takes every fd of a message event.
fn take_all(ev: &mut rcluster_event) -> Vec<OwnedFd> {
    let mut count = 0;
    super::check(rcluster_event_fd_count(ev, &mut count), "rcluster_event_fd_count");
    (0..count)
        .map(|i| {
            let mut fd = -1;
            super::check(rcluster_event_take_fd(ev, i, &mut fd), "rcluster_event_take_fd");
            // SAFETY: take_fd gave us this fd to own.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect()
}

pub fn run(worker: *mut rcluster_worker) {
    let mut id = 0;
    super::check(rcluster_worker_id(&mut id), "rcluster_worker_id");
    loop {
        let mut ev = super::empty();
        if rcluster_worker_wait_event(worker, &mut ev, -1) != 0 || ev.kind != RCLUSTER_EVENT_MESSAGE {
            rcluster_event_release(&mut ev);
            return;
        }
        // SAFETY: data/len describe the event's owned bytes.
        let text =
            if ev.len == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(ev.data, ev.len) }.to_vec() };
        let mut fds = take_all(&mut ev);
        rcluster_event_release(&mut ev);
        let text = String::from_utf8_lossy(&text).into_owned();
        match text.split_once(' ').map_or(text.as_str(), |(verb, _)| verb) {
            "serve" => {
                let listener = TcpListener::from(fds.remove(0));
                let (mut conn, _) = listener.accept().expect("accept on the handed listener");
                let _ = writeln!(conn, "worker {id}");
                drop(conn);
                drop(listener);
                super::send(worker, "served");
            }
            "sticky" => {
                let mut conn = TcpStream::from(fds.remove(0));
                let line = text.strip_prefix("sticky ").unwrap_or_default();
                let _ = writeln!(conn, "worker {id} got {line}");
            }
            "bounce" => {
                let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
                super::check(send_fds(worker, text.as_bytes(), &raw), "rcluster_worker_send_fds");
            }
            "flood" => {
                let count: usize = text.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(1);
                let stdin = [0; RCLUSTER_MAX_FDS];
                for _ in 0..count {
                    super::check(send_fds(worker, b"flood", &stdin), "rcluster_worker_send_fds");
                }
            }
            "unasked" => {
                super::check(send_fds(worker, b"unasked", &[0]), "rcluster_worker_send_fds");
            }
            "bad-sends" => {
                let closed = {
                    let file = std::fs::File::open("/dev/null").expect("/dev/null");
                    file.as_raw_fd()
                };
                let closed_rc = send_fds(worker, b"closed", &[closed]);
                let many = vec![0; RCLUSTER_MAX_FDS + 1];
                let many_rc = send_fds(worker, b"many", &many);
                super::send(worker, &format!("bad-sends {closed_rc} {many_rc}"));
            }
            _ => {}
        }
    }
}
