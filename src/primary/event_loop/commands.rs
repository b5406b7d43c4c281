//! The host's commands: fork, listen, send, disconnect, kill, scale,
//! reload, stats, shutdown; starting workers and binding listeners.

use super::*;

impl EventLoop {
    pub(super) fn on_commands(&mut self) {
        let commands: Vec<Command> = {
            let mut queue = self.shared.commands.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.clear();
            queue.drain(..).collect()
        };
        // The host also wakes us when it has caught up on events (after the
        // clear above, so such a wake-up is never lost).
        self.resume_reads();
        // Messages to the same worker queued together travel together.
        let mut messages: Vec<(u32, Vec<Vec<u8>>)> = Vec::new();
        for command in commands {
            self.unreserve(&command);
            if let Command::Send { worker, data } = command {
                match messages.iter_mut().find(|(w, _)| *w == worker) {
                    Some((_, queued)) => queued.push(data),
                    None => messages.push((worker, vec![data])),
                }
                continue;
            }
            // Anything else (a disconnect, say) must not overtake them.
            self.send_user_messages(&mut messages);
            match command {
                Command::Fork { env, overrides, reply } => {
                    let _ = reply.send(self.fork(env, overrides));
                }
                Command::Listen { host, port, reply } => {
                    let _ = reply.send(self.listen(&host, port));
                }
                Command::Send { .. } => unreachable!("sends are batched above"),
                // A message with fds is a User frame of its own, after the batch above.
                Command::SendFds { worker, data, fds } => {
                    if let Some(entry) = self.workers.get_mut(&worker) {
                        entry.messages_out += 1;
                    }
                    let fds: Vec<Arc<OwnedFd>> = fds.into_iter().map(Arc::new).collect();
                    self.send_frame(worker, &Frame::encode_user(&data), &fds);
                }
                Command::SendFrames { worker, frames, count } => {
                    if let Some(entry) = self.workers.get_mut(&worker) {
                        entry.messages_out += count as u64;
                    }
                    for frame in frames {
                        self.send_frame(worker, &frame, &[]);
                    }
                }
                Command::Disconnect { worker } => self.disconnect(worker),
                Command::Kill { worker, signal } => self.kill(worker, signal),
                // Node's worker.process.disconnect(): the existing hang-up path.
                Command::HangUp { worker } => self.hang_up(worker),
                Command::Shutdown { grace } => self.begin_shutdown(grace),
                Command::Reload { reply } => {
                    let _ = reply.send(self.reload());
                }
                Command::Scale { workers, reply } => {
                    let _ = reply.send(self.scale(workers));
                }
                Command::Stats { reply } => {
                    let _ = reply.send(self.stats());
                }
                Command::Metrics { reply } => {
                    let _ = reply.send(self.metrics());
                }
            }
        }
        self.send_user_messages(&mut messages);
    }

    /// A send command's bytes leave the host's count as we take it (what
    /// cannot be written at once is counted again while in the outbox).
    pub(super) fn unreserve(&self, command: &Command) {
        let (worker, bytes) = match command {
            Command::Send { worker, data } | Command::SendFds { worker, data, .. } => (*worker, data.len()),
            Command::SendFrames { worker, frames, .. } => (*worker, frames.iter().map(Vec::len).sum()),
            _ => return,
        };
        if let Some(link) = self.workers.get(&worker).and_then(|w| w.link.as_ref()) {
            link.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    pub(super) fn send_user_messages(&mut self, messages: &mut Vec<(u32, Vec<Vec<u8>>)>) {
        for (worker, queued) in messages.drain(..) {
            if let Some(entry) = self.workers.get_mut(&worker) {
                entry.messages_out += queued.len() as u64;
            }
            let slices: Vec<&[u8]> = queued.iter().map(|m| &m[..]).collect();
            for frame in Frame::pack_users(&slices) {
                self.send_frame(worker, &frame, &[]);
            }
        }
    }

    pub(super) fn check_running(&self) -> Result<()> {
        match self.shutdown {
            Some(_) => Err(Error::new(Code::State, "the primary is shutting down")),
            None => Ok(()),
        }
    }

    /// A new slot with its first worker.
    pub(super) fn fork(
        &mut self,
        env: Vec<(OsString, OsString)>,
        overrides: SpawnOverrides,
    ) -> Result<(WorkerInfo, StdioPipes)> {
        self.check_running()?;
        let index = self.slots.add(env);
        self.slots.set_overrides(index, overrides);
        self.slot_added_at = self.now;
        match self.start_worker(index) {
            Ok((info, pipes)) => {
                self.slots.set_worker(index, info.id);
                self.slots.after_first_fork(index);
                Ok((info, pipes))
            }
            Err(e) => {
                self.slots.forget(index);
                Err(e)
            }
        }
    }

    /// Spawns a worker for `slot` (not yet recorded as the slot's worker);
    /// the pipes of its stdio, if the slot asked for any, are the caller's.
    pub(super) fn start_worker(&mut self, slot: u32) -> Result<(WorkerInfo, StdioPipes)> {
        let mut spec = self.config.spawn.clone();
        spec.env.extend(self.slots.env(slot).iter().cloned());
        if let Some(overrides) = self.slots.overrides(slot) {
            overrides.apply(&mut spec);
        }
        let id = self.reserve_worker_id();
        let mut spawned = spawn::spawn(&spec, id)?;
        let pipes = std::mem::take(&mut spawned.stdio);
        self.adopt(id, spawned, Some(slot)).map(|info| (info, pipes))
    }

    pub(crate) fn reserve_worker_id(&mut self) -> u32 {
        let id = self.next_worker;
        self.next_worker += 1;
        id
    }

    /// Takes a started worker into the table and watches its channel and pid.
    pub(crate) fn adopt(&mut self, id: u32, spawned: Spawned, slot: Option<u32>) -> Result<WorkerInfo> {
        let Spawned { pid, child, channel, .. } = spawned;
        let registry = self.poll.registry();
        registry
            .register(&mut SourceFd(&channel.as_raw_fd()), token(KIND_CHANNEL, id), Interest::READABLE)
            .map_err(|e| Error::os("registering a worker channel", e))?;
        let pidfd = sys::pidfd_open(pid).map_err(|e| Error::os("pidfd_open", e))?;
        if let Some(fd) = &pidfd {
            registry
                .register(&mut SourceFd(&fd.as_raw_fd()), token(KIND_PIDFD, id), Interest::READABLE)
                .map_err(|e| Error::os("registering a pidfd", e))?;
        }
        let supervision = &self.config.supervision;
        let recycle_at = (supervision.recycle_after > 0)
            .then(|| supervision.recycle_after + self.jitter.upto(supervision.recycle_jitter));
        let queued = Arc::new(AtomicUsize::new(0));
        let link = Link {
            fd: channel,
            reassembler: Reassembler::with_limit(self.config.limits.max_message),
            outbox: VecDeque::new(),
            writable_armed: false,
            queued: queued.clone(),
        };
        self.workers.insert(
            id,
            WorkerEntry {
                id,
                pid,
                child,
                pidfd,
                link: Some(link),
                slot,
                generation: self.slots.generation(),
                life: Life::new(Instant::now()),
                listening_on: Vec::new(),
                messages_in: 0,
                messages_out: 0,
            },
        );
        self.conns.add_worker(id, recycle_at);
        self.shared.lock_connected().insert(id, queued);
        self.shared.emit(Event::Fork { worker: id, pid, slot, generation: self.slots.generation() });
        Ok(WorkerInfo { id, pid })
    }

    /// Finds or binds the listener for `host:port` (for port 0, the one
    /// every worker's first port-0 listen at `host` gets).
    pub(crate) fn listen(&mut self, host: &str, port: u16) -> Result<SocketAddr> {
        let id = self.listener_for(host, port, 0, None)?;
        let listener = self.listeners.get_mut(&id).expect("listener_for returned a known id");
        listener.declared = true;
        Ok(listener.address)
    }

    /// Finds or binds the listener for `host:port`; for port 0, the
    /// `index`-th (each worker's n-th port-0 listen at a host shares one).
    /// `worker`: the worker asking, held to `max_listeners_per_worker`
    /// (`None`: the host, whose listeners are not counted).
    pub(super) fn listener_for(&mut self, host: &str, port: u16, index: u16, worker: Option<u32>) -> Result<u32> {
        if self.shutdown.is_some() {
            return Err(match worker {
                Some(_) => Error::new(Code::Leaving, "the primary is shutting down: this worker is leaving"),
                None => Error::new(Code::State, "the primary is shutting down"),
            });
        }
        let requested = parse_address(host, port)?;
        let key = (requested, if port == 0 { index } else { 0 });
        let existing = self.by_address.get(&key).copied();
        let limits = &self.config.limits;
        if let Some(entry) = worker.and_then(|w| self.workers.get(&w)) {
            let already = existing.is_some_and(|id| entry.listening_on.contains(&id));
            if !already && entry.listening_on.len() >= limits.max_listeners_per_worker as usize {
                let max = limits.max_listeners_per_worker;
                let message = format!("worker {} already holds {max} listeners (max_listeners_per_worker)", entry.id);
                return Err(Error::new(Code::Address, message).with_errno(libc::EMFILE));
            }
        }
        if let Some(id) = existing {
            return Ok(id);
        }
        if worker.is_some() && self.listeners.values().filter(|l| !l.declared).count() >= limits.max_listeners as usize
        {
            let message =
                format!("the primary already holds {} listeners for workers (max_listeners)", limits.max_listeners);
            return Err(Error::new(Code::Address, message).with_errno(libc::EMFILE));
        }
        let id = self.next_listener;
        // A socket systemd passed for this very address is taken instead of
        // binding; for port 0, the one a primary being replaced named for
        // this place (see `systemd::port_zero_name`).
        let inherited = self
            .inherited
            .iter()
            .position(|s| match port {
                0 => s.name == systemd::port_zero_name(index) && s.address.ip() == requested.ip(),
                _ => s.address == requested,
            })
            .map(|i| self.inherited.remove(i).socket);
        let policy = self.config.policy.instantiate();
        let listener = Listener::bind(id, requested, self.config.backlog, policy.sockets(), inherited)?;
        if let (Some(socket), Sockets::PrimaryAccepts) = (&listener.socket, listener.sockets) {
            self.poll
                .registry()
                .register(&mut SourceFd(&socket.as_raw_fd()), token(KIND_LISTENER, id), Interest::READABLE)
                .map_err(|e| Error::os("registering a listener", e))?;
        }
        self.next_listener += 1;
        // Both keys lead here: port 0 (and index) as asked, and the port the OS picked.
        self.by_address.insert(key, id);
        self.by_address.insert((listener.address, 0), id);
        self.listeners.insert(id, listener);
        self.conns.add_route(id, policy);
        Ok(id)
    }

    /// The host asked this worker to leave: it goes, and its slot with it.
    pub(super) fn disconnect(&mut self, worker: u32) {
        let slot = self.workers.get(&worker).and_then(|w| w.slot);
        self.stop_worker(worker);
        if let Some(index) = slot {
            if self.slots.workers().any(|(i, w, _)| i == index && w == Some(worker)) {
                self.remove_slot(index);
            }
        }
    }

    /// Asks a worker to finish what it holds and leave, with SIGTERM and
    /// then SIGKILL after the stop timeout.
    pub(super) fn stop_worker(&mut self, worker: u32) {
        self.send_frame(worker, &Frame::Disconnect.encode(), &[]);
        let stop_timeout = self.config.stop_timeout;
        self.conns.stop_offering(worker);
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.life.ask_to_leave(Instant::now(), stop_timeout);
        }
    }

    /// Kills a worker that is not ready and will not be (a failed replacement).
    pub(super) fn abandon_worker(&mut self, worker: u32) {
        self.conns.stop_offering(worker);
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.life.abandon();
            let _ = sys::kill(entry.pid, libc::SIGKILL);
        }
    }

    pub(super) fn remove_slot(&mut self, index: u32) {
        self.slots.remove(index);
        self.run_slot_actions();
    }

    pub(super) fn kill(&mut self, worker: u32, signal: libc::c_int) {
        if let Some(entry) = self.workers.get(&worker) {
            // The entry lives until we reap the pid, so it is still ours.
            let _ = sys::kill(entry.pid, signal);
        }
    }

    pub(super) fn scale(&mut self, workers: u32) -> Result<()> {
        self.check_running()?;
        let current = self.slots.len() as u32;
        for _ in current..workers {
            self.fork(Vec::new(), Default::default())?;
        }
        while self.slots.len() as u32 > workers {
            self.slots.remove_last();
        }
        self.run_slot_actions();
        Ok(())
    }

    pub(super) fn stats(&self) -> Vec<WorkerStats> {
        let now = Instant::now();
        let mut stats: Vec<WorkerStats> = self
            .workers
            .values()
            .map(|w| (w, self.conns.load(w.id)))
            .map(|(w, load)| WorkerStats {
                id: w.id,
                pid: w.pid,
                slot: w.slot,
                state: w.life.phase(),
                generation: w.generation,
                dispatched: load.dispatched,
                in_flight: load.in_flight,
                active: load.active,
                restarts: w.slot.map_or(0, |s| self.slots.restarts(s)),
                uptime: now.duration_since(w.life.started()),
                messages_in: w.messages_in,
                messages_out: w.messages_out,
                cpu: Duration::ZERO,
                rss_bytes: 0,
            })
            .collect();
        stats.sort_by_key(|s| s.id);
        stats
    }

    /// `stats` with each process's CPU time and memory, and the primary's own numbers.
    pub(super) fn metrics(&self) -> Metrics {
        let mut workers = self.stats();
        for w in &mut workers {
            let usage = sys::process_usage(w.pid).unwrap_or_default();
            (w.cpu, w.rss_bytes) = (usage.cpu, usage.rss_bytes);
        }
        // SAFETY: getpid has no arguments and cannot fail.
        let me = sys::process_usage(unsafe { libc::getpid() }).unwrap_or_default();
        let serving = self.shutdown.is_none() && workers.iter().any(|w| w.state == WorkerState::Listening);
        let primary = PrimaryStats {
            pending: self.conns.pending_len() as u32,
            accept_pauses: self.accept_pauses,
            listeners: self.listeners.values().filter(|l| l.socket.is_some()).count() as u32,
            generation: self.slots.generation(),
            serving,
            cpu: me.cpu,
            rss_bytes: me.rss_bytes,
        };
        Metrics { primary, workers }
    }
}
