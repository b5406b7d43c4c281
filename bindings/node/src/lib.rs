//! The native half of rcluster's Node.js binding (also loaded by Bun and
//! Deno through their Node-API support).
//!
//! This layer is thin on purpose: it wraps the crate's Rust API
//! (`rcluster::Primary`, `rcluster::Worker`, `rcluster::Listener`) and moves
//! what they report onto the JS thread. All `cluster` semantics live in
//! `index.js`.
//!
//! Threads: the library never calls into JS. Under Node, a worker's
//! listeners and events are watched by libuv poll handles on the JS
//! thread's own loop (`poll.rs`), and JS takes what is ready with
//! synchronous calls: no thread in between. Elsewhere (Bun, Deno, and the
//! primary's event queue everywhere) each source of events gets one Rust
//! thread that blocks on the library and forwards what it gets through a
//! napi threadsafe function — the only way a non-JS thread may reach JS.
//! Those threadsafe functions and poll handles are *weak* (they never keep
//! the event loop alive); `index.js` decides what keeps the process alive,
//! as Node's handles would.

mod poll;
mod primary;
mod worker;

use napi::bindgen_prelude::{JsObjectValue, JsValue, Result};
use napi::{Env, Error, Status};

/// Turns an rcluster error into the JS `Error` the call throws: its
/// message, `code` the name of its C constant from the core's table
/// (`RCLUSTER_E_ADDR`), and `errno` the OS errno behind it (0 if none), so
/// JS reads both as properties rather than from the text.
pub(crate) fn js_error(env: &Env) -> impl Fn(rcluster::Error) -> Error + '_ {
    move |e| {
        let thrown = || -> Result<Error> {
            let mut error = env.create_error(Error::new(Status::GenericFailure, e.message()))?;
            error.set_named_property("code", e.code().c_name())?;
            error.set_named_property("errno", e.errno())?;
            Ok(Error::from(error.to_unknown()))
        };
        // Building the object fails only while the environment is torn down.
        thrown().unwrap_or_else(|_| Error::new(Status::GenericFailure, e.message()))
    }
}

/// The kinds of event, by the names every layer uses (the core's table):
/// the events the addon reports carry these as `kind`.
#[napi_derive::napi]
pub fn event_kinds() -> Vec<&'static str> {
    rcluster::EventKind::ALL.iter().map(|kind| kind.name()).collect()
}

/// The error codes' C names (`RCLUSTER_E_*`), from the core's table: the
/// `code` of the errors the addon throws.
#[napi_derive::napi]
pub fn error_codes() -> Vec<&'static str> {
    rcluster::Code::ALL.iter().map(|code| code.c_name()).collect()
}

/// Whether this process offers libuv to addons (true under Node): the
/// worker then polls its fds on the JS thread (see `poll.rs`).
#[napi_derive::napi]
pub fn can_poll() -> bool {
    poll::libuv_available()
}

/// Whether this process was started as an rcluster worker.
#[napi_derive::napi]
pub fn is_worker() -> bool {
    rcluster::is_worker()
}

/// This worker's id from the environment, or null in a primary.
#[napi_derive::napi]
pub fn worker_id() -> Option<u32> {
    rcluster::worker_id()
}
