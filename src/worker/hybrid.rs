//! A worker's side of policy `hybrid` (see `primary::core::Overflow`): it
//! accepts on the listening socket itself while the primary lets it and it
//! holds fewer than its cap, and calls the primary in when connections
//! queue behind the one it took, or wait while it is at its cap.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use crate::error::{Code, Error, Result};
use crate::sys::{self, PollSet};
use crate::wire::{Frame, BUSY_BACKLOG};

use super::listener::{Listener, Mode};
use super::Worker;

/// A worker holding this many `hybrid` connections (taken, not yet
/// reported finished with `Worker::done`) takes no more off the socket
/// itself: the other workers do, or, if connections wait, the primary,
/// which it calls in. So a worker slow to finish (or holding idle
/// keep-alive connections) does not collect new clients, and none is left
/// waiting for it.
const SELF_ACCEPT_CAP: u32 = 8;

/// A `hybrid` listener's side of accepting itself (see `Frame::SelfAccept`).
pub(super) struct SelfAccepting {
    /// The primary lets the workers accept themselves (until it steps in).
    pub(super) on: bool,
    /// A `Busy` report went out since `on` last became true.
    pub(super) busy_sent: bool,
    /// Each open handle's poll set and listening socket: the socket is in
    /// the set while `on`, so a worker left out wakes for nothing.
    pub(super) handles: Vec<(RawFd, RawFd)>,
}

impl SelfAccepting {
    /// As a listen starts: the workers accept themselves until told otherwise.
    pub(super) fn new() -> SelfAccepting {
        SelfAccepting { on: true, busy_sent: false, handles: Vec::new() }
    }

    /// Applies the primary's word: the sockets join or leave the poll sets.
    pub(super) fn set(&mut self, on: bool) {
        if on == self.on {
            return;
        }
        self.on = on;
        if on {
            self.busy_sent = false;
        }
        for &(poll, socket) in &self.handles {
            watch(poll, socket, on);
        }
    }
}

/// Adds `socket` to the epoll set `poll` (readable) or removes it. An error
/// leaves the set as it was: a socket that stayed in only costs a wake-up
/// that finds nothing to take; one that stayed out, connections the
/// primary hands over instead.
fn watch(poll: RawFd, socket: RawFd, on: bool) {
    let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, u64: socket as u64 };
    let op = if on { libc::EPOLL_CTL_ADD } else { libc::EPOLL_CTL_DEL };
    // SAFETY: both fds are open (the listener that owns them removes them
    // from `handles` under the state lock before closing); `ev` outlives the call.
    unsafe { libc::epoll_ctl(poll, op, socket, &mut ev) };
}

impl Worker {
    /// A `hybrid` listener's mode: its connection queue and the listening
    /// socket, the latter in the poll set while the primary lets this
    /// worker accept itself.
    pub(super) fn hybrid_mode(&self, listener: u32, socket: OwnedFd) -> Result<Mode> {
        let mut state = self.inner.lock();
        let queue =
            state.listeners.get_mut(&listener).ok_or_else(|| Error::new(Code::Protocol, "listener vanished"))?;
        let poll = PollSet::new(&[queue.flag.raw(), self.inner.channel.as_raw_fd(), self.inner.draining_flag.raw()])
            .map_err(|e| Error::os("epoll", e))?;
        self.inner.any_hybrid.store(true, Ordering::Relaxed);
        let hybrid = queue.hybrid.get_or_insert_with(SelfAccepting::new);
        if hybrid.on {
            watch(poll.raw(), socket.as_raw_fd(), true);
        }
        hybrid.handles.push((poll.raw(), socket.as_raw_fd()));
        Ok(Mode::Hybrid { socket, poll })
    }
}

impl Listener {
    /// `hybrid`: one connection off the shared socket (one per call, as
    /// `shared` takes them: a slow worker must not sit on a batch), and if
    /// more are queued behind it, the primary is called in once.
    /// `Ok(None)`: none waiting (or one died in the queue: the caller looks
    /// again after its wait).
    pub(super) fn accept_hybrid(&self, socket: &OwnedFd, busy_sent: bool) -> Result<Option<OwnedFd>> {
        let inner = &self.worker.inner;
        if inner.held.load(Ordering::Relaxed) >= SELF_ACCEPT_CAP {
            if !busy_sent && sys::accept_backlog(socket.as_fd()).is_some_and(|queued| queued > 0) {
                self.call_primary_in();
            }
            return Ok(None);
        }
        // SAFETY: accept4 on a listening socket we own, no address out-params.
        let ret = unsafe {
            libc::accept4(socket.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNABORTED) => Ok(None),
                _ => Err(Error::os("accept on the shared listener", err)),
            };
        }
        // SAFETY: a fresh fd from accept4, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(ret) };
        inner.held.fetch_add(1, Ordering::Relaxed);
        if !busy_sent && sys::accept_backlog(socket.as_fd()).is_some_and(|queued| queued >= BUSY_BACKLOG) {
            self.call_primary_in();
        }
        Ok(Some(fd))
    }

    /// Sends `Busy` unless this listener already did since the primary last
    /// let the workers accept themselves.
    fn call_primary_in(&self) {
        let inner = &self.worker.inner;
        let first = inner
            .lock()
            .listeners
            .get_mut(&self.id)
            .and_then(|q| q.hybrid.as_mut())
            .is_some_and(|h| !std::mem::replace(&mut h.busy_sent, true));
        if first {
            let _ = inner.send_frame(&Frame::Busy { listener: self.id });
        }
    }
}
