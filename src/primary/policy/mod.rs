//! Scheduling policies: which worker gets the next connection.
//!
//! A policy is one small object per listener behind the `Policy` trait, as
//! in Node's `round_robin_handle.js` / `shared_handle.js`; adding a policy
//! means adding one file here and one arm to [`PolicyKind`].

mod least_loaded;
mod reuse_port;
mod round_robin;
mod shared;

pub use least_loaded::LeastLoaded;
pub use reuse_port::ReusePort;
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
    /// Each worker gets its own `SO_REUSEPORT` socket on the address and
    /// accepts itself; the kernel spreads connections by a hash of the peer.
    ReusePort = 2,
    /// The primary accepts and hands each connection to the worker with the
    /// fewest connections (handed over and not yet finished).
    LeastLoaded = 3,
}

impl PolicyKind {
    /// Every policy, in C-constant order.
    pub const ALL: [PolicyKind; 4] =
        [PolicyKind::RoundRobin, PolicyKind::Shared, PolicyKind::ReusePort, PolicyKind::LeastLoaded];

    /// From the C integer.
    pub fn from_raw(raw: i32) -> Result<PolicyKind> {
        Self::ALL.into_iter().find(|p| *p as i32 == raw).ok_or_else(|| {
            Error::new(Code::InvalidArgument, format!("unknown policy {raw} (0 rr, 1 shared, 2 reuseport, 3 least)"))
        })
    }

    /// From a name: `rr`, `shared`, `reuseport` or `least`.
    pub fn from_name(name: &str) -> Result<PolicyKind> {
        Self::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| {
            Error::new(Code::InvalidArgument, format!("unknown policy {name:?} (rr, shared, reuseport or least)"))
        })
    }

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "rr",
            PolicyKind::Shared => "shared",
            PolicyKind::ReusePort => "reuseport",
            PolicyKind::LeastLoaded => "least",
        }
    }

    /// A fresh policy object for one listener.
    pub(crate) fn instantiate(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
            PolicyKind::Shared => Box::new(SharedSocket),
            PolicyKind::ReusePort => Box::new(ReusePort),
            PolicyKind::LeastLoaded => Box::new(LeastLoaded::default()),
        }
    }
}

/// Who accepts a listener's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sockets {
    /// The primary accepts and hands connections over ([`Policy::pick`] chooses).
    PrimaryAccepts,
    /// Every worker gets a descriptor of the one listening socket.
    Shared,
    /// Every worker gets a listening socket of its own (`SO_REUSEPORT`);
    /// the primary only holds the port, bound but not listening.
    PerWorker,
}

/// One listener's scheduling policy.
pub(crate) trait Policy: Send {
    /// Who accepts this listener's connections.
    fn sockets(&self) -> Sockets;

    /// Whether workers should report finished connections (`Worker::done`).
    /// Off by default: each report is a message the primary must read.
    fn wants_done_reports(&self) -> bool {
        false
    }

    /// Picks the worker for the next connection among `members` (the
    /// listener's workers, in join order). `load(id)` says how many
    /// connections that worker holds (handed over and not finished), or
    /// `None` if it cannot take one now. `None`: nobody can. Only called
    /// when the primary accepts.
    fn pick(&mut self, members: &[u32], load: &mut dyn FnMut(u32) -> Option<u32>) -> Option<u32>;
}
