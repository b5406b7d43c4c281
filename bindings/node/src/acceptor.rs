//! Accepting from a listening socket the primary shares (a Unix socket a
//! worker serves, `lib/shared_sockets.js`), one connection per permit JS
//! grants, on a Rust thread: for runtimes whose own server, once it adopts
//! a listening fd, takes every queued connection at once (Deno's), so a
//! worker at `maxConnections` could not leave the rest to other workers.
//! What this thread does not take stays in the kernel's queue for them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::gate::Gate;
use crate::worker::{spawn_accept_thread, Accepted, ConnEvent};

struct AcceptorState {
    /// This worker's copy of the shared listening socket (non-blocking),
    /// owned by the `NativeAcceptor`, which closes it only once this thread
    /// has ended.
    listening: RawFd,
    gate: Gate,
}

impl AcceptorState {
    fn accept_loop(&self, deliver: impl Fn(Accepted)) {
        while self.gate.wait_for_permit() && self.gate.wait_readable(self.listening) {
            // SAFETY: accept4 on our listening fd with no address out-pointers;
            // the fd it returns is wrapped at once.
            let raw = unsafe {
                libc::accept4(self.listening, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
            };
            if raw >= 0 {
                self.gate.took_one();
                // SAFETY: a fresh fd owned by nothing else.
                deliver(Accepted::Conn(unsafe { OwnedFd::from_raw_fd(raw) }));
                continue;
            }
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                // Another worker took it, or the client gave up: wait for the next.
                Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED) => {}
                // Out of fds: the connection stays queued (for another worker, or
                // for this one once a connection closes); try again in a moment.
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                _ => {
                    deliver(Accepted::End(format!("accept on the shared socket: {error}")));
                    return;
                }
            }
        }
    }
}

/// Takes connections from a shared listening socket on a thread, as many
/// as JS grants. It owns the fd it is given: `close` (or collection)
/// closes it once the thread has ended.
#[napi]
pub struct NativeAcceptor {
    state: Arc<AcceptorState>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    listening: Mutex<Option<OwnedFd>>,
}

#[napi]
impl NativeAcceptor {
    /// Takes `fd`, a listening socket (from `NativeWorker.share`), now this
    /// object's to close. It is made non-blocking (as the runtimes' own
    /// servers make an fd they adopt), so the thread never waits in accept
    /// for a connection another worker took.
    #[napi(constructor)]
    pub fn new(fd: i32) -> Result<NativeAcceptor> {
        if !fd_is_socket(fd) {
            return Err(Error::new(Status::InvalidArg, format!("fd {fd} is not an open socket")));
        }
        // SAFETY: JS hands this fd over (the caller no longer uses it).
        let listening = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl on an fd we own.
        let flags = unsafe { libc::fcntl(listening.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(listening.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(Error::from_reason(format!("fcntl: {}", std::io::Error::last_os_error())));
        }
        Ok(NativeAcceptor {
            state: Arc::new(AcceptorState { listening: listening.as_raw_fd(), gate: Gate::new()? }),
            thread: Mutex::new(None),
            listening: Mutex::new(Some(listening)),
        })
    }

    /// Starts the thread; each connection (an fd now JS's to close), or an
    /// error that ends it, goes to `onConn`.
    #[napi]
    pub fn start(&self, on_conn: Function<ConnEvent, ()>) -> Result<()> {
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if thread.is_some() || self.state.gate.stopping() {
            return Err(Error::new(Status::GenericFailure, "already started or closed"));
        }
        let state = self.state.clone();
        let handle =
            spawn_accept_thread("rcluster-node-share-accept", on_conn, move |deliver| state.accept_loop(deliver))?;
        *thread = Some(handle);
        Ok(())
    }

    /// Lets the thread take `n` more connections.
    #[napi]
    pub fn grant(&self, n: u32) {
        self.state.gate.grant(n);
    }

    /// Stops taking connections and closes this copy of the socket (the
    /// primary's and other workers' stay open); the thread has ended first
    /// (it only ever waits in poll or on the permit condvar, which `stop`
    /// wakes). Idempotent.
    #[napi]
    pub fn close(&self) {
        self.state.gate.stop();
        if let Some(handle) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
        drop(self.listening.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

impl Drop for NativeAcceptor {
    fn drop(&mut self) {
        self.close();
    }
}

/// Whether `fd` is an open socket (what the constructor may take).
fn fd_is_socket(fd: i32) -> bool {
    // SAFETY: an all-zero stat is valid; fstat only writes into it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat with a valid out-pointer; a bad fd is an error, not UB.
    fd >= 0 && unsafe { libc::fstat(fd, &mut stat) } == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFSOCK
}
