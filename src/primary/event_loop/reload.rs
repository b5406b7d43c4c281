//! Slots and their workers: rolling reload and replacements, readiness,
//! recycling, exits and restarts.

use super::*;

impl EventLoop {
    pub(super) fn reload(&mut self) -> Result<u32> {
        self.check_running()?;
        if self.reload.is_some() {
            self.reload_again = true;
            return Ok(self.generation + 1);
        }
        self.generation += 1;
        let queue = self.slots.keys().copied().collect();
        self.reload = Some(Reload { generation: self.generation, queue });
        self.notifier.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", systemd::monotonic_usec()));
        self.ready_notified = false;
        self.advance_reload();
        Ok(self.generation)
    }

    /// Starts replacements up to the concurrency limit; finishes the reload
    /// when every slot has been replaced.
    pub(super) fn advance_reload(&mut self) {
        loop {
            let Some(reload) = &mut self.reload else { return };
            let in_flight =
                self.slots.values().filter(|s| s.replacement.is_some_and(|r| r.cause == Cause::Reload)).count() as u32;
            if in_flight >= self.config.supervision.reload_concurrency.max(1) {
                return;
            }
            let Some(index) = reload.queue.pop_front() else {
                if in_flight == 0 {
                    let generation = reload.generation;
                    self.reload = None;
                    self.shared.emit(Event::ReloadDone { generation });
                    self.notify_ready_if_serving();
                    if std::mem::take(&mut self.reload_again) {
                        let _ = self.reload();
                    }
                }
                return;
            };
            let Some(slot) = self.slots.get_mut(&index) else { continue };
            if slot.worker.is_none() {
                // Restarting or crash-looped: new code deserves a fresh start.
                slot.reset();
                slot.restart_at = Some(Instant::now());
                continue;
            }
            if let Err(e) = self.start_replacement(index, Cause::Reload) {
                self.fail_reload(format!("could not start a replacement worker: {e}"));
                return;
            }
        }
    }

    pub(super) fn start_replacement(&mut self, index: u32, cause: Cause) -> Result<()> {
        let info = self.start_worker(index)?;
        let deadline = Instant::now() + self.config.supervision.ready_timeout;
        if let Some(slot) = self.slots.get_mut(&index) {
            slot.replacement = Some(Replacement { worker: info.id, deadline, cause });
        }
        Ok(())
    }

    /// A replacement will not become ready: kill it; the old worker keeps serving.
    pub(super) fn replacement_failed(&mut self, index: u32, message: String) {
        let Some(slot) = self.slots.get_mut(&index) else { return };
        let Some(replacement) = slot.replacement.take() else { return };
        self.abandon_worker(replacement.worker);
        match replacement.cause {
            Cause::Reload => self.fail_reload(message),
            Cause::Recycle => {
                // Keep the old worker; do not try to recycle it again.
                if let Some(old) = self.slots.get(&index).and_then(|s| s.worker) {
                    self.conns.forget_budget(old);
                }
            }
        }
    }

    pub(super) fn fail_reload(&mut self, message: String) {
        let Some(reload) = self.reload.take() else { return };
        self.reload_again = false;
        let in_flight: Vec<u32> = self
            .slots
            .values_mut()
            .filter(|s| s.replacement.is_some_and(|r| r.cause == Cause::Reload))
            .filter_map(|s| s.replacement.take().map(|r| r.worker))
            .collect();
        for worker in in_flight {
            self.abandon_worker(worker);
        }
        self.shared.emit(Event::ReloadFailed { generation: reload.generation, message });
        // The old workers keep serving: ready again, with the reason.
        self.notify_ready_if_serving();
    }

    /// The worker is ready (listening, or said so with `wait_ready`): if it
    /// replaces another, the other is asked to leave now.
    pub(super) fn on_worker_ready(&mut self, worker: u32) {
        let Some(entry) = self.workers.get_mut(&worker) else { return };
        if !entry.life.become_ready() {
            return;
        }
        let Some(index) = entry.slot else { return };
        let Some(slot) = self.slots.get_mut(&index) else { return };
        let Some(replacement) = slot.replacement.filter(|r| r.worker == worker) else { return };
        slot.replacement = None;
        if let Some(old) = slot.worker.replace(worker) {
            self.stop_worker(old);
        }
        if replacement.cause == Cause::Reload {
            self.advance_reload();
        }
    }

    /// When `READY=1` is due, if it is: every slot's worker listens (at
    /// start, or after a reload; not during one), the slots settled.
    pub(super) fn ready_due_at(&self) -> Option<Instant> {
        if self.ready_notified || self.reload.is_some() || self.shutdown.is_some() || !self.notifier.active() {
            return None;
        }
        let serving = |s: &Slot| s.worker.and_then(|w| self.workers.get(&w)).is_some_and(|w| w.life.listening());
        if self.slots.is_empty() || !self.slots.values().all(serving) {
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
        let status = format!("STATUS={} workers listening, generation {}", self.slots.len(), self.generation);
        self.notifier.notify(&format!("READY=1\n{status}"));
    }

    /// Recycles (gracefully) each slot whose serving worker's resident
    /// memory passed `max_memory`, one replacement per slot at a time.
    pub(super) fn check_memory(&mut self) {
        let Some(limit) = self.config.supervision.max_memory else { return };
        for slot in self.slots.values() {
            if slot.replacement.is_some() {
                continue;
            }
            let Some(entry) = slot.worker.and_then(|w| self.workers.get(&w)) else { continue };
            if !entry.life.serving_ready() {
                continue;
            }
            if sys::process_usage(entry.pid).is_some_and(|u| u.rss_bytes > limit) {
                self.recycle_due.push(slot.index);
            }
        }
        self.start_due_recycles();
    }

    pub(super) fn start_due_recycles(&mut self) {
        self.note_recycle_due();
        for index in std::mem::take(&mut self.recycle_due) {
            let busy = self.slots.get(&index).is_none_or(|s| s.replacement.is_some());
            if !busy && self.shutdown.is_none() {
                let _ = self.start_replacement(index, Cause::Recycle);
            }
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
        self.conns.remove_worker(worker);
        if let Some(fd) = &entry.pidfd {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
        }
        let exit = match status {
            ExitStatus::Code(code) => Exit::Code(code),
            ExitStatus::Signal(signal) => Exit::Signal(signal),
            ExitStatus::Unknown => Exit::Unknown,
        };
        self.shared.emit(Event::Exit { worker, pid: entry.pid, exit, after_disconnect: entry.life.after_disconnect() });
        self.supervise_exit(&entry, exit);
    }

    /// Decides what a worker's exit means for its slot.
    pub(super) fn supervise_exit(&mut self, entry: &WorkerEntry, exit: Exit) {
        let Some(index) = entry.slot else { return };
        let Some(slot) = self.slots.get_mut(&index) else { return };
        if slot.replacement.is_some_and(|r| r.worker == entry.id) {
            let message = format!("replacement worker {} exited before it was ready", entry.id);
            return self.replacement_failed(index, message);
        }
        if slot.worker != Some(entry.id) {
            return; // an old worker that was replaced, or a slot already removed
        }
        slot.worker = None;
        if self.shutdown.is_some() || entry.life.stop_requested() {
            return;
        }
        let now = Instant::now();
        let policy = &self.config.supervision;
        if entry.life.after_disconnect() && exit == Exit::Code(0) {
            // It left on its own, gracefully: replace it at once, no penalty.
            if policy.restart {
                slot.restart_at = Some(now);
            }
            return;
        }
        // Anything else is a crash, whatever came before it: a worker that
        // said goodbye and then failed (a listen error, say) must meet the
        // backoff and the crash-loop limit, not be restarted at once forever.
        if let AfterCrash::CrashLoop = slot.on_crash(now, now.duration_since(entry.life.started()), policy) {
            self.shared.emit(Event::CrashLoop { slot: index, worker: entry.id, pid: entry.pid });
        }
    }

    pub(super) fn restart_due_slots(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .slots
            .values()
            .filter(|s| s.worker.is_none() && !s.failed && s.restart_at.is_some_and(|at| at <= now))
            .map(|s| s.index)
            .collect();
        for index in due {
            let result = self.start_worker(index);
            let Some(slot) = self.slots.get_mut(&index) else { continue };
            slot.restart_at = None;
            match result {
                Ok(info) => {
                    slot.worker = Some(info.id);
                    slot.restarts += 1;
                    slot.spawn_succeeded();
                }
                Err(e) => self.spawn_failed(index, e, now),
            }
        }
    }

    /// Could not even start a worker (out of fds or processes, the program
    /// gone): no worker ran, so it is not a crash and never crash-loops the
    /// slot. It is retried on a backoff of its own, and the host is told.
    pub(super) fn spawn_failed(&mut self, index: u32, error: Error, now: Instant) {
        let Some(slot) = self.slots.get_mut(&index) else { return };
        let retry_at = slot.on_spawn_failure(now, &self.config.supervision);
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

    pub(super) fn expire_replacements(&mut self, now: Instant) {
        let expired: Vec<(u32, u32)> = self
            .slots
            .values()
            .filter_map(|s| s.replacement.filter(|r| r.deadline <= now).map(|r| (s.index, r.worker)))
            .collect();
        for (index, worker) in expired {
            let timeout = self.config.supervision.ready_timeout;
            self.replacement_failed(index, format!("replacement worker {worker} was not ready within {timeout:?}"));
        }
    }
}
