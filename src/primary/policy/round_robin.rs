//! `rr`: each connection goes to the next worker in turn, skipping workers
//! that are at their limit of unacknowledged connections.

use super::{Policy, Sockets};

/// Round-robin over a listener's workers.
#[derive(Default)]
pub struct RoundRobin {
    next: usize,
}

impl Policy for RoundRobin {
    fn sockets(&self) -> Sockets {
        Sockets::PrimaryAccepts
    }

    fn pick(&mut self, members: &[u32], load: &mut dyn FnMut(u32) -> Option<u32>) -> Option<u32> {
        let n = members.len();
        for step in 0..n {
            let index = (self.next + step) % n;
            if load(members[index]).is_some() {
                self.next = (index + 1) % n;
                return Some(members[index]);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_turns_and_skips_full_workers() {
        let mut rr = RoundRobin::default();
        let members = [1, 2, 3];
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&members, &mut |_| Some(0)).unwrap()).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        assert_eq!(rr.pick(&members, &mut |id| (id != 1).then_some(0)), Some(2));
        assert_eq!(rr.pick(&members, &mut |_| None), None);
        assert_eq!(rr.pick(&[], &mut |_| Some(0)), None);
    }
}
