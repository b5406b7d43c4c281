//! Scheduling policies: which worker gets the next connection.
//!
//! A policy is one small object per listener behind the [`Policy`] trait, as
//! in Node's `round_robin_handle.js` / `shared_handle.js`; adding a policy
//! means adding one file here and one arm to [`PolicyKind`].

mod round_robin;
mod shared;

pub use round_robin::RoundRobin;
pub use shared::SharedSocket;

use crate::error::{Code, Error, Result};

/// Which policy a primary uses. The discriminants are the C constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// The primary accepts and hands each connection to the next worker in turn.
    #[default]
    RoundRobin = 0,
    /// The listening socket goes to the workers, which accept themselves.
    Shared = 1,
}

impl PolicyKind {
    /// From the C integer.
    pub fn from_raw(raw: i32) -> Result<PolicyKind> {
        match raw {
            0 => Ok(PolicyKind::RoundRobin),
            1 => Ok(PolicyKind::Shared),
            other => Err(Error::new(Code::InvalidArgument, format!("unknown policy {other} (0 = rr, 1 = shared)"))),
        }
    }

    /// From a name: `rr` or `shared`.
    pub fn from_name(name: &str) -> Result<PolicyKind> {
        match name {
            "rr" => Ok(PolicyKind::RoundRobin),
            "shared" => Ok(PolicyKind::Shared),
            other => Err(Error::new(Code::InvalidArgument, format!("unknown policy {other:?} (rr or shared)"))),
        }
    }

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "rr",
            PolicyKind::Shared => "shared",
        }
    }

    /// A fresh policy object for one listener.
    pub(crate) fn instantiate(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
            PolicyKind::Shared => Box::new(SharedSocket),
        }
    }
}

/// One listener's scheduling policy.
pub(crate) trait Policy: Send {
    /// Whether the primary accepts connections itself (and hands them over)
    /// rather than giving the listening socket to the workers.
    fn primary_accepts(&self) -> bool;

    /// Picks the worker for the next connection among `members` (the
    /// listener's workers, in join order). `load(id)` says how many
    /// connections that worker holds unacknowledged, or `None` if it cannot
    /// take one now. `None`: nobody can.
    fn pick(&mut self, members: &[u32], load: &mut dyn FnMut(u32) -> Option<u32>) -> Option<u32>;
}
