//! Reading the channel: `pump` sorts what arrives into the worker's queues
//! (connections per listener, events, listen replies), and the sends and
//! waits every caller shares.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use crate::channel;
use crate::error::{Code, Error, Result};
use crate::event::WorkerEvent;
use crate::sys::{self, Deadline, Flag};
use crate::wire::Frame;

use super::{ConnQueue, Inner, SelfAccepting, State, PUMP_EVERY_US};

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn send_frame(&self, frame: &Frame) -> Result<()> {
        let bytes = frame.encode();
        let _guard = self.send_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.send_bytes_locked(&bytes)
    }

    /// Sends one encoded frame; the caller holds `send_lock`.
    pub(super) fn send_bytes_locked(&self, bytes: &[u8]) -> Result<()> {
        self.send_bytes_with_fds_locked(bytes, &[])
    }

    /// Sends one encoded frame with `fds` attached; the caller holds `send_lock`.
    pub(super) fn send_bytes_with_fds_locked(&self, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
        channel::send_message(self.channel.as_fd(), bytes, fds, None).map_err(|e| match e.code() {
            Code::Closed | Code::Os => {
                Error::new(Code::Closed, format!("the primary is gone: {e}")).with_errno(e.errno())
            }
            _ => e,
        })
    }

    /// Sends what `pump` left to answer: refusals and pongs.
    pub(super) fn refuse(&self, replies: Vec<Frame>) {
        for frame in replies {
            if self.send_frame(&frame).is_err() {
                return; // primary gone: it re-dispatches refused connections itself
            }
        }
    }

    /// Reads everything queued on the channel and sorts it. Returns the
    /// frames to answer with (refusals of connections we cannot take, pongs),
    /// sent by the caller once the lock is released.
    pub(super) fn pump(&self, state: &mut State) -> Vec<Frame> {
        self.last_pump_us.store(self.born.elapsed().as_micros() as u64, Ordering::Relaxed);
        let mut refusals = Vec::new();
        while state.gone.is_none() {
            let message = match state.reassembler.read(self.channel.as_fd()) {
                Ok(channel::Read::Message(m)) => m,
                Ok(channel::Read::WouldBlock) => break,
                Ok(channel::Read::Eof) => {
                    self.mark_gone(state, Error::new(Code::Closed, "the primary is gone (channel hung up)"));
                    break;
                }
                Err(e) if e.code() == Code::Closed => {
                    self.mark_gone(state, Error::new(Code::Closed, format!("the primary is gone ({e})")));
                    break;
                }
                Err(e) => {
                    self.mark_gone(state, Error::new(e.code(), format!("channel from the primary is broken: {e}")));
                    break;
                }
            };
            let mut fds = message.fds;
            let fds_lost = message.fds_lost;
            let frame = match Frame::decode(message.data) {
                Ok(frame) => frame,
                Err(e) => {
                    self.mark_gone(state, e);
                    break;
                }
            };
            match frame {
                Frame::Conns { listener, mut conns } => {
                    if fds.len() > conns.len() || (fds.len() < conns.len() && !fds_lost) {
                        let what = format!("{} connections came with {} fds", conns.len(), fds.len());
                        self.mark_gone(state, Error::new(Code::Protocol, what));
                        break;
                    }
                    // At our fd limit the kernel installs the first fds and
                    // drops the rest: the connections whose fd did not
                    // arrive go back to the primary, which hands them out
                    // again. The channel itself is fine.
                    let missing = conns.split_off(fds.len());
                    if !missing.is_empty() {
                        refusals.push(Frame::Lost { conns: missing });
                    }
                    if conns.is_empty() {
                        continue;
                    }
                    match state.listeners.get_mut(&listener) {
                        Some(queue) if !state.draining => {
                            if queue.conns.is_empty() {
                                queue.flag.set();
                            }
                            queue.conns.extend(conns.into_iter().zip(fds.drain(..)));
                        }
                        _ => refusals.extend(conns.into_iter().map(|conn| Frame::Ack { conn, accepted: false })),
                    }
                }
                Frame::ListenOk { request, listener, shared, report_done, port, address } => {
                    if report_done {
                        self.report_done.store(true, Ordering::Relaxed);
                    }
                    if state.abandoned.remove(&request) {
                        // The caller gave up waiting: undo the listen (a shared fd just closes).
                        if !shared {
                            let _ = self.send_frame(&Frame::Unlisten { listener });
                        }
                        continue;
                    }
                    if shared {
                        let Some(fd) = fds.pop() else {
                            if fds_lost {
                                // At our fd limit: this listen fails, the channel is fine.
                                let message = "could not receive the listening socket: out of file descriptors".into();
                                let reply =
                                    Frame::ListenErr { request, code: Code::Address, errno: libc::EMFILE, message };
                                state.replies.insert(request, reply);
                                self.replies_flag.set();
                                continue;
                            }
                            self.mark_gone(state, Error::new(Code::Protocol, "shared listener came without its fd"));
                            break;
                        };
                        state.shared_fds.insert(request, fd);
                    } else if let Some(queue) = state.listeners.get_mut(&listener) {
                        queue.handles += 1;
                        if let Some(fd) = fds.pop() {
                            // `hybrid`: the socket to accept on as well.
                            queue.hybrid.get_or_insert_with(SelfAccepting::new);
                            state.shared_fds.insert(request, fd);
                        }
                    } else {
                        // Create the queue now: Conn frames may follow before the caller wakes.
                        match Flag::new() {
                            Ok(flag) => {
                                // `hybrid`: a socket to accept on as well.
                                let socket = fds.pop();
                                let hybrid = socket.as_ref().map(|_| SelfAccepting::new());
                                state
                                    .listeners
                                    .insert(listener, ConnQueue { conns: VecDeque::new(), flag, handles: 1, hybrid });
                                if let Some(fd) = socket {
                                    state.shared_fds.insert(request, fd);
                                }
                            }
                            Err(e) => {
                                self.mark_gone(state, Error::os("eventfd", e));
                                break;
                            }
                        }
                    }
                    let reply = Frame::ListenOk { request, listener, shared, report_done, port, address };
                    state.replies.insert(request, reply);
                    self.replies_flag.set();
                }
                Frame::ShareOk { request, port, address } => {
                    let Some(fd) = fds.pop() else {
                        if fds_lost && !state.abandoned.remove(&request) {
                            // At our fd limit: this request fails, the channel is fine.
                            let message = "could not receive the shared socket: out of file descriptors".into();
                            let reply = Frame::ListenErr { request, code: Code::Address, errno: libc::EMFILE, message };
                            state.replies.insert(request, reply);
                            self.replies_flag.set();
                            continue;
                        }
                        self.mark_gone(state, Error::new(Code::Protocol, "shared socket came without its fd"));
                        break;
                    };
                    if !state.abandoned.remove(&request) {
                        state.shared_fds.insert(request, fd);
                        state.replies.insert(request, Frame::ShareOk { request, port, address });
                        self.replies_flag.set();
                    }
                }
                Frame::ListenErr { request, code, errno, message } => {
                    if !state.abandoned.remove(&request) {
                        state.replies.insert(request, Frame::ListenErr { request, code, errno, message });
                        self.replies_flag.set();
                    }
                }
                Frame::Disconnect => {
                    state.draining = true;
                    self.draining_flag.set();
                    self.wake_listeners(state);
                    self.events.push(WorkerEvent::Disconnect);
                }
                // The fds of a message are its own (any other frame's are closed below).
                Frame::User(data) => self.events.push(WorkerEvent::Message { data, fds: std::mem::take(&mut fds) }),
                Frame::Users(messages) => self
                    .events
                    .push_many(messages.into_iter().map(|data| WorkerEvent::Message { data, fds: Vec::new() })),
                Frame::Ping { seq } => refusals.push(Frame::Pong { seq }),
                Frame::SelfAccept { listener, on } => {
                    if let Some(hybrid) = state.listeners.get_mut(&listener).and_then(|q| q.hybrid.as_mut()) {
                        hybrid.set(on);
                    }
                }
                other => {
                    self.mark_gone(
                        state,
                        Error::new(Code::Protocol, format!("unexpected frame from the primary: {other:?}")),
                    );
                    break;
                }
            }
        }
        refusals
    }

    /// Whether the channel was read within the last millisecond.
    pub(super) fn pumped_recently(&self) -> bool {
        let now = self.born.elapsed().as_micros() as u64;
        now.saturating_sub(self.last_pump_us.load(Ordering::Relaxed)) < PUMP_EVERY_US
    }

    fn mark_gone(&self, state: &mut State, why: Error) {
        state.gone = Some(why);
        self.wake_listeners(state);
        self.replies_flag.set();
        self.events.push(WorkerEvent::PrimaryGone);
    }

    fn wake_listeners(&self, state: &State) {
        for queue in state.listeners.values() {
            queue.flag.set();
        }
    }

    /// Waits until the channel or one of `extra` is readable. `Ok(false)`: deadline passed.
    pub(super) fn wait(&self, extra: &[RawFd], deadline: Deadline) -> Result<bool> {
        if deadline.expired() {
            // The caller has just looked (pumped the channel, tried accept):
            // a poll(0) would only say what the next call finds anyway.
            return Ok(false);
        }
        let mut pfds = Vec::with_capacity(1 + extra.len());
        pfds.push(sys::pollfd(self.channel.as_raw_fd(), libc::POLLIN));
        pfds.extend(extra.iter().map(|&fd| sys::pollfd(fd, libc::POLLIN)));
        Ok(sys::poll(&mut pfds, deadline).map_err(|e| Error::os("poll", e))? > 0)
    }
}
