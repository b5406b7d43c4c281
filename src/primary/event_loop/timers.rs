//! Signals, the one list of deadlines and what fires at each, and the
//! shutdown.

use super::*;

impl EventLoop {
    pub(super) fn on_signals(&mut self) {
        let Some(pipe) = &self.signals else { return };
        for signal in pipe.take() {
            match signal {
                libc::SIGTERM | libc::SIGINT if self.shutdown.is_some() => {
                    // Asked twice: stop the workers now.
                    let now = Instant::now();
                    for entry in self.workers.values_mut() {
                        entry.life.kill_now(now);
                    }
                }
                libc::SIGTERM | libc::SIGINT => self.begin_shutdown(self.config.stop_timeout),
                libc::SIGHUP => {
                    let _ = self.reload();
                }
                libc::SIGTTIN => {
                    let _ = self.scale(self.slots.len() as u32 + 1);
                }
                libc::SIGTTOU => {
                    let _ = self.scale((self.slots.len() as u32).saturating_sub(1).max(1));
                }
                libc::SIGUSR2 => self.start_upgrade(),
                _ => {}
            }
        }
    }

    /// Every deadline the loop waits for, and what it is: the one place
    /// that says when the loop must wake. Each is waited for only while
    /// `on_timers` will act on it once due (and so move it or clear it):
    /// a deadline that stays in the past makes the loop spin, which debug
    /// builds check at the end of every turn (`check_no_timer_left_due`).
    pub(super) fn each_timer(&self, mut timer: impl FnMut(Instant, &'static str)) {
        for listener in self.listeners.values() {
            if let Some(at) = listener.paused_until {
                timer(at, "a paused listener resumes");
            }
            if let Some(at) = listener.overflow.deadline() {
                timer(at, "a hybrid listener's dispatch window ends");
            }
        }
        let heartbeat_timeout = self.config.supervision.heartbeat_timeout;
        for entry in self.workers.values() {
            entry.life.each_deadline(heartbeat_timeout, &mut timer);
            if entry.pidfd.is_none() {
                timer(self.now + REAP_POLL_INTERVAL, "a worker without a pidfd is polled for its exit");
            }
        }
        self.conns.each_deadline(self.config.ack_timeout, &mut timer);
        if self.shutdown.is_none() {
            for listener in self.listeners.values() {
                if let Some(since) = listener.idle_since {
                    timer(since + self.config.limits.listener_idle, "an unused listener closes");
                }
            }
            self.slots.each_deadline(&mut timer);
        }
        if let Some(shutdown) = &self.shutdown {
            shutdown.each_deadline(&mut timer);
        }
        if let Some(at) = self.ready_due_at() {
            timer(at, "systemd is told the cluster is ready");
        }
        if self.upgrade.is_some() {
            timer(self.now + REAP_POLL_INTERVAL, "the new primary is watched until it takes over");
        }
        if self.config.supervision.max_memory.is_some() && self.shutdown.is_none() && self.slots.len() > 0 {
            timer(self.next_memory_check, "workers' memory is checked");
        }
    }

    /// How long the loop may sleep: until the earliest deadline.
    pub(super) fn next_timer(&self) -> Option<Duration> {
        let mut earliest: Option<Instant> = None;
        self.each_timer(|at, _| earliest = Some(earliest.map_or(at, |e| e.min(at))));
        earliest.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Debug builds: no deadline older than this turn's timers may be left,
    /// or the next wait returns at once, forever (a spin).
    #[cfg(debug_assertions)]
    pub(super) fn check_no_timer_left_due(&self, timers_ran_at: Instant) {
        self.each_timer(|at, what| {
            assert!(at >= timers_ran_at, "the loop would spin: \"{what}\" is past due and nothing acts on it");
        });
    }

    pub(super) fn on_timers(&mut self) -> Instant {
        let now = Instant::now();
        let resumed: Vec<u32> = self
            .listeners
            .values_mut()
            .filter(|l| l.paused_until.is_some_and(|at| at <= now))
            .map(|l| {
                l.paused_until = None;
                l.id
            })
            .collect();
        for id in resumed {
            self.accept_from(id, false);
        }
        self.tick_overflows(now);
        self.conns.expire_starvation(now);
        self.escalate_stops(now);
        self.check_heartbeats(now);
        self.check_ack_deadlines(now);
        self.notify_ready_if_serving();
        self.watch_upgrade(now);
        if self.shutdown.is_none() && now >= self.next_memory_check {
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL;
            self.check_memory();
        }
        if self.shutdown.is_none() {
            self.slots.tick(now);
            self.run_slot_actions();
            self.close_idle_listeners(now);
        }
        let unwatched: Vec<u32> = self.workers.values().filter(|w| w.pidfd.is_none()).map(|w| w.id).collect();
        for id in unwatched {
            self.on_worker_exit(id);
        }
        now
    }

    pub(super) fn escalate_stops(&mut self, now: Instant) {
        let stop_timeout = self.shutdown.as_ref().map_or(self.config.stop_timeout, |s| s.grace());
        for entry in self.workers.values_mut() {
            if let Some(signal) = entry.life.due_signal(now, stop_timeout) {
                let _ = sys::kill(entry.pid, signal);
            }
        }
    }

    pub(super) fn check_heartbeats(&mut self, now: Instant) {
        let Some(interval) = self.config.supervision.heartbeat_interval else { return };
        let timeout = self.config.supervision.heartbeat_timeout;
        let mut to_ping = Vec::new();
        let mut hung = Vec::new();
        for entry in self.workers.values_mut() {
            match entry.life.heartbeat(now, interval, timeout, &mut self.next_ping_seq) {
                Beat::Nothing => {}
                Beat::Ping(seq) => to_ping.push((entry.id, seq)),
                Beat::Hung => hung.push((entry.id, entry.pid)),
            }
        }
        for (worker, seq) in to_ping {
            self.send_frame(worker, &Frame::Ping { seq }.encode(), &[]);
        }
        for (worker, pid) in hung {
            // Its exit is a crash: the slot restarts it.
            self.shared.emit(Event::Unresponsive { worker, pid });
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }

    /// A worker holding a connection unacknowledged past `ack_timeout` is
    /// treated as hung: it is killed, and its connections go to other
    /// workers once it is reaped (not before: until then it could still
    /// take one, and a connection must never be served twice).
    pub(super) fn check_ack_deadlines(&mut self, now: Instant) {
        let Some(timeout) = self.config.ack_timeout else { return };
        for worker in self.conns.expire_acks(now, timeout) {
            let Some(entry) = self.workers.get_mut(&worker) else { continue };
            entry.life.ack_expired(); // no new connections meanwhile
            let pid = entry.pid;
            self.shared.emit(Event::Unresponsive { worker, pid });
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }

    pub(super) fn begin_shutdown(&mut self, grace: Duration) {
        if self.shutdown.is_some() {
            return;
        }
        self.notifier.notify("STOPPING=1");
        self.slots.stop();
        // Take what the kernel has already queued, then close the listeners:
        // connections accepted by the kernel are served, not reset.
        let ids: Vec<u32> = self.listeners.keys().copied().collect();
        for id in &ids {
            if let Some(listener) = self.listeners.get_mut(id) {
                listener.ready = true;
                listener.paused_until = None;
            }
            self.accept_from(*id, true);
        }
        // Close the sockets but keep the listeners: they still route what
        // they accepted to their workers.
        for listener in self.listeners.values_mut() {
            if let Some(socket) = listener.socket.take() {
                let _ = self.poll.registry().deregister(&mut SourceFd(&socket.as_raw_fd()));
            }
        }
        self.by_address.clear();
        self.shutdown = Some(Shutdown::new(Instant::now(), grace));
        self.dispatch_pending();
    }

    /// Moves the shutdown along; true once it is complete.
    pub(super) fn advance_shutdown(&mut self) -> bool {
        let Some(shutdown) = &mut self.shutdown else { return false };
        let grace = shutdown.grace();
        match shutdown.advance(Instant::now(), self.conns.pending_len(), self.conns.any_offered()) {
            Drain::Handing => return false,
            Drain::AskAllToLeave => {
                drop(self.conns.close_pending()); // nobody left to serve them
                let ids: Vec<u32> = self.workers.keys().copied().collect();
                for id in ids {
                    self.send_frame(id, &Frame::Disconnect.encode(), &[]);
                    self.conns.stop_offering(id);
                    if let Some(entry) = self.workers.get_mut(&id) {
                        entry.life.ask_to_leave_for_shutdown(Instant::now(), grace);
                    }
                }
            }
            Drain::Leaving => {}
        }
        self.workers.is_empty()
    }

    pub(super) fn finish(&mut self) {
        self.shared.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        // Fail any command that raced in after the last turn.
        let leftovers: Vec<Command> = {
            let mut queue = self.shared.commands.lock().unwrap_or_else(|p| p.into_inner());
            queue.drain(..).collect()
        };
        let stopped = || Error::new(Code::State, "the primary has shut down");
        for command in leftovers {
            match command {
                Command::Fork { reply, .. } => drop(reply.send(Err(stopped()))),
                Command::Listen { reply, .. } => drop(reply.send(Err(stopped()))),
                Command::Reload { reply } => drop(reply.send(Err(stopped()))),
                Command::Scale { reply, .. } => drop(reply.send(Err(stopped()))),
                Command::Stats { reply } => drop(reply.send(Vec::new())),
                _ => {}
            }
        }
        self.signals = None;
        self.shared.emit(Event::Shutdown);
    }
}
