//! Accepting connections and sending the ones the ledger
//! ([`Connections`](crate::primary::core::Connections)) hands to each worker.

use super::*;

impl EventLoop {
    pub(super) fn on_listener_ready(&mut self, id: u32) {
        if let Some(listener) = self.listeners.get_mut(&id) {
            listener.ready = true;
        }
        self.accept_from(id, false);
    }

    /// Accepts from every listener that has connections waiting.
    pub(super) fn accept_ready(&mut self) {
        if self.conns.pending_len() >= self.config.max_pending as usize {
            return;
        }
        let ready: Vec<u32> =
            self.listeners.values().filter(|l| l.ready && l.primary_accepts()).map(|l| l.id).collect();
        for id in ready {
            self.accept_from(id, false);
        }
    }

    /// Accepts until the kernel queue is empty, the pending queue is full
    /// (unless `unbounded`, used once at shutdown), or an error says pause.
    pub(super) fn accept_from(&mut self, id: u32, unbounded: bool) {
        let mut burst = 0;
        self.accept_burst(id, unbounded, &mut burst);
        if burst > 0 {
            if let Some(listener) = self.listeners.get_mut(&id) {
                listener.overflow.accepted(burst);
            }
        }
    }

    /// `accept_from`'s loop; `burst` counts the connections it took.
    fn accept_burst(&mut self, id: u32, unbounded: bool, burst: &mut usize) {
        loop {
            if !unbounded && self.conns.pending_len() >= self.config.max_pending as usize {
                return;
            }
            let Some(listener) = self.listeners.get_mut(&id) else { return };
            let Some(socket) = &listener.socket else { return };
            if !listener.ready || listener.paused_until.is_some() || !listener.primary_accepts() {
                return;
            }
            if !self.conns.has_members(id) {
                // Nobody to hand it to: leave connections in the kernel's
                // backlog until a worker (a restart, a replacement) joins.
                return;
            }
            let raw = socket.as_raw_fd();
            // SAFETY: accept4 on a listening socket we own, no address out-params.
            let ret = unsafe { libc::accept4(raw, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
            if ret >= 0 {
                // SAFETY: a fresh fd from accept4, owned by nothing else.
                let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(ret) });
                let conn = self.next_conn;
                self.next_conn += 1;
                *burst += 1;
                // Its listener is known: nothing comes back to close.
                drop(self.conns.dispatch(self.now, Handoff::new(conn, id, fd, self.now)));
                continue;
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            match errno {
                libc::EAGAIN => {
                    listener.ready = false;
                    return;
                }
                // The connection died in the queue, or a transient network error (accept(2)).
                libc::EINTR
                | libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH => continue,
                // Out of fds or memory: pause this listener instead of spinning.
                _ => {
                    listener.paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    self.accept_pauses += 1;
                    return;
                }
            }
        }
    }

    pub(super) fn send_handed_connections(&mut self) {
        for worker in self.conns.take_handing_to() {
            self.flush_handing(worker);
        }
    }

    /// Sends the connections handed to `worker` and not yet sent, as few
    /// records as the fd limit allows (one per listener run).
    pub(super) fn flush_handing(&mut self, worker: u32) {
        let handing = self.conns.take_handing(worker);
        let mut rest = &handing[..];
        while let Some(&(listener, _, _)) = rest.first() {
            let run = rest.iter().take(channel::MAX_FDS).take_while(|(l, _, _)| *l == listener).count();
            let (batch, tail) = rest.split_at(run);
            rest = tail;
            let conns = batch.iter().map(|(_, conn, _)| *conn).collect();
            let fds: Vec<Arc<OwnedFd>> = batch.iter().map(|(_, _, fd)| fd.clone()).collect();
            self.send_bytes(worker, &Frame::Conns { listener, conns }.encode(), &fds);
        }
    }

    /// Hands out queued connections wherever a worker can take them, and
    /// notes the slots whose worker reached its connection budget.
    pub(super) fn dispatch_pending(&mut self) {
        self.conns.dispatch_pending(self.now);
        self.note_recycle_due();
    }

    pub(super) fn note_recycle_due(&mut self) {
        for worker in self.conns.take_recycle_due() {
            if let Some(slot) = self.workers.get(&worker).and_then(|w| w.slot) {
                self.recycle_due.push(slot);
            }
        }
    }

    /// Closes listeners bound for workers that no worker has used for
    /// `listener_idle`: a worker that asked for thousands of ports, then
    /// left, must not leave the primary holding their fds for good.
    pub(super) fn close_idle_listeners(&mut self, now: Instant) {
        let idle_for = self.config.limits.listener_idle;
        let mut expired = Vec::new();
        for listener in self.listeners.values_mut() {
            if listener.declared || self.conns.has_members(listener.id) {
                listener.idle_since = None;
                continue;
            }
            let since = *listener.idle_since.get_or_insert(now);
            if now.duration_since(since) >= idle_for {
                expired.push(listener.id);
            }
        }
        for id in expired {
            let Some(mut listener) = self.listeners.remove(&id) else { continue };
            if let Some(socket) = listener.socket.take() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&socket.as_raw_fd()));
            }
            self.by_address.retain(|_, l| *l != id);
            // Nobody served them for that long: close them rather than keep them forever.
            drop(self.conns.remove_route(id));
        }
    }
}
