//! Scheduling policies: which worker gets the next connection.
//!
//! A policy is one small object per listener behind the `Policy` trait, as
//! in Node's `round_robin_handle.js` / `shared_handle.js`; adding a policy
//! means adding one file here and one arm to [`PolicyKind`].

mod hybrid;
mod least_loaded;
mod reuse_port;
mod round_robin;
mod shared;

pub use hybrid::Hybrid;
pub use least_loaded::LeastLoaded;
pub use reuse_port::ReusePort;
pub use round_robin::RoundRobin;
pub use shared::SharedSocket;

use crate::error::{Code, Error, Result};

pub use crate::tables::PolicyKind;

// Not derived: the enum is made by the tables macro (src/tables), which takes no `#[default]`.
#[allow(clippy::derivable_impls)]
impl Default for PolicyKind {
    fn default() -> PolicyKind {
        PolicyKind::RoundRobin
    }
}

impl PolicyKind {
    /// From the C integer.
    pub fn from_raw(raw: i32) -> Result<PolicyKind> {
        PolicyKind::from_c(raw).ok_or_else(|| {
            Error::new(
                Code::InvalidArgument,
                format!("unknown policy {raw} ({})", PolicyKind::listed(|p| format!("{} {}", p.raw(), p.name()))),
            )
        })
    }

    /// Every policy, as `describe` writes it, for an error message.
    fn listed(describe: impl Fn(PolicyKind) -> String) -> String {
        PolicyKind::ALL.iter().map(|&p| describe(p)).collect::<Vec<_>>().join(", ")
    }

    /// From a name: `rr`, `shared`, `reuseport`, `least` or `hybrid`.
    pub fn from_name(name: &str) -> Result<PolicyKind> {
        PolicyKind::find(name).ok_or_else(|| {
            Error::new(
                Code::InvalidArgument,
                format!("unknown policy {name:?} ({})", PolicyKind::listed(|p| p.name().to_owned())),
            )
        })
    }

    /// A fresh policy object for one listener.
    pub(crate) fn instantiate(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
            PolicyKind::Shared => Box::new(SharedSocket),
            PolicyKind::ReusePort => Box::new(ReusePort),
            PolicyKind::LeastLoaded => Box::new(LeastLoaded::default()),
            PolicyKind::Hybrid => Box::new(Hybrid::default()),
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
    /// Every worker gets a descriptor of the one listening socket and
    /// accepts on it while the primary lets it; the primary accepts and
    /// hands connections over ([`Policy::pick`]) while they queue.
    Hybrid,
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
