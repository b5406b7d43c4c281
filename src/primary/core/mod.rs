//! The primary's decisions, without I/O: state machines that take what
//! happened (with the time, given, never read) and say what to do. The mio
//! loop (`event_loop/`) owns the sockets, pidfds and outboxes, turns
//! readiness into calls here, and carries out what comes back.
//!
//! So far: [`Connections`], who owns each accepted connection (the pending
//! queue, each worker's unacknowledged table, credit, refusals, lost fds,
//! hang-ups, acknowledgement deadlines, recycling budgets), and [`Life`],
//! one worker's phase, stop signals and heartbeat. Slot supervision
//! (reloads, replacements, restarts) is still decided in the loop, with
//! [`super::supervisor`]'s pure bookkeeping. See
//! `docs/decisions/sans-io-primary-core.md`.

mod connections;
#[cfg(test)]
mod connections_tests;
mod lifecycle;
#[cfg(test)]
mod lifecycle_tests;

pub(crate) use connections::{Ack, Connections, Handoff};
pub(crate) use lifecycle::{Beat, Life};
