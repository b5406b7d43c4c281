//! Slots and their workers: rolling reload and replacements, readiness,
//! recycling, exits and restarts.

use super::*;

impl EventLoop {
    pub(super) fn reload(&mut self) -> Result<u32> {
        self.check_running()?;
        let generation = self.slots.reload(Instant::now());
        self.run_slot_actions();
        Ok(generation)
    }

    /// Carries out what the slots decided, in order (see `core::slots`).
    pub(super) fn run_slot_actions(&mut self) {
        while let Some(action) = self.slots.next_action() {
            match action {
                SlotAction::Start { slot, replacing } => {
                    let result = self.start_worker(slot).map(|(info, _)| info.id);
                    self.slots.started(Instant::now(), slot, replacing, result);
                }
                SlotAction::Stop(worker) => self.stop_worker(worker),
                SlotAction::Abandon(worker) => self.abandon_worker(worker),
                SlotAction::KeepServing(worker) => self.conns.forget_budget(worker),
                SlotAction::Emit(event) => self.shared.emit(event),
                SlotAction::SpawnFailed { slot, error, retry_at } => self.spawn_failed(slot, error, retry_at),
                SlotAction::ReloadStarted => {
                    self.notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", systemd::monotonic_usec()));
                    self.ready_notified = false;
                }
                SlotAction::ReloadEnded => self.notify_ready_if_serving(),
            }
        }
    }

    /// The worker is ready (listening, or said so with `wait_ready`): if it
    /// replaces another, the other is asked to leave now.
    pub(super) fn on_worker_ready(&mut self, worker: u32) {
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        if !entry.life.become_ready() {
            return;
        }
        let Some(index) = entry.slot else { return };
        self.slots.ready(Instant::now(), index, worker);
        self.run_slot_actions();
    }

    /// When `READY=1` is due, if it is: every slot's worker listens (at
    /// start, or after a reload; not during one), the slots settled.
    pub(super) fn ready_due_at(&self) -> Option<Instant> {
        if self.ready_notified || self.slots.reloading() || self.shutdown.is_some() || !self.notifier.active() {
            return None;
        }
        let serving = |w: Option<u32>| w.and_then(|w| self.workers.get(&w)).is_some_and(|w| w.life.listening());
        if self.slots.len() == 0 || !self.slots.workers().all(|(_, worker, _)| serving(worker)) {
            return None;
        }
        Some(self.slot_added_at + READY_SETTLE)
    }

    /// Tells systemd `READY=1` (with a status line) once it is due.
    pub(super) fn notify_ready_if_serving(&mut self) {
        if self.ready_due_at().is_none_or(|at| at > Instant::now()) {
            return;
        }
        self.ready_notified = true;
        let status = format!("STATUS={} workers listening, generation {}", self.slots.len(), self.slots.generation());
        self.notifier.notify(&format!("READY=1\n{status}"));
    }

    /// Recycles (gracefully) each slot whose serving worker's resident
    /// memory passed `max_memory`, one replacement per slot at a time.
    pub(super) fn check_memory(&mut self) {
        let Some(limit) = self.config.supervision.max_memory else { return };
        for (index, worker, replacing) in self.slots.workers() {
            if replacing {
                continue;
            }
            let Some(entry) = worker.and_then(|w| self.workers.get(&w)) else { continue };
            if !entry.life.serving_ready() {
                continue;
            }
            if sys::process_usage(entry.pid).is_some_and(|u| u.rss_bytes > limit) {
                self.recycle_due.push(index);
            }
        }
        self.start_due_recycles();
    }

    pub(super) fn start_due_recycles(&mut self) {
        self.note_recycle_due();
        for index in std::mem::take(&mut self.recycle_due) {
            self.slots.recycle(index);
            self.run_slot_actions();
        }
    }

    pub(super) fn on_worker_exit(&mut self, worker: u32) {
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        let status = match &mut entry.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    Some(match (status.code(), status.signal()) {
                        (Some(code), _) => ExitStatus::Code(code),
                        (None, Some(signal)) => ExitStatus::Signal(signal),
                        _ => ExitStatus::Unknown,
                    })
                }
                Ok(None) => None,
                Err(_) => Some(ExitStatus::Unknown),
            },
            None => sys::try_reap(entry.pid).unwrap_or(Some(ExitStatus::Unknown)),
        };
        let Some(status) = status else { return };
        // Read what it sent before dying (acks first), then the hang-up.
        self.drain_channel(worker);
        self.hang_up(worker);
        let Some(entry) = self.workers.remove(&worker) else { return };
        drop(self.conns.remove_worker(worker)); // those whose listener is gone close
        if let Some(fd) = &entry.pidfd {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        let exit = match status {
            ExitStatus::Code(code) => Exit::Code(code),
            ExitStatus::Signal(signal) => Exit::Signal(signal),
            ExitStatus::Unknown => Exit::Unknown,
        };
        self.shared.emit(Event::Exit {
            worker,
            pid: entry.pid,
            exit,
            after_disconnect: entry.life.after_disconnect(),
            stop_requested: entry.life.stop_requested(),
        });
        let Some(slot) = entry.slot else { return };
        let gone = Departed {
            worker,
            pid: entry.pid,
            slot,
            started: entry.life.started(),
            stop_requested: entry.life.stop_requested(),
            after_disconnect: entry.life.after_disconnect(),
            exit,
        };
        self.slots.exited(Instant::now(), &gone);
        self.run_slot_actions();
    }

    /// Could not even start a worker (out of fds or processes, the program
    /// gone): no worker ran, so it is not a crash and never crash-loops the
    /// slot. It is retried on a backoff of its own, and the host is told.
    pub(super) fn spawn_failed(&mut self, index: u32, error: Error, retry_at: Instant) {
        let now = Instant::now();
        let mut message = format!("could not start a worker for slot {index}: {}", error.message());
        if matches!(error.errno(), libc::EMFILE | libc::ENFILE) && self.conns.pending_len() > 0 {
            // Out of fds while connections wait for a worker: nobody can
            // serve them until a worker starts, and none can start while
            // they hold the fds. Close the newest few (the oldest are next
            // in line) so the retry can succeed.
            let shed = self.conns.shed_newest(SHED_ON_EMFILE).len();
            message.push_str(&format!("; closed {shed} queued connections to free file descriptors"));
        }
        message.push_str(&format!("; retrying in {:?}", retry_at.saturating_duration_since(now)));
        self.shared.emit(Event::SpawnFailed { slot: index, message });
    }
}
