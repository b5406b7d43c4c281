//! The primary's decisions, without I/O: state machines that take what
//! happened (with the time, given, never read) and say what to do. The mio
//! loop (`event_loop/`) owns the sockets, pidfds and outboxes, turns
//! readiness into calls here, and carries out what comes back.
//!
//! - [`Connections`]: who owns each accepted connection (each listener's
//!   members, policy and queue; each worker's unacknowledged table; credit,
//!   refusals, lost fds, hang-ups, acknowledgement deadlines, recycling
//!   budgets).
//! - [`Life`]: one worker's phase ([`crate::event::WorkerState`]), why it
//!   leaves, its stop signals and its heartbeat.
//! - [`Slots`]: slots and their workers: rolling reloads, replacements,
//!   readiness, exits, restarts and crash loops, as [`SlotAction`]s.
//! - [`Shutdown`]: the drain, until every worker is asked to leave.
//! - [`Overflow`]: under `hybrid`, whether the primary dispatches or the
//!   workers accept themselves.
//!
//! Each gives its deadlines to the driver's one list of timers
//! (`event_loop/timers.rs`, `each_timer`). See
//! `docs/decisions/sans-io-primary-core.md`.

mod connections;
#[cfg(test)]
mod connections_tests;
mod lifecycle;
#[cfg(test)]
mod lifecycle_tests;
mod overflow;
#[cfg(test)]
mod overflow_tests;
mod shutdown;
#[cfg(test)]
mod shutdown_tests;
mod slots;
#[cfg(test)]
mod slots_tests;

pub(crate) use connections::{Ack, Connections, Handoff};
pub(crate) use lifecycle::{Beat, Life};
pub(crate) use overflow::{Overflow, Switch};
pub(crate) use shutdown::{Drain, Shutdown};
pub(crate) use slots::{Departed, SlotAction, Slots};
