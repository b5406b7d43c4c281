//! Worker channels: sending records (queueing what the socket cannot take),
//! reading frames and acting on them, hang-ups.

use super::*;

impl EventLoop {
    /// Sends one message to a worker, after the connections handed to it
    /// this turn (so nothing, a `Disconnect` least of all, overtakes them).
    pub(super) fn send_frame(&mut self, worker: u32, bytes: &[u8], fds: &[Arc<OwnedFd>]) {
        if self.conns.is_handing(worker) {
            self.flush_handing(worker);
        }
        self.send_bytes(worker, bytes, fds);
    }

    /// Sends one message (as records) to a worker, queueing what the socket
    /// cannot take now. A broken channel is treated as a hang-up.
    pub(super) fn send_bytes(&mut self, worker: u32, bytes: &[u8], fds: &[Arc<OwnedFd>]) {
        let Some(link) = self.workers.get_mut(&worker).and_then(|w| w.link.as_mut()) else { return };
        let mut broken = false;
        for (index, (header, payload)) in channel::records(bytes).enumerate() {
            let attached: &[Arc<OwnedFd>] = if index == 0 { fds } else { &[] };
            if link.outbox.is_empty() {
                let raw: Vec<RawFd> = attached.iter().map(|fd| fd.as_raw_fd()).collect();
                match channel::send_record(link.fd.as_fd(), header, payload, &raw) {
                    Ok(()) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            link.queued.fetch_add(payload.len(), Ordering::Relaxed);
            link.outbox.push_back(Outgoing { header, payload: payload.to_vec(), fds: attached.to_vec() });
        }
        if broken {
            self.hang_up(worker);
        } else {
            self.arm_writable(worker);
        }
    }

    pub(super) fn arm_writable(&mut self, worker: u32) {
        let Some(link) = self.workers.get_mut(&worker).and_then(|w| w.link.as_mut()) else { return };
        let want = !link.outbox.is_empty();
        if want != link.writable_armed {
            let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poll.registry().reregister(
                &mut SourceFd(&link.fd.as_raw_fd()),
                token(KIND_CHANNEL, worker),
                interest,
            );
            link.writable_armed = want;
        }
    }

    pub(super) fn on_worker_writable(&mut self, worker: u32) {
        let Some(link) = self.workers.get_mut(&worker).and_then(|w| w.link.as_mut()) else { return };
        let mut broken = false;
        while let Some(record) = link.outbox.front() {
            let raw: Vec<RawFd> = record.fds.iter().map(|fd| fd.as_raw_fd()).collect();
            match channel::send_record(link.fd.as_fd(), record.header, &record.payload, &raw) {
                Ok(()) => {
                    link.queued.fetch_sub(record.payload.len(), Ordering::Relaxed);
                    link.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            self.hang_up(worker);
        } else {
            self.arm_writable(worker);
        }
    }

    /// Reads what the worker sent, unless the host has fallen behind on
    /// events (`max_event_bytes`): then the worker waits (its channel
    /// fills and its sends block; nothing is dropped) until the host has
    /// taken half, and `resume_reads` reads it.
    pub(super) fn on_worker_readable(&mut self, worker: u32) {
        if self.shared.events_over_limit() {
            self.shared.reads_paused.store(true, Ordering::SeqCst);
            if !self.unread.contains(&worker) {
                self.unread.push(worker);
            }
            // The host may have caught up between the check and the flag.
            if !self.shared.events_over_limit() && self.shared.reads_paused.swap(false, Ordering::SeqCst) {
                self.shared.wake.set();
            }
            return;
        }
        self.read_channel(worker, true);
    }

    /// Reads the channels left unread while the host was behind.
    pub(super) fn resume_reads(&mut self) {
        if self.unread.is_empty() || self.shared.events_over_limit() {
            return;
        }
        for worker in std::mem::take(&mut self.unread) {
            self.on_worker_readable(worker);
        }
    }

    /// Reads everything the worker sent, whatever the host's backlog (an
    /// exiting worker's last acknowledgements must be seen).
    pub(super) fn drain_channel(&mut self, worker: u32) {
        self.read_channel(worker, false);
    }

    /// Reads what the worker sent until its channel is empty. `bounded`:
    /// stop, as `on_worker_readable` does, once a message with fds takes
    /// the queue past `max_event_fds`, so a worker cannot push a channel's
    /// worth of fds (up to 16 per record) on the primary at once.
    fn read_channel(&mut self, worker: u32, bounded: bool) {
        loop {
            let Some(link) = self.workers.get_mut(&worker).and_then(|w| w.link.as_mut()) else { return };
            match link.reassembler.read(link.fd.as_fd()) {
                Ok(channel::Read::Message(message)) => {
                    let with_fds = !message.fds.is_empty();
                    self.on_frame(worker, message);
                    if bounded && with_fds && self.shared.events_over_limit() {
                        return self.on_worker_readable(worker); // pauses this worker's reads
                    }
                }
                Ok(channel::Read::WouldBlock) => return,
                Ok(channel::Read::Eof) => return self.hang_up(worker),
                // A peer that dies with our frames unread resets the channel
                // (ECONNRESET): that is a hang-up, not misbehaviour.
                Err(e) if e.code() == Code::Closed => return self.hang_up(worker),
                Err(e) => return self.worker_error(worker, e),
            }
        }
    }

    pub(super) fn on_frame(&mut self, worker: u32, message: channel::Message) {
        let channel::Message { data, fds, fds_lost } = message;
        let frame = match Frame::decode(data) {
            Ok(frame) => frame,
            Err(e) => return self.worker_error(worker, e),
        };
        // fds only on a User frame, and only if the host asked for them.
        let fds = match message_fds::take(&frame, fds, fds_lost, self.config.message_fds) {
            Ok(fds) => fds,
            Err(e) => return self.worker_error(worker, e),
        };
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        let pid = entry.pid;
        match frame {
            Frame::Hello { .. } => {
                entry.life.hello(Instant::now(), self.config.supervision.heartbeat_interval);
                self.shared.emit(Event::Online { worker, pid });
            }
            Frame::Listen { request, port, host, index } => self.on_listen_request(worker, request, &host, port, index),
            Frame::Unlisten { listener } => self.leave_listener(worker, listener),
            // Unix-socket and UDP sockets, bound once and shared (shared_sockets.rs).
            Frame::Share { request, kind, port, index, address, flags } => {
                let asked = super::super::shared_sockets::Asked { kind, address: &address, port, index, flags };
                let (reply, fd) = self.shared_sockets.answer(worker, request, &asked);
                self.send_frame(worker, &reply.encode(), fd.as_slice());
            }
            Frame::Ack { conn, accepted } => self.on_ack(worker, conn, accepted),
            Frame::Acks { conns } => {
                // The known ones first: the worker holds them whatever else it
                // got wrong, so they must not be handed to another worker.
                let mut unknown = None;
                for conn in conns {
                    if self.conns.holds(worker, conn) {
                        self.on_ack(worker, conn, true);
                    } else {
                        unknown = unknown.or(Some(conn));
                    }
                }
                if let Some(conn) = unknown {
                    let message = format!("worker acknowledged unknown connection {conn}");
                    self.worker_error(worker, Error::new(Code::Protocol, message));
                }
            }
            Frame::Lost { conns } => self.on_lost(worker, conns),
            Frame::Done { count } => self.conns.done(worker, count),
            Frame::Busy { listener } => self.on_busy(listener),
            Frame::Goodbye => {
                entry.life.goodbye();
                self.conns.stop_offering(worker);
            }
            Frame::Pong { seq } => {
                entry.life.pong(seq);
            }
            Frame::Ready => {
                if self.config.supervision.wait_ready {
                    self.on_worker_ready(worker);
                }
            }
            Frame::User(data) => {
                entry.messages_in += 1;
                self.shared.emit(Event::Message { worker, pid, data, fds });
            }
            Frame::Users(messages) => {
                entry.messages_in += messages.len() as u64;
                self.shared.emit_messages(worker, pid, messages);
            }
            other => self.worker_error(
                worker,
                Error::new(Code::Protocol, format!("worker sent a primary-only frame {other:?}")),
            ),
        }
    }

    pub(super) fn on_listen_request(&mut self, worker: u32, request: u32, host: &str, port: u16, index: u16) {
        let id = match self.listener_for(host, port, index, Some(worker)) {
            Ok(id) => id,
            Err(e) => {
                let reply = Frame::listen_err(request, &e);
                return self.send_frame(worker, &reply.encode(), &[]);
            }
        };
        let listener = self.listeners.get_mut(&id).expect("listener_for returned a known id");
        let address = listener.address;
        let own_socket = match listener.socket_for_worker(self.config.backlog) {
            Ok(socket) => socket,
            Err(e) => {
                let reply = Frame::listen_err(request, &e);
                return self.send_frame(worker, &reply.encode(), &[]);
            }
        };
        // `shared` on the wire: a socket is attached and the worker accepts
        // itself. Under `hybrid` one is attached and connections also come
        // from the primary, which says when the worker may accept itself.
        let hybrid = listener.sockets == Sockets::Hybrid;
        let dispatching = listener.overflow.dispatching();
        let shared = own_socket.is_some() && !hybrid;
        let report_done = self.conns.policy(id).is_some_and(|p| p.wants_done_reports());
        let port = address.port();
        let reply = Frame::ListenOk { request, listener: id, shared, report_done, port, address: address.to_string() };
        let fds: Vec<Arc<OwnedFd>> = own_socket.into_iter().map(Arc::new).collect();
        self.send_frame(worker, &reply.encode(), &fds);
        // Our copy of the worker's socket closes now (a queued record holds
        // its own), before the host hears of the listen below.
        drop(fds);
        if hybrid && dispatching {
            // It joins while the primary dispatches: it must not accept itself.
            self.send_frame(worker, &Frame::SelfAccept { listener: id, on: false }.encode(), &[]);
        }
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        if !entry.listening_on.contains(&id) {
            entry.listening_on.push(id);
        }
        entry.life.listened();
        let pid = entry.pid;
        self.conns.join(worker, id);
        if let Some(listener) = self.listeners.get_mut(&id) {
            listener.idle_since = None;
        }
        self.shared.emit(Event::Listening { worker, pid, address });
        if !self.config.supervision.wait_ready {
            self.on_worker_ready(worker);
        }
        self.notify_ready_if_serving();
    }

    pub(super) fn leave_listener(&mut self, worker: u32, listener: u32) {
        self.conns.leave(worker, listener);
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.listening_on.retain(|&l| l != listener);
        }
    }

    /// A worker took (or refused) a connection. Dropping a taken or
    /// refused-by-everyone handoff closes the primary's copy.
    pub(super) fn on_ack(&mut self, worker: u32, conn: u64, accepted: bool) {
        if let Ack::Unknown = self.conns.ack(worker, conn, accepted) {
            let message = format!("worker acknowledged unknown connection {conn}");
            self.worker_error(worker, Error::new(Code::Protocol, message));
        }
    }

    /// The worker could not receive these connections (at its fd limit):
    /// they go back to the front of the queue, not counted as refusals, and
    /// the worker gets none for a moment while its fds free up.
    pub(super) fn on_lost(&mut self, worker: u32, conns: Vec<u64>) {
        // Those whose listener is gone are closed as the report drops.
        if let Some(conn) = self.conns.lost(worker, conns, self.now + ACCEPT_BACKOFF).unknown {
            let message = format!("worker reported unknown connection {conn} lost");
            self.worker_error(worker, Error::new(Code::Protocol, message));
        }
    }

    /// The worker's channel closed (or broke): its connections go back to
    /// the queue, it leaves every listener, and the host hears of it.
    pub(super) fn hang_up(&mut self, worker: u32) {
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        let Some(link) = entry.link.take() else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&link.fd.as_raw_fd()));
        drop(link);
        entry.life.hang_up();
        entry.listening_on.clear();
        let pid = entry.pid;
        // What it held goes back to the queue, oldest first, ahead of newer arrivals.
        drop(self.conns.hang_up(worker)); // those whose listener is gone close
        self.shared.lock_connected().remove(&worker);
        self.shared_sockets.release(worker); // those no other worker uses close, as Node's
        self.shared.emit(Event::Disconnect { worker, pid });
    }

    /// The worker broke the protocol: report it, cut it off, and stop it.
    pub(super) fn worker_error(&mut self, worker: u32, error: Error) {
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        let pid = entry.pid;
        entry.life.protocol_error(Instant::now());
        self.shared.emit(Event::WorkerError { worker, pid, message: error.message().to_owned() });
        self.hang_up(worker);
    }
}
