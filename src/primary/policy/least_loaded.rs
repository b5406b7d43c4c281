//! `least`: each connection goes to the worker holding the fewest
//! connections — handed over and not yet acknowledged, plus acknowledged and
//! not yet reported finished (`Worker::done`). Ties go round-robin, so idle
//! workers share evenly. A slow worker's connections pile up on it and it
//! gets fewer new ones, which is what keeps tail latency down when one
//! worker is slower than the others. Workers that never report finished
//! connections make this policy count only unacknowledged ones.

use super::{Policy, Sockets};

/// Least connections first, round-robin among equals.
#[derive(Default)]
pub struct LeastLoaded {
    next: usize,
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
            let index = (self.next + step) % n;
            if let Some(l) = load(members[index]) {
                if best.is_none_or(|(b, _)| l < b) {
                    best = Some((l, index));
                }
            }
        }
        let (_, index) = best?;
        self.next = (index + 1) % n;
        Some(members[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_least_loaded_and_rotates_among_equals() {
        let mut least = LeastLoaded::default();
        let members = [1, 2, 3];
        let loads = [5u32, 1, 3];
        assert_eq!(least.pick(&members, &mut |id| Some(loads[id as usize - 1])), Some(2));
        let picks: Vec<_> = (0..3).map(|_| least.pick(&members, &mut |_| Some(0)).unwrap()).collect();
        assert_eq!(picks, [3, 1, 2], "equal loads rotate");
        assert_eq!(least.pick(&members, &mut |id| (id == 1).then_some(9)), Some(1), "only worker 1 can take one");
        assert_eq!(least.pick(&members, &mut |_| None), None);
    }
}
