//! A listening address served through the primary: accepting the
//! connections it hands over (or accepting on a shared socket), pausing,
//! resuming, closing.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::{Code, Error, Result};
use crate::sys::{Deadline, PollSet};
use crate::wire::Frame;

use super::{ConnQueue, Worker};

pub(super) enum Mode {
    /// The primary accepts and hands connections over (rr and other policies).
    Dispatched { poll: PollSet },
    /// The worker accepts on a listening socket itself: the one all workers
    /// share (`shared`), or one of its own (`reuseport`, `own`).
    Shared { socket: OwnedFd, poll: PollSet, own: bool },
    /// Both (`hybrid`): the worker accepts on the shared socket while the
    /// primary lets it, and takes what the primary hands over.
    Hybrid { socket: OwnedFd, poll: PollSet },
}

/// A listening address served through the primary.
pub struct Listener {
    pub(super) worker: Worker,
    pub(super) id: u32,
    pub(super) address: SocketAddr,
    pub(super) mode: Mode,
    pub(super) closed: AtomicBool,
    /// For a port-0 listen: its address key and index (its place among the
    /// worker's port-0 listeners at that address).
    pub(super) port_zero: Option<(SocketAddr, u16)>,
    /// Whether this listener still holds that place: until `close`, or
    /// until `resume` hands it to the listener that takes over.
    pub(super) holds_place: AtomicBool,
}

impl Listener {
    /// The address actually bound (the OS-picked port when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether connections are accepted by the worker itself (`shared` and
    /// `reuseport` policies).
    pub fn is_shared(&self) -> bool {
        matches!(self.mode, Mode::Shared { .. })
    }

    /// The listening socket itself when this worker accepts on it (`shared`
    /// and `reuseport`), `None` when the primary hands connections over.
    /// Owned by the listener (close-on-exec). The `rcluster` command uses it
    /// to pass the socket on to a program that does not use rcluster
    /// (systemd socket activation).
    pub fn socket_fd(&self) -> Option<RawFd> {
        match &self.mode {
            Mode::Shared { socket, .. } => Some(socket.as_raw_fd()),
            Mode::Dispatched { .. } | Mode::Hybrid { .. } => None,
        }
    }

    /// An fd that is readable when [`Listener::accept`] may have a connection.
    /// Owned by the listener.
    pub fn fd(&self) -> RawFd {
        match &self.mode {
            Mode::Dispatched { poll } | Mode::Shared { poll, .. } | Mode::Hybrid { poll, .. } => poll.raw(),
        }
    }

    /// The next connection, waiting up to `timeout` (`Some(0)`: don't wait,
    /// `WouldBlock` if none). The returned fd is the caller's, blocking and
    /// close-on-exec. Once the primary asked this worker to disconnect, the
    /// connections already queued are still returned, then `Closed`.
    pub fn accept(&self, timeout: Option<Duration>) -> Result<OwnedFd> {
        let mut taken = self.accept_many(1, timeout)?;
        Ok(taken.pop().expect("accept_many returns at least one connection"))
    }

    /// Up to `max` connections at once (at least one), waiting up to
    /// `timeout` for the first, as [`Listener::accept`] does. The batch is
    /// acknowledged to the primary with one frame, so a worker that takes
    /// connections in batches costs the primary one wake-up per batch.
    /// Only what is already queued is taken: a batch never waits to fill.
    ///
    /// A worker that accepts on the socket all workers share (`shared`)
    /// takes one connection per call whatever `max` is: the primary's credit
    /// does not bound it there, and a slow worker that grabbed a batch off
    /// the shared queue would sit on connections idle workers could serve
    /// (measured: p99.9 of the uneven test went from 1.9 to 12.9 ms). Under
    /// `reuseport` the socket is this worker's own, so nobody else could
    /// serve what is queued on it: the batch goes up to `max` there.
    pub fn accept_many(&self, max: usize, timeout: Option<Duration>) -> Result<Vec<OwnedFd>> {
        if max == 0 {
            return Err(Error::new(Code::InvalidArgument, "accept_many: max must be at least 1"));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::new(Code::Closed, "the listener is closed"));
        }
        self.worker.check_open()?;
        let inner = &self.worker.inner;
        let deadline = Deadline::after(timeout);
        loop {
            let mut state = inner.lock();
            // Connections already queued go first, as events do in
            // next_event: a poll loop that just read the channel (to take
            // its events) does not read it again to find nothing.
            let dispatched = matches!(self.mode, Mode::Dispatched { .. } | Mode::Hybrid { .. });
            let queued = dispatched && state.listeners.get(&self.id).is_some_and(|q| !q.conns.is_empty());
            let refusals = if queued && inner.pumped_recently() { Vec::new() } else { inner.pump(&mut state) };
            let keep_awake = state.gone.is_some() || state.draining;
            let mut taken = Vec::new();
            if let (true, Some(queue)) = (dispatched, state.listeners.get_mut(&self.id)) {
                let n = queue.conns.len().min(max);
                taken.extend(queue.conns.drain(..n));
                if queue.conns.is_empty() && !keep_awake {
                    queue.flag.clear();
                }
            }
            // Under `hybrid`, whether this worker accepts itself now, and
            // whether it already called the primary in.
            let self_accept =
                state.listeners.get(&self.id).and_then(|q| q.hybrid.as_ref()).map(|h| (h.on, h.busy_sent));
            let stop = match (&state.gone, state.draining) {
                (Some(gone), _) => Some(gone.clone()),
                (None, true) => Some(Error::new(Code::Leaving, "the worker is disconnecting: no more connections")),
                _ => None,
            };
            drop(state);
            inner.refuse(refusals);
            if !taken.is_empty() {
                // Ack before the caller sees a byte (see the module doc). If the
                // primary is gone the connections are ours anyway.
                let (conns, fds): (Vec<u64>, Vec<OwnedFd>) = taken.into_iter().unzip();
                if let Mode::Hybrid { .. } = self.mode {
                    inner.held.fetch_add(fds.len() as u32, Ordering::Relaxed);
                }
                let ack = match conns[..] {
                    [conn] => Frame::Ack { conn, accepted: true },
                    _ => Frame::Acks { conns },
                };
                let _ = inner.send_frame(&ack);
                return Ok(fds);
            }
            // Asked to leave, a worker that accepts itself still takes what is
            // already queued on its socket (a reuseport socket's queue would be
            // reset when it closes), then reports closed.
            let draining_own_socket =
                matches!(self.mode, Mode::Shared { .. }) && matches!(&stop, Some(e) if e.code() == Code::Leaving);
            if let Some(stop) = stop.filter(|_| !draining_own_socket) {
                return Err(stop);
            }
            if let (Mode::Hybrid { socket, .. }, Some((true, busy_sent))) = (&self.mode, self_accept) {
                match self.accept_hybrid(socket, busy_sent) {
                    Ok(Some(fd)) => return Ok(vec![fd]),
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
            if let Mode::Shared { socket, own, .. } = &self.mode {
                let batch = if *own { max } else { 1 };
                let mut fds = Vec::new();
                let mut empty = false;
                while fds.len() < batch {
                    // SAFETY: accept4 on a listening socket we own, no address out-params.
                    let ret = unsafe {
                        libc::accept4(
                            socket.as_raw_fd(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_CLOEXEC,
                        )
                    };
                    if ret >= 0 {
                        // SAFETY: a fresh fd from accept4, owned by nothing else.
                        fds.push(unsafe { OwnedFd::from_raw_fd(ret) });
                        continue;
                    }
                    let err = std::io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EAGAIN) => {
                            empty = true;
                            break;
                        }
                        Some(libc::EINTR) | Some(libc::ECONNABORTED) => break,
                        // An error after some connections: they are returned, and
                        // the next call meets the error again.
                        _ if !fds.is_empty() => break,
                        _ => return Err(Error::os("accept on the shared listener", err)),
                    }
                }
                if !fds.is_empty() {
                    return Ok(fds);
                }
                if draining_own_socket && empty {
                    return Err(Error::new(Code::Leaving, "the worker is disconnecting: no more connections"));
                }
                if !empty {
                    continue; // interrupted or an aborted connection: try again
                }
            }
            let wake = match &self.mode {
                Mode::Dispatched { .. } => inner.lock().listeners.get(&self.id).map(|q| q.flag.raw()),
                Mode::Shared { socket, .. } => Some(socket.as_raw_fd()),
                // Its poll set holds the queue's flag, and the socket while it accepts itself.
                Mode::Hybrid { poll, .. } => inner.lock().listeners.contains_key(&self.id).then(|| poll.raw()),
            };
            let Some(wake) = wake else {
                return Err(Error::new(Code::Closed, "the listener is closed"));
            };
            if !inner.wait(&[wake], deadline)? {
                return Err(if timeout == Some(Duration::ZERO) {
                    Error::new(Code::WouldBlock, "no connection is waiting")
                } else {
                    Error::new(Code::Timeout, "no connection arrived in time")
                });
            }
        }
    }

    /// Stops taking connections of this address: the ones queued here are
    /// refused and go to other workers. Idempotent; also ends a pause.
    pub fn close(&self) {
        if self.holds_place.swap(false, Ordering::SeqCst) {
            if let Some((key, index)) = self.port_zero {
                self.worker.inner.lock().close_port_zero(key, index);
            }
        }
        self.stop();
    }

    /// Stops taking connections as [`Listener::close`] does, but keeps this
    /// listener's place among the worker's port-0 listeners, so a port-0
    /// listen made meanwhile does not take its port (a server paused at its
    /// connection limit, say). [`Listener::resume`] takes the address back;
    /// `close` gives the place up. Idempotent.
    pub fn pause(&self) {
        self.stop();
    }

    /// Listens again on the address of this paused (or closed) listener, by
    /// its port, and returns the listener that takes over, with this one's
    /// port-0 place if it still held it. Fails with `State` while this
    /// listener is open; on error this one keeps its place and may resume
    /// later.
    pub fn resume(&self, timeout: Option<Duration>) -> Result<Listener> {
        if !self.closed.load(Ordering::SeqCst) {
            return Err(Error::new(Code::State, "the listener is not paused"));
        }
        let host = self.address.ip().to_string();
        // Taken for the new listener (which frees it on close); given back
        // if the listen fails. Should `close` run meanwhile, the place is
        // freed when this listener drops.
        let held = self.holds_place.swap(false, Ordering::SeqCst);
        let place = if held { self.port_zero } else { None };
        let resumed = self.worker.request_listener(&host, self.address.port(), place, timeout);
        if resumed.is_err() && held {
            self.holds_place.store(true, Ordering::SeqCst);
        }
        resumed
    }

    /// Stops taking connections (the queued ones go to other workers); the
    /// port-0 place is `close`'s business.
    fn stop(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Mode::Shared { .. } = self.mode {
            return; // the socket closes when the listener drops
        }
        let inner = &self.worker.inner;
        let (last, queued) = {
            let mut state = inner.lock();
            if let Mode::Hybrid { poll, .. } = &self.mode {
                // The pump must not touch this handle's fds once they close.
                if let Some(hybrid) = state.listeners.get_mut(&self.id).and_then(|q| q.hybrid.as_mut()) {
                    hybrid.handles.retain(|&(p, _)| p != poll.raw());
                }
            }
            match state.listeners.get_mut(&self.id) {
                Some(queue) if queue.handles > 1 => {
                    queue.handles -= 1;
                    (false, Vec::new())
                }
                Some(_) => {
                    let queue = state.listeners.remove(&self.id);
                    let refuse = |q: ConnQueue| {
                        q.conns.into_iter().map(|(conn, _fd)| Frame::Ack { conn, accepted: false }).collect()
                    };
                    (true, queue.map(refuse).unwrap_or_default())
                }
                None => (false, Vec::new()),
            }
        };
        if last {
            let _ = inner.send_frame(&Frame::Unlisten { listener: self.id });
        }
        inner.refuse(queued);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}
