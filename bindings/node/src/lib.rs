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

use napi::{Error, Status};

/// An rcluster error as a JS error whose message says what failed; the
/// `code` is `RCLUSTER_E_<NAME>` so JS can tell kinds apart.
pub(crate) fn to_js_error(e: rcluster::Error) -> Error {
    let name = format!("{:?}", e.code());
    let errno = if e.errno() != 0 { format!(" (errno {})", e.errno()) } else { String::new() };
    Error::new(Status::GenericFailure, format!("[RCLUSTER_E_{}] {}{}", upper_snake(&name), e.message(), errno))
}

fn upper_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
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
