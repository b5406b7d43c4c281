//! Slots and their workers, decided without I/O: rolling reloads and
//! replacements (recycling), readiness, exits, restarts and crash loops.
//!
//! Every method records what to do as [`SlotAction`]s; the driver takes
//! them in order ([`Slots::next_action`]) and carries them out. Starting a
//! worker is the one action with an answer: the driver spawns and reports
//! the outcome with [`Slots::started`], which may queue more. A reload
//! starts one replacement at a time and waits for that answer before the
//! next, so a spawn that fails stops the reload where it is.
//!
//! The per-slot arithmetic (backoff, crash window, spawn retries) is in
//! [`crate::primary::supervisor::Slot`].

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::time::Instant;

use crate::error::Error;
use crate::event::{Event, Exit};
use crate::primary::supervisor::{AfterCrash, Cause, Reload, Replacement, Slot, Supervision};

/// What the driver is to do, in order.
#[derive(Debug)]
pub(crate) enum SlotAction {
    /// Start a worker for `slot` — a restart (`replacing: None`) or a
    /// replacement — and report with [`Slots::started`].
    Start { slot: u32, replacing: Option<Cause> },
    /// Ask this worker to finish and leave (replaced, or its slot removed).
    Stop(u32),
    /// Kill this worker at once: a replacement that will not be ready.
    Abandon(u32),
    /// Its replacement failed: it keeps serving and is not recycled again.
    KeepServing(u32),
    /// Tell the host.
    Emit(Event),
    /// A restart could not even spawn: not a crash; retried at `retry_at`.
    SpawnFailed { slot: u32, error: Error, retry_at: Instant },
    /// A reload began (systemd hears `RELOADING=1`).
    ReloadStarted,
    /// A reload ended, done or failed (systemd may hear `READY=1` again).
    ReloadEnded,
}

/// A worker that was reaped, as its slot needs to know it.
pub(crate) struct Departed {
    pub worker: u32,
    pub pid: i32,
    pub slot: u32,
    pub started: Instant,
    /// The primary asked it to go: its exit is not a crash.
    pub stop_requested: bool,
    /// It left after a disconnect (asked for, or its own goodbye).
    pub after_disconnect: bool,
    pub exit: Exit,
}

/// Every slot, the reload under way, and what to do next.
pub(crate) struct Slots {
    slots: BTreeMap<u32, Slot>,
    next_slot: u32,
    /// The reload generation new workers are started with.
    generation: u32,
    reload: Option<Reload>,
    /// The reload asked for a replacement and its start is not yet reported.
    reload_starting: bool,
    /// A reload was asked for while one ran: run another after it.
    reload_again: bool,
    stopping: bool,
    policy: Supervision,
    actions: VecDeque<SlotAction>,
}

impl Slots {
    pub fn new(policy: Supervision) -> Slots {
        Slots {
            slots: BTreeMap::new(),
            next_slot: 0,
            generation: 0,
            reload: None,
            reload_starting: false,
            reload_again: false,
            stopping: false,
            policy,
            actions: VecDeque::new(),
        }
    }

    pub fn next_action(&mut self) -> Option<SlotAction> {
        self.actions.pop_front()
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn reloading(&self) -> bool {
        self.reload.is_some()
    }

    pub fn env(&self, index: u32) -> &[(OsString, OsString)] {
        self.slots.get(&index).map_or(&[], |s| &s.env)
    }

    pub fn restarts(&self, index: u32) -> u32 {
        self.slots.get(&index).map_or(0, |s| s.restarts)
    }

    /// Each slot's serving worker (`None` while it restarts), with whether a
    /// replacement is under way.
    pub fn workers(&self) -> impl Iterator<Item = (u32, Option<u32>, bool)> + '_ {
        self.slots.values().map(|s| (s.index, s.worker, s.replacement.is_some()))
    }

    /// A new slot (its first worker is started by the caller, who reports
    /// it with `set_worker`, or takes the slot back with `forget`).
    pub fn add(&mut self, env: Vec<(OsString, OsString)>) -> u32 {
        let index = self.next_slot;
        self.next_slot += 1;
        self.slots.insert(index, Slot::new(index, env));
        index
    }

    /// A fork's own program and directory (Node's `setupPrimary` between
    /// forks), kept with the slot: its restarts and reloads run the same.
    pub fn set_overrides(&mut self, index: u32, overrides: crate::spawn::SpawnOverrides) {
        if let Some(slot) = self.slots.get_mut(&index) {
            slot.overrides = overrides;
        }
    }

    /// What `start` applies to the primary's `SpawnSpec` for this slot.
    pub fn overrides(&self, index: u32) -> Option<&crate::spawn::SpawnOverrides> {
        self.slots.get(&index).map(|s| &s.overrides)
    }

    /// The slot's first worker is running: its pipes were that worker's only.
    pub fn after_first_fork(&mut self, index: u32) {
        if let Some(slot) = self.slots.get_mut(&index) {
            slot.overrides.after_first_fork();
        }
    }

    pub fn set_worker(&mut self, index: u32, worker: u32) {
        if let Some(slot) = self.slots.get_mut(&index) {
            slot.worker = Some(worker);
        }
    }

    /// A slot whose first worker could not start: gone without a trace.
    pub fn forget(&mut self, index: u32) {
        self.slots.remove(&index);
    }

    /// Removes a slot; its workers are asked to leave.
    pub fn remove(&mut self, index: u32) {
        if let Some(slot) = self.slots.remove(&index) {
            for worker in slot.worker.into_iter().chain(slot.replacement.map(|r| r.worker)) {
                self.actions.push_back(SlotAction::Stop(worker));
            }
        }
    }

    /// Removes the newest slot (scaling down).
    pub fn remove_last(&mut self) {
        if let Some((&last, _)) = self.slots.iter().next_back() {
            self.remove(last);
        }
    }

    /// The shutdown: no reload, no replacement, no restart any more.
    pub fn stop(&mut self) {
        self.stopping = true;
        self.reload = None;
        self.reload_starting = false;
        self.reload_again = false;
    }

    // ----- rolling reload ----------------------------------------------------

    /// Starts a reload (or, during one, queues another after it) and says
    /// the generation it brings.
    pub fn reload(&mut self, now: Instant) -> u32 {
        if self.reload.is_some() {
            self.reload_again = true;
            return self.generation + 1;
        }
        self.generation += 1;
        let queue = self.slots.keys().copied().collect();
        self.reload = Some(Reload { generation: self.generation, queue });
        self.actions.push_back(SlotAction::ReloadStarted);
        self.advance_reload(now);
        self.generation
    }

    /// Asks for replacements up to the concurrency limit, one start at a
    /// time; finishes the reload once every slot has been replaced.
    fn advance_reload(&mut self, now: Instant) {
        loop {
            let Some(reload) = &mut self.reload else { return };
            if self.reload_starting {
                return; // its answer continues the reload
            }
            let replacing = |s: &Slot| s.replacement.is_some_and(|r| r.cause == Cause::Reload);
            let in_flight = self.slots.values().filter(|s| replacing(s)).count() as u32;
            if in_flight >= self.policy.reload_concurrency.max(1) {
                return;
            }
            let Some(index) = reload.queue.pop_front() else {
                if in_flight == 0 {
                    let generation = reload.generation;
                    self.reload = None;
                    self.actions.push_back(SlotAction::Emit(Event::ReloadDone { generation }));
                    self.actions.push_back(SlotAction::ReloadEnded);
                    if std::mem::take(&mut self.reload_again) {
                        self.reload(now);
                    }
                }
                return;
            };
            let Some(slot) = self.slots.get_mut(&index) else { continue };
            if slot.worker.is_none() {
                // Restarting or crash-looped: new code deserves a fresh start.
                slot.reset();
                slot.restart_at = Some(now);
                continue;
            }
            self.reload_starting = true;
            self.actions.push_back(SlotAction::Start { slot: index, replacing: Some(Cause::Reload) });
            return;
        }
    }

    fn fail_reload(&mut self, message: String) {
        let Some(reload) = self.reload.take() else { return };
        self.reload_starting = false;
        self.reload_again = false;
        for slot in self.slots.values_mut() {
            if let Some(r) = slot.replacement.filter(|r| r.cause == Cause::Reload) {
                slot.replacement = None;
                self.actions.push_back(SlotAction::Abandon(r.worker));
            }
        }
        self.actions.push_back(SlotAction::Emit(Event::ReloadFailed { generation: reload.generation, message }));
        self.actions.push_back(SlotAction::ReloadEnded);
    }

    /// A slot whose worker reached its connection budget or memory limit
    /// gets a replacement, unless one is under way.
    pub fn recycle(&mut self, index: u32) {
        let busy = self.slots.get(&index).is_none_or(|s| s.replacement.is_some());
        if !busy && !self.stopping {
            self.actions.push_back(SlotAction::Start { slot: index, replacing: Some(Cause::Recycle) });
        }
    }

    /// The answer to a `Start`: the new worker's id, or why it could not start.
    pub fn started(&mut self, now: Instant, index: u32, replacing: Option<Cause>, result: Result<u32, Error>) {
        match replacing {
            Some(cause) => {
                if cause == Cause::Reload {
                    self.reload_starting = false;
                }
                match result {
                    Ok(worker) => {
                        let deadline = now + self.policy.ready_timeout;
                        if let Some(slot) = self.slots.get_mut(&index) {
                            slot.replacement = Some(Replacement { worker, deadline, cause });
                        }
                        if cause == Cause::Reload {
                            self.advance_reload(now);
                        }
                    }
                    Err(e) if cause == Cause::Reload => {
                        self.fail_reload(format!("could not start a replacement worker: {e}"));
                    }
                    Err(_) => {} // recycling tries again at the next budget or check
                }
            }
            None => {
                let Some(slot) = self.slots.get_mut(&index) else { return };
                slot.restart_at = None;
                match result {
                    Ok(worker) => {
                        slot.worker = Some(worker);
                        slot.restarts += 1;
                        slot.spawn_succeeded();
                    }
                    Err(error) => {
                        let retry_at = slot.on_spawn_failure(now, &self.policy);
                        self.actions.push_back(SlotAction::SpawnFailed { slot: index, error, retry_at });
                    }
                }
            }
        }
    }

    /// The worker is ready (listening, or said so under `wait_ready`): if
    /// it replaces another, the other is asked to leave now.
    pub fn ready(&mut self, now: Instant, index: u32, worker: u32) {
        let Some(slot) = self.slots.get_mut(&index) else { return };
        let Some(replacement) = slot.replacement.filter(|r| r.worker == worker) else { return };
        slot.replacement = None;
        if let Some(old) = slot.worker.replace(worker) {
            self.actions.push_back(SlotAction::Stop(old));
        }
        if replacement.cause == Cause::Reload {
            self.advance_reload(now);
        }
    }

    /// A replacement will not become ready: it is killed, the old worker keeps serving.
    fn replacement_failed(&mut self, index: u32, message: String) {
        let Some(slot) = self.slots.get_mut(&index) else { return };
        let Some(replacement) = slot.replacement.take() else { return };
        self.actions.push_back(SlotAction::Abandon(replacement.worker));
        match replacement.cause {
            Cause::Reload => self.fail_reload(message),
            Cause::Recycle => {
                if let Some(old) = slot.worker {
                    self.actions.push_back(SlotAction::KeepServing(old));
                }
            }
        }
    }

    // ----- exits, restarts and deadlines -------------------------------------

    /// Decides what a worker's exit means for its slot.
    pub fn exited(&mut self, now: Instant, gone: &Departed) {
        let Some(slot) = self.slots.get_mut(&gone.slot) else { return };
        if slot.replacement.is_some_and(|r| r.worker == gone.worker) {
            let message = format!("replacement worker {} exited before it was ready", gone.worker);
            return self.replacement_failed(gone.slot, message);
        }
        if slot.worker != Some(gone.worker) {
            return; // an old worker that was replaced, or a slot already removed
        }
        slot.worker = None;
        if self.stopping || gone.stop_requested {
            return;
        }
        if gone.after_disconnect && gone.exit == Exit::Code(0) {
            // It left on its own, gracefully: replace it at once, no penalty.
            if self.policy.restart {
                slot.restart_at = Some(now);
            }
            return;
        }
        // Anything else is a crash, whatever came before it: a worker that
        // said goodbye and then failed (a listen error, say) must meet the
        // backoff and the crash-loop limit, not be restarted at once forever.
        if let AfterCrash::CrashLoop = slot.on_crash(now, now.duration_since(gone.started), &self.policy) {
            let event = Event::CrashLoop { slot: gone.slot, worker: gone.worker, pid: gone.pid };
            self.actions.push_back(SlotAction::Emit(event));
        }
    }

    /// Restarts that are due, and replacements past their ready deadline.
    pub fn tick(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        for slot in self.slots.values() {
            if slot.worker.is_none() && !slot.failed && slot.restart_at.is_some_and(|at| at <= now) {
                self.actions.push_back(SlotAction::Start { slot: slot.index, replacing: None });
            }
        }
        let expired: Vec<(u32, u32)> = self
            .slots
            .values()
            .filter_map(|s| s.replacement.filter(|r| r.deadline <= now).map(|r| (s.index, r.worker)))
            .collect();
        for (index, worker) in expired {
            let timeout = self.policy.ready_timeout;
            self.replacement_failed(index, format!("replacement worker {worker} was not ready within {timeout:?}"));
        }
    }

    /// Its deadlines, for the driver's single list of timers.
    pub fn each_deadline(&self, timer: &mut impl FnMut(Instant, &'static str)) {
        if self.stopping {
            return;
        }
        for slot in self.slots.values() {
            if let Some(at) = slot.restart_at.filter(|_| slot.worker.is_none() && !slot.failed) {
                timer(at, "a slot's restart");
            }
            if let Some(replacement) = slot.replacement {
                timer(replacement.deadline, "a replacement's ready deadline");
            }
        }
    }
}
