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

mod acceptor;
mod dgram;
mod gate;
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

/// A message's fds handed to JS, which owns them from here (None: none came).
pub(crate) fn fds_to_js(fds: Vec<std::os::fd::OwnedFd>) -> Option<Vec<i32>> {
    use std::os::fd::IntoRawFd;
    (!fds.is_empty()).then(|| fds.into_iter().map(IntoRawFd::into_raw_fd).collect())
}

/// The fds of a send call, borrowed for it: each must be open (a closed one
/// is refused with a clear error, never sent).
pub(crate) fn borrow_fds(fds: &[i32]) -> rcluster::Result<Vec<std::os::fd::BorrowedFd<'_>>> {
    rcluster::message_fds::check(0, fds)?;
    // SAFETY: each fd was just found open, and is borrowed only for the send
    // call that follows; JS keeps it open meanwhile (one thread).
    Ok(fds.iter().map(|&fd| unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).collect())
}

/// Closes a file descriptor JS was handed and will not use (a message's fd
/// no handle asked for, a duplicate already sent). Native, because Deno's
/// `fs.closeSync` takes its own resource ids, not the process's fds.
#[napi_derive::napi]
pub fn close_fd(fd: i32) {
    if fd >= 0 {
        // SAFETY: JS owns `fd` (it came from a message, or a duplicate made
        // for a send) and gives it up here; nothing else closes it.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
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
