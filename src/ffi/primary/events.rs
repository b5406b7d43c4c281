//! C ABI of events: the `rcluster_event` struct both sides fill, its
//! conversion from the Rust events, and `rcluster_event_release`.

use std::ffi::{c_char, c_int};

use crate::event::{Event, Exit, WorkerEvent};
use crate::ffi::{guard, non_null};
use crate::tables::c::*;

/// No event (the struct after `rcluster_event_release`). Not a kind of the
/// table (`crate::tables`): `build.rs` writes it into the header beside them.
pub const RCLUSTER_EVENT_NONE: c_int = 0;

/// `flags` bit of an exit event: the worker had been asked to disconnect,
/// or left on purpose (Node's `exitedAfterDisconnect`).
pub const RCLUSTER_EXIT_AFTER_DISCONNECT: u32 = 1;

/// An event. Fields that do not apply to its `kind` are zero. Release every
/// event with `rcluster_event_release` (it frees `data`).
#[repr(C)]
pub struct rcluster_event {
    /// `RCLUSTER_EVENT_*`.
    pub kind: c_int,
    /// The worker concerned (primary side), or this worker's id (worker side).
    pub worker_id: u32,
    /// The worker's pid.
    pub pid: i32,
    /// Exit events: the exit code, or -1 if a signal ended it or the status is unknown.
    pub exit_code: c_int,
    /// Exit events: the signal that ended it, or 0.
    pub signal: c_int,
    /// Exit events: `RCLUSTER_EXIT_AFTER_DISCONNECT`; message events:
    /// `RCLUSTER_MESSAGE_HAS_FDS`; future flags.
    pub flags: u32,
    /// Fork and crash-loop events: the worker's slot, or -1 (raw fork).
    pub slot: i32,
    /// Fork events: the worker's generation; reload events: the reload's.
    pub generation: u32,
    /// Listening events: the bound port.
    pub port: u16,
    /// Listening events: the bound IP address, NUL-terminated.
    pub address: [c_char; 64],
    /// Message bytes (or an error text), owned by the event; NULL when `len`
    /// is 0, unless file descriptors came with the message.
    pub data: *mut u8,
    /// Length of `data`.
    pub len: usize,
}

/// Frees what an event owns (`data`, and the file descriptors of a message
/// the host did not take with `rcluster_event_take_fd`, which it closes) and
/// zeroes it. Safe to call twice and on a zeroed event.
#[no_mangle]
pub extern "C" fn rcluster_event_release(event: *mut rcluster_event) -> c_int {
    guard(|| {
        let event = non_null(event, "event")?;
        if crate::ffi::messages::release(event) {
            // A message with fds: freed with its fd block.
        } else if !event.data.is_null() {
            // SAFETY: `data`/`len` came from Box::into_raw of a boxed slice in
            // `with_data` and are released once (zeroed just below).
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(event.data, event.len)) });
        }
        *event = empty_event();
        Ok(())
    })
}

pub(in crate::ffi) fn empty_event() -> rcluster_event {
    rcluster_event {
        kind: RCLUSTER_EVENT_NONE,
        worker_id: 0,
        pid: 0,
        exit_code: 0,
        signal: 0,
        flags: 0,
        slot: -1,
        generation: 0,
        port: 0,
        address: [0; 64],
        data: std::ptr::null_mut(),
        len: 0,
    }
}

pub(in crate::ffi) fn with_data(mut event: rcluster_event, data: Vec<u8>) -> rcluster_event {
    if !data.is_empty() {
        let boxed = data.into_boxed_slice();
        event.len = boxed.len();
        event.data = Box::into_raw(boxed) as *mut u8;
    }
    event
}

pub(super) fn primary_event(event: Event) -> rcluster_event {
    let base = |kind, worker_id, pid| rcluster_event { kind, worker_id, pid, ..empty_event() };
    match event {
        Event::Fork { worker, pid, slot, generation } => {
            rcluster_event { slot: slot.map_or(-1, |s| s as i32), generation, ..base(RCLUSTER_EVENT_FORK, worker, pid) }
        }
        Event::Online { worker, pid } => base(RCLUSTER_EVENT_ONLINE, worker, pid),
        Event::Listening { worker, pid, address } => {
            let mut ev = base(RCLUSTER_EVENT_LISTENING, worker, pid);
            ev.port = address.port();
            for (dst, src) in ev.address.iter_mut().zip(address.ip().to_string().bytes().take(63)) {
                *dst = src as c_char;
            }
            ev
        }
        Event::Message { worker, pid, data, fds } => {
            crate::ffi::messages::with_message(base(RCLUSTER_EVENT_MESSAGE, worker, pid), data, fds)
        }
        Event::Disconnect { worker, pid } => base(RCLUSTER_EVENT_DISCONNECT, worker, pid),
        Event::Exit { worker, pid, exit, after_disconnect, .. } => {
            let mut ev = base(RCLUSTER_EVENT_EXIT, worker, pid);
            (ev.exit_code, ev.signal) = match exit {
                Exit::Code(code) => (code, 0),
                Exit::Signal(signal) => (-1, signal),
                Exit::Unknown => (-1, 0),
            };
            ev.flags = if after_disconnect { RCLUSTER_EXIT_AFTER_DISCONNECT } else { 0 };
            ev
        }
        Event::WorkerError { worker, pid, message } => {
            with_data(base(RCLUSTER_EVENT_WORKER_ERROR, worker, pid), message.into_bytes())
        }
        Event::CrashLoop { slot, worker, pid } => {
            rcluster_event { slot: slot as i32, ..base(RCLUSTER_EVENT_CRASH_LOOP, worker, pid) }
        }
        Event::Unresponsive { worker, pid } => base(RCLUSTER_EVENT_UNRESPONSIVE, worker, pid),
        Event::SpawnFailed { slot, message } => with_data(
            rcluster_event { slot: slot as i32, ..base(RCLUSTER_EVENT_SPAWN_FAILED, 0, 0) },
            message.into_bytes(),
        ),
        Event::ReloadDone { generation } => rcluster_event { generation, ..base(RCLUSTER_EVENT_RELOAD_DONE, 0, 0) },
        Event::ReloadFailed { generation, message } => {
            with_data(rcluster_event { generation, ..base(RCLUSTER_EVENT_RELOAD_FAILED, 0, 0) }, message.into_bytes())
        }
        Event::Upgraded { pid } => base(RCLUSTER_EVENT_UPGRADED, 0, pid),
        Event::UpgradeFailed { message } => with_data(base(RCLUSTER_EVENT_UPGRADE_FAILED, 0, 0), message.into_bytes()),
        Event::Shutdown => base(RCLUSTER_EVENT_SHUTDOWN, 0, 0),
    }
}

pub(in crate::ffi) fn worker_event(event: WorkerEvent, worker_id: u32, pid: i32) -> rcluster_event {
    let base = |kind| rcluster_event { kind, worker_id, pid, ..empty_event() };
    match event {
        WorkerEvent::Message { data, fds } => {
            crate::ffi::messages::with_message(base(RCLUSTER_EVENT_MESSAGE), data, fds)
        }
        WorkerEvent::Disconnect => base(RCLUSTER_EVENT_DISCONNECT),
        WorkerEvent::PrimaryGone => base(RCLUSTER_EVENT_PRIMARY_GONE),
    }
}
