//! The monitor thread of an app: reads the primary's events, keeps the
//! numbers `ls` shows ([`Watch`]), and stops replaced workers of
//! inherited-socket apps.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rcluster::{Event, Exit, Primary, WorkerState, WorkerStats};

use super::{Say, TICK};

/// What the monitor thread keeps.
#[derive(Default)]
pub(super) struct Watch {
    /// Reloads that ended: generation, and the failure message if any.
    pub(super) reloads: Vec<(u32, Option<String>)>,
    pub(super) shut_down: bool,
    pub(super) stats: Vec<WorkerStats>,
    /// pid -> (CPU ticks, when read, percent over the last interval).
    pub(super) cpu: HashMap<i32, (u64, Instant, f64)>,
    /// Workers asked to leave (inherited-socket apps), and whether a newer
    /// worker was ever seen in their slot since.
    pub(super) leaving: HashMap<u32, bool>,
    /// The newest worker started in each slot (from the fork events), so a
    /// replacement that died before a tick saw it still counts as one.
    pub(super) newest_in_slot: HashMap<u32, u32>,
    /// Workers that got their SIGTERM from us.
    pub(super) terminated: Vec<u32>,
    /// Unexpected exits so far.
    pub(super) crashes: u32,
    /// Addresses workers listen on through the library (and `--listen` ones).
    pub(super) listening: std::collections::BTreeSet<String>,
}
/// The thread that reads the primary's events, keeps the numbers `ls`
/// shows, and stops replaced workers of inherited-socket apps.
pub(super) struct Monitor {
    pub(super) primary: Arc<Primary>,
    pub(super) name: String,
    pub(super) inherited: bool,
    pub(super) grace: Duration,
    pub(super) say: Say,
    pub(super) watch: Arc<(Mutex<Watch>, Condvar)>,
}

impl Monitor {
    pub(super) fn run(self) {
        let mut next_tick = Instant::now();
        let mut next_cpu = Instant::now();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.primary.next_event(Some(wait)) {
                Ok(Some(Event::Shutdown)) | Err(_) => break,
                Ok(Some(event)) => self.on_event(event),
                Ok(None) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                let Ok(stats) = self.primary.stats() else { break };
                let sample_cpu = now >= next_cpu;
                if sample_cpu {
                    next_cpu = now + Duration::from_secs(1);
                }
                self.on_tick(stats, sample_cpu);
            }
        }
        let (lock, cond) = &*self.watch;
        let mut watch = lock.lock().unwrap();
        watch.shut_down = true;
        watch.stats.clear();
        cond.notify_all();
        drop(watch);
        (self.say)(&self.name, "stopped");
    }

    fn on_event(&self, event: Event) {
        let say = |text: String| (self.say)(&self.name, &text);
        let (lock, cond) = &*self.watch;
        match event {
            Event::Fork { worker, pid, generation, slot } => {
                if let Some(slot) = slot {
                    let mut watch = lock.lock().unwrap();
                    let newest = watch.newest_in_slot.entry(slot).or_insert(worker);
                    *newest = (*newest).max(worker);
                }
                say(format!("worker {worker} started (pid {pid}, generation {generation})"))
            }
            Event::Exit { worker, pid, exit, after_disconnect, .. } => {
                let how = match exit {
                    Exit::Code(code) => format!("exit code {code}"),
                    Exit::Signal(signal) => format!("signal {signal}"),
                    Exit::Unknown => "status unknown".to_owned(),
                };
                let mut watch = lock.lock().unwrap();
                let asked = after_disconnect || watch.terminated.contains(&worker);
                watch.terminated.retain(|&w| w != worker);
                watch.leaving.remove(&worker);
                if asked {
                    say(format!("worker {worker} (pid {pid}) stopped ({how})"));
                } else {
                    watch.crashes += 1;
                    say(format!("worker {worker} (pid {pid}) exited unexpectedly ({how}); it is restarted"));
                }
            }
            Event::CrashLoop { slot, worker, .. } => say(format!(
                "worker {worker} keeps exiting: slot {slot} is not restarted any more (a reload or scale retries)"
            )),
            Event::Listening { worker, address, .. } => {
                lock.lock().unwrap().listening.insert(address.to_string());
                say(format!("worker {worker} listening on {address}"))
            }
            Event::Unresponsive { worker, pid } => say(format!("worker {worker} (pid {pid}) is unresponsive: killed")),
            Event::WorkerError { worker, message, .. } => say(format!("worker {worker}: {message}")),
            Event::ReloadDone { generation } => {
                say(format!("reload done: generation {generation}"));
                lock.lock().unwrap().reloads.push((generation, None));
                cond.notify_all();
            }
            Event::ReloadFailed { generation, message } => {
                say(format!("reload failed: {message}"));
                lock.lock().unwrap().reloads.push((generation, Some(message)));
                cond.notify_all();
            }
            _ => {}
        }
    }

    fn on_tick(&self, stats: Vec<WorkerStats>, sample_cpu: bool) {
        let now = Instant::now();
        let (lock, cond) = &*self.watch;
        let mut watch = lock.lock().unwrap();
        if self.inherited {
            self.stop_leaving_workers(&stats, &mut watch);
        }
        if sample_cpu {
            let mut cpu = HashMap::new();
            for s in &stats {
                let Some(ticks) = cpu_ticks(s.pid) else { continue };
                let percent = match watch.cpu.get(&s.pid) {
                    Some(&(before, at, _)) if now > at => {
                        let seconds = ticks.saturating_sub(before) as f64 / clock_ticks_per_second();
                        100.0 * seconds / now.duration_since(at).as_secs_f64()
                    }
                    _ => 0.0,
                };
                cpu.insert(s.pid, (ticks, now, percent));
            }
            watch.cpu = cpu;
        }
        watch.stats = stats;
        cond.notify_all();
    }

    /// Programs that do not use rcluster never read its disconnect message,
    /// so a worker asked to leave gets SIGTERM from here:
    /// - one that was replaced (a newer worker took its slot): once the
    ///   replacement has run for the reload grace. A replacement that dies
    ///   first does not count (the next one, restarted by the library, must
    ///   run the grace in turn), so a new version that crashes at start does
    ///   not take the old workers down with it; the library's own stop
    ///   timeout still ends them (SIGTERM, then SIGKILL) if none lasts;
    /// - one stopped for good (stop, scale down, shutdown: no successor): at once.
    fn stop_leaving_workers(&self, stats: &[WorkerStats], watch: &mut Watch) {
        for s in stats.iter().filter(|s| s.state == WorkerState::Leaving) {
            if watch.terminated.contains(&s.id) {
                continue;
            }
            let successor = stats
                .iter()
                .filter(|o| o.slot.is_some() && o.slot == s.slot && o.id > s.id && o.state != WorkerState::Leaving)
                .map(|o| o.uptime)
                .max();
            // A replacement that crashed between two ticks is in no stats,
            // but its fork was seen: the worker is being replaced, not
            // stopped for good (a loaded machine once let a crashing
            // replacement come and go unseen, and the old worker was stopped).
            let replaced = successor.is_some()
                || s.slot.and_then(|slot| watch.newest_in_slot.get(&slot)).is_some_and(|&newest| newest > s.id);
            let had_successor = watch.leaving.entry(s.id).or_insert(replaced);
            *had_successor |= replaced;
            let stop_now = match successor {
                Some(uptime) => uptime >= self.grace,
                None => !*had_successor,
            };
            if stop_now {
                let _ = self.primary.kill(s.id, libc::SIGTERM);
                watch.terminated.push(s.id);
            }
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf with a valid name has no side effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

pub(super) fn rss_bytes(pid: i32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
