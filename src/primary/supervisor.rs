//! Supervision policy: when a worker is restarted, how long to wait, when a
//! slot is declared crash-looping, how replacements (rolling reload,
//! recycling) are tracked. Pure bookkeeping, no I/O: the event loop asks
//! and acts.
//!
//! A *slot* is a place for one worker: `fork()` adds one, `scale(n)` sets
//! their number, `disconnect()` removes one. A slot remembers its extra
//! environment, so a restarted worker gets what the original got.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::time::{Duration, Instant};

/// Restart, reload, health and recycling settings. `Default` gives the
/// documented defaults.
#[derive(Clone, Debug)]
pub struct Supervision {
    /// Replace a worker that exits without being asked to. Default on.
    pub restart: bool,
    /// First restart delay. Default 100 ms.
    pub restart_delay: Duration,
    /// Longest restart delay. Default 10 s.
    pub restart_delay_max: Duration,
    /// Each unexpected exit multiplies the delay by this. Default 2.
    pub restart_backoff: f64,
    /// A worker that ran this long resets the delay to `restart_delay`. Default 5 s.
    pub stable_after: Duration,
    /// This many unexpected exits within `crash_loop_window` stop restarts
    /// of that slot (a `CrashLoop` event says so). Default 5.
    pub crash_loop_count: u32,
    /// See `crash_loop_count`. Default 30 s.
    pub crash_loop_window: Duration,
    /// How long a replacement (reload, recycling) has to become ready. Default 30 s.
    pub ready_timeout: Duration,
    /// Ready means an explicit ready message from the worker (pm2's
    /// `wait_ready`), not its first listen. Default off.
    pub wait_ready: bool,
    /// Workers replaced at once during a rolling reload. Default 1.
    pub reload_concurrency: u32,
    /// Ping workers this often; `None` (default): no heartbeat.
    pub heartbeat_interval: Option<Duration>,
    /// A worker that has not answered a ping for this long is killed and
    /// replaced. Default 30 s.
    pub heartbeat_timeout: Duration,
    /// Replace a worker gracefully after it was handed this many
    /// connections; 0 (default): never. Only for policies where the primary
    /// accepts (rr), since it counts what it hands over.
    pub recycle_after: u64,
    /// Up to this many connections are added at random to each worker's
    /// `recycle_after`, so workers do not all recycle together. Default 0.
    pub recycle_jitter: u64,
    /// Replace a worker gracefully once its resident memory passes this
    /// many bytes (checked every second, from `/proc`), as pm2's
    /// `max_memory_restart` does but without dropping a connection: the
    /// replacement starts, and the old worker leaves once it is ready.
    /// `None` (default): no limit.
    pub max_memory: Option<u64>,
}

impl Default for Supervision {
    fn default() -> Supervision {
        Supervision {
            restart: true,
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(10),
            restart_backoff: 2.0,
            stable_after: Duration::from_secs(5),
            crash_loop_count: 5,
            crash_loop_window: Duration::from_secs(30),
            ready_timeout: Duration::from_secs(30),
            wait_ready: false,
            reload_concurrency: 1,
            heartbeat_interval: None,
            heartbeat_timeout: Duration::from_secs(30),
            recycle_after: 0,
            recycle_jitter: 0,
            max_memory: None,
        }
    }
}

/// Why a replacement worker is being started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Part of a rolling reload.
    Reload,
    /// The old worker reached its connection budget.
    Recycle,
}

/// A worker being started to take over a slot.
#[derive(Clone, Copy, Debug)]
pub struct Replacement {
    pub worker: u32,
    pub deadline: Instant,
    pub cause: Cause,
}

/// What to do after a slot's worker died unexpectedly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterCrash {
    /// Start a new worker then.
    RestartAt(Instant),
    /// Too many crashes in the window: stop restarting this slot.
    CrashLoop,
    /// Restarts are off.
    Stay,
}

/// A place for one worker.
#[derive(Debug)]
pub struct Slot {
    pub index: u32,
    pub env: Vec<(OsString, OsString)>,
    /// Program and directory of this slot's fork, if not the primary's.
    pub overrides: crate::spawn::SpawnOverrides,
    /// The worker serving this slot (none while it is being restarted).
    pub worker: Option<u32>,
    pub replacement: Option<Replacement>,
    /// Workers started for this slot after its first.
    pub restarts: u32,
    /// When a restart is due.
    pub restart_at: Option<Instant>,
    /// Crash-looping: no more restarts until a reload or a scale.
    pub failed: bool,
    crashes: VecDeque<Instant>,
    next_delay: Option<Duration>,
    /// Spawns that failed in a row (no worker ran: not crashes).
    spawn_failures: u32,
}

impl Slot {
    pub fn new(index: u32, env: Vec<(OsString, OsString)>) -> Slot {
        Slot {
            index,
            env,
            overrides: Default::default(),
            worker: None,
            replacement: None,
            restarts: 0,
            restart_at: None,
            failed: false,
            crashes: VecDeque::new(),
            next_delay: None,
            spawn_failures: 0,
        }
    }

    /// Records a failed spawn and sets the retry: `restart_delay` grown by
    /// `restart_backoff` per failure in a row, up to `restart_delay_max`.
    /// It touches neither the crash history nor `failed`: a worker that
    /// could not start did not crash, and the slot keeps trying (once the
    /// fds, processes or program it lacked are back, it recovers by itself).
    pub fn on_spawn_failure(&mut self, now: Instant, policy: &Supervision) -> Instant {
        let growth = policy.restart_backoff.max(1.0).powi(self.spawn_failures.min(64) as i32);
        let delay = (policy.restart_delay.as_secs_f64() * growth).min(policy.restart_delay_max.as_secs_f64());
        self.spawn_failures = self.spawn_failures.saturating_add(1);
        let at = now + Duration::from_secs_f64(delay);
        self.restart_at = Some(at);
        at
    }

    /// A worker started: the next spawn failure starts its backoff over.
    pub fn spawn_succeeded(&mut self) {
        self.spawn_failures = 0;
    }

    /// Records an unexpected exit of this slot's worker after `uptime` and
    /// says what to do.
    pub fn on_crash(&mut self, now: Instant, uptime: Duration, policy: &Supervision) -> AfterCrash {
        if uptime >= policy.stable_after {
            self.next_delay = None; // it ran well: start the backoff over
        }
        self.crashes.push_back(now);
        while self.crashes.front().is_some_and(|&t| now.duration_since(t) > policy.crash_loop_window) {
            self.crashes.pop_front();
        }
        if !policy.restart {
            return AfterCrash::Stay;
        }
        if policy.crash_loop_count > 0 && self.crashes.len() >= policy.crash_loop_count as usize {
            self.failed = true;
            self.restart_at = None;
            return AfterCrash::CrashLoop;
        }
        let delay = self.next_delay.unwrap_or(policy.restart_delay);
        let grown = delay.as_secs_f64() * policy.restart_backoff.max(1.0);
        self.next_delay = Some(Duration::from_secs_f64(grown.min(policy.restart_delay_max.as_secs_f64())));
        let at = now + delay.min(policy.restart_delay_max);
        self.restart_at = Some(at);
        AfterCrash::RestartAt(at)
    }

    /// Forgets the crash history (a reload or a scale gives a slot a fresh start).
    pub fn reset(&mut self) {
        self.failed = false;
        self.crashes.clear();
        self.next_delay = None;
    }
}

/// A rolling reload under way.
#[derive(Debug)]
pub struct Reload {
    pub generation: u32,
    /// Slots still to replace, in order.
    pub queue: VecDeque<u32>,
}

/// A small xorshift generator for recycling jitter (no dependency needed
/// for spreading restarts; not for anything that must be unpredictable).
pub struct Jitter(u64);

impl Default for Jitter {
    fn default() -> Jitter {
        Jitter::new()
    }
}

impl Jitter {
    pub fn new() -> Jitter {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Jitter(seed | 1)
    }

    /// A number in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % (max + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Supervision {
        Supervision {
            restart_delay: Duration::from_millis(100),
            restart_delay_max: Duration::from_millis(1000),
            restart_backoff: 2.0,
            stable_after: Duration::from_secs(5),
            crash_loop_count: 5,
            crash_loop_window: Duration::from_secs(30),
            ..Supervision::default()
        }
    }

    #[test]
    fn delays_grow_to_the_cap_then_crash_loop() {
        let p = policy();
        let mut slot = Slot::new(0, vec![]);
        let t0 = Instant::now();
        let delays: Vec<u128> = (0..4)
            .map(|i| match slot.on_crash(t0 + Duration::from_millis(i), Duration::ZERO, &p) {
                AfterCrash::RestartAt(at) => (at - (t0 + Duration::from_millis(i))).as_millis(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800]);
        assert_eq!(slot.on_crash(t0 + Duration::from_millis(5), Duration::ZERO, &p), AfterCrash::CrashLoop);
        assert!(slot.failed);
    }

    #[test]
    fn delay_is_capped_and_reset_after_a_stable_run() {
        let p = Supervision { crash_loop_count: 0, ..policy() };
        let mut slot = Slot::new(0, vec![]);
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for i in 0..8 {
            let now = t0 + Duration::from_secs(i);
            if let AfterCrash::RestartAt(at) = slot.on_crash(now, Duration::ZERO, &p) {
                last = at - now;
            }
        }
        assert_eq!(last, Duration::from_millis(1000));
        let now = t0 + Duration::from_secs(100);
        assert_eq!(
            slot.on_crash(now, Duration::from_secs(6), &p),
            AfterCrash::RestartAt(now + Duration::from_millis(100))
        );
    }

    #[test]
    fn crashes_outside_the_window_do_not_count() {
        let p = policy();
        let mut slot = Slot::new(0, vec![]);
        let t0 = Instant::now();
        for i in 0..20 {
            let r = slot.on_crash(t0 + Duration::from_secs(i * 10), Duration::ZERO, &p);
            assert_ne!(r, AfterCrash::CrashLoop, "crash {i}: at most 4 within any 30 s");
        }
    }

    #[test]
    fn spawn_failures_back_off_and_never_crash_loop() {
        let p = policy();
        let mut slot = Slot::new(0, vec![]);
        let t0 = Instant::now();
        let delays: Vec<u128> = (0..8).map(|_| (slot.on_spawn_failure(t0, &p) - t0).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        assert!(!slot.failed, "failed spawns are not crashes");
        assert_eq!(slot.restart_at, Some(t0 + Duration::from_millis(1000)));
        slot.spawn_succeeded();
        assert_eq!(slot.on_spawn_failure(t0, &p), t0 + Duration::from_millis(100));
        // Nor do they count toward a later crash loop.
        assert!(matches!(slot.on_crash(t0, Duration::ZERO, &p), AfterCrash::RestartAt(_)));
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new();
        assert!((0..1000).all(|_| j.upto(10) <= 10));
        assert_eq!(j.upto(0), 0);
    }
}
