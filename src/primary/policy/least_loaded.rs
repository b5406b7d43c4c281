//! `least`: each connection goes to the worker holding the fewest
//! connections — handed over and not yet acknowledged, plus acknowledged and
//! not yet reported finished (`Worker::done`). A slow worker's connections
//! pile up on it and it gets fewer new ones, which is what keeps tail
//! latency down when one worker is slower than the others. Workers that
//! never report finished connections make this policy count only
//! unacknowledged ones.
//!
//! Ties go to the worker picked last, then to the ones after it in turn.
//! At low load the connections that come one at a time then go to one
//! worker that is still warm (its caches, its CPU awake) while the others
//! sleep, as the kernel's accept queue favours a running worker; as soon
//! as it holds one, the next goes to another. Measured (A/B, 4 rounds):
//! the Node bench app with 4 workers and one connection at a time serves
//! 2.1× the connections/s of rotating among equals (8.98k against 4.28k),
//! level with Node's SCHED_NONE (9.00k); with 4 or 32 at a time, and for
//! the C server, no change; the uneven test's p99 with 2 workers was
//! 0.50 and 0.88 ms in two runs with this change, 1.5–2.6 ms in the last
//! two without.

use super::{Policy, Sockets};

/// Least connections first; among equals, the last one picked, then the
/// ones after it.
#[derive(Default)]
pub struct LeastLoaded {
    last: usize,
}

impl Policy for LeastLoaded {
    fn sockets(&self) -> Sockets {
        Sockets::PrimaryAccepts
    }

    fn wants_done_reports(&self) -> bool {
        true
    }

    fn pick(&mut self, members: &[u32], load: &mut dyn FnMut(u32) -> Option<u32>) -> Option<u32> {
        let n = members.len();
        let mut best: Option<(u32, usize)> = None;
        for step in 0..n {
            let index = (self.last + step) % n;
            if let Some(l) = load(members[index]) {
                if best.is_none_or(|(b, _)| l < b) {
                    best = Some((l, index));
                }
            }
        }
        let (_, index) = best?;
        self.last = index;
        Some(members[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_least_loaded_and_among_equals_the_last_picked() {
        let mut least = LeastLoaded::default();
        let members = [1, 2, 3];
        let loads = [5u32, 1, 3];
        assert_eq!(least.pick(&members, &mut |id| Some(loads[id as usize - 1])), Some(2));
        let picks: Vec<_> = (0..3).map(|_| least.pick(&members, &mut |_| Some(0)).unwrap()).collect();
        assert_eq!(picks, [2, 2, 2], "equal loads: the worker picked last");
        // Once it holds one, the next among the others after it.
        let mut loads = [0u32, 0, 0];
        for expected in [2, 3, 1] {
            let pick = least.pick(&members, &mut |id| Some(loads[id as usize - 1])).unwrap();
            assert_eq!(pick, expected);
            loads[pick as usize - 1] += 1;
        }
        assert_eq!(least.pick(&members, &mut |id| (id == 1).then_some(9)), Some(1), "only worker 1 can take one");
        assert_eq!(least.pick(&members, &mut |_| None), None);
    }
}
