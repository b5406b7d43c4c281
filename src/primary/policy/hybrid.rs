//! `hybrid`: every worker gets the listening socket and accepts on it
//! itself while the load is light; when connections queue on it, the
//! primary steps in, accepts and hands them over as `least` does, until the
//! queue is gone (`core::Overflow` decides when). At light load a
//! connection then wakes one worker, one that is running if there is one,
//! with no hop through the primary; under load the primary's batches, its
//! even spread and its protection from a slow worker are what serve. See
//! `docs/decisions/hybrid-dispatch.md`.

use super::{LeastLoaded, Policy, Sockets};

/// Workers accept themselves; the primary picks as `least` when it steps in.
#[derive(Default)]
pub struct Hybrid {
    least: LeastLoaded,
}

impl Policy for Hybrid {
    fn sockets(&self) -> Sockets {
        Sockets::Hybrid
    }

    /// Workers send them only while the primary dispatches (see
    /// `Worker::done`): what they took themselves it never counted.
    fn wants_done_reports(&self) -> bool {
        true
    }

    fn pick(&mut self, members: &[u32], load: &mut dyn FnMut(u32) -> Option<u32>) -> Option<u32> {
        self.least.pick(members, load)
    }
}
