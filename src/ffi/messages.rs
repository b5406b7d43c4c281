//! Messages with file descriptors: sending them, and the fds of a message event.
//!
//! A `RCLUSTER_EVENT_MESSAGE` that came with fds has `RCLUSTER_MESSAGE_HAS_FDS`
//! in `flags`, and its `data` points into one allocation that starts with
//! the fds (a fixed block, [`FdBlock`]) and goes on with the bytes. So the
//! event struct keeps its layout, an event without fds is exactly what it
//! was, and `rcluster_event_release` finds the fds the host did not take
//! from the event alone.

use std::ffi::{c_int, c_void};
use std::mem::size_of;
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use super::primary::{rcluster_event, rcluster_primary, PRIMARIES};
use super::worker::{rcluster_worker, WORKERS};
use super::{bytes, guard, non_null};
use crate::error::{Code, Error, Result};
use crate::message_fds::MAX_FDS;

/// Flag of a `RCLUSTER_EVENT_MESSAGE`: file descriptors came with it
/// (`rcluster_event_fd_count`, `rcluster_event_take_fd`).
pub const RCLUSTER_MESSAGE_HAS_FDS: u32 = 2;

/// The fds in front of a message's bytes: how many, then the fds (-1 once taken).
#[repr(C)]
struct FdBlock {
    count: u32,
    fds: [RawFd; MAX_FDS],
}

const BLOCK: usize = size_of::<FdBlock>();

/// Fills `event` with a message's bytes and fds (the event owns both).
pub(super) fn with_message(mut event: rcluster_event, data: Vec<u8>, fds: Vec<OwnedFd>) -> rcluster_event {
    if fds.is_empty() {
        return super::primary::with_data(event, data);
    }
    let mut block = FdBlock { count: fds.len().min(MAX_FDS) as u32, fds: [-1; MAX_FDS] };
    // The channel delivers at most MAX_FDS; any beyond would close here.
    for (slot, fd) in block.fds.iter_mut().zip(fds) {
        *slot = fd.into_raw_fd();
    }
    let mut buffer = Vec::with_capacity(BLOCK + data.len());
    // SAFETY: FdBlock is plain integers (repr(C), no padding: 4 + 4 * MAX_FDS
    // bytes); reading its bytes is sound.
    buffer.extend_from_slice(unsafe { std::slice::from_raw_parts(&block as *const FdBlock as *const u8, BLOCK) });
    buffer.extend_from_slice(&data);
    let boxed = Box::into_raw(buffer.into_boxed_slice()) as *mut u8;
    // SAFETY: the allocation is BLOCK + data.len() bytes long.
    event.data = unsafe { boxed.add(BLOCK) };
    event.len = data.len();
    event.flags |= RCLUSTER_MESSAGE_HAS_FDS;
    event
}

fn has_fds(event: &rcluster_event) -> bool {
    event.kind == crate::tables::c::RCLUSTER_EVENT_MESSAGE
        && event.flags & RCLUSTER_MESSAGE_HAS_FDS != 0
        && !event.data.is_null()
}

/// The fd block of an event that has one.
fn block(event: &rcluster_event) -> *mut FdBlock {
    // SAFETY: `has_fds` checked that `data` points BLOCK bytes into an
    // allocation made by `with_message` (the library's own events only).
    unsafe { event.data.sub(BLOCK) as *mut FdBlock }
}

/// Frees a message event's allocation and closes the fds the host did not
/// take; false if the event has no fd block (the caller frees `data`).
pub(super) fn release(event: &mut rcluster_event) -> bool {
    if !has_fds(event) {
        return false;
    }
    let base = block(event);
    // SAFETY: `base` is the start of the BLOCK + len bytes `with_message`
    // boxed; the fds in it not yet taken are ours to close; the event is
    // zeroed by the caller so this runs once.
    unsafe {
        let fds = std::ptr::read_unaligned(base);
        for &fd in &fds.fds[..(fds.count as usize).min(MAX_FDS)] {
            if fd >= 0 {
                libc::close(fd);
            }
        }
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(base as *mut u8, BLOCK + event.len)));
    }
    true
}

/// Stores how many file descriptors came with a message event in `count`
/// (0 for an event without any, of any kind), taken ones included.
#[no_mangle]
pub extern "C" fn rcluster_event_fd_count(event: *const rcluster_event, count: *mut usize) -> c_int {
    guard(|| {
        let event = non_null(event as *mut rcluster_event, "event")?;
        let out = non_null(count, "count")?;
        *out = if has_fds(event) {
            // SAFETY: see `block`; read unaligned (the bytes are a byte buffer).
            (unsafe { std::ptr::read_unaligned(block(event)) }.count as usize).min(MAX_FDS)
        } else {
            0
        };
        Ok(())
    })
}

/// Takes file descriptor `index` (from 0, in the order sent) of a message
/// event: the caller owns it from now on (close-on-exec is set; close it
/// when done). `RCLUSTER_E_INVAL` if there is no such fd or it was already
/// taken. `rcluster_event_release` closes the fds that were not taken.
#[no_mangle]
pub extern "C" fn rcluster_event_take_fd(event: *mut rcluster_event, index: usize, fd: *mut c_int) -> c_int {
    guard(|| {
        let event = non_null(event, "event")?;
        let out = non_null(fd, "fd")?;
        if !has_fds(event) {
            return Err(Error::new(Code::InvalidArgument, "no file descriptors came with this event"));
        }
        let base = block(event);
        // SAFETY: see `block`; the block is read and written unaligned.
        let mut fds = unsafe { std::ptr::read_unaligned(base) };
        let count = (fds.count as usize).min(MAX_FDS);
        if index >= count {
            return Err(Error::new(Code::InvalidArgument, format!("fd index {index}: {count} came with this event")));
        }
        if fds.fds[index] < 0 {
            return Err(Error::new(Code::InvalidArgument, format!("fd {index} of this event was already taken")));
        }
        *out = fds.fds[index];
        fds.fds[index] = -1;
        // SAFETY: as above.
        unsafe { std::ptr::write_unaligned(base, fds) };
        Ok(())
    })
}

/// The fds of a send call: `count` ints at `fds` ((NULL, 0): none).
fn fd_list<'a>(fds: *const c_int, count: usize) -> Result<Vec<BorrowedFd<'a>>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if count > MAX_FDS {
        return Err(Error::new(Code::TooBig, format!("{count} fds exceed the limit of {MAX_FDS} per message")));
    }
    if fds.is_null() {
        return Err(Error::new(Code::InvalidArgument, format!("fds is NULL but its count is {count}")));
    }
    // SAFETY: non-NULL; the caller promises `count` readable ints (header).
    let raw = unsafe { std::slice::from_raw_parts(fds, count) };
    raw.iter()
        .map(|&fd| {
            if !crate::sys::fd_is_open(fd) {
                return Err(Error::new(Code::InvalidArgument, format!("fd {fd} is not an open file descriptor")));
            }
            // SAFETY: open (checked just above), and borrowed only for this call.
            Ok(unsafe { BorrowedFd::borrow_raw(fd) })
        })
        .collect()
}

/// Sends `len` bytes to worker `worker_id` with `nfds` file descriptors
/// attached (at most `RCLUSTER_MAX_FDS`; any kind of fd: sockets, pipes,
/// files). The caller KEEPS its fds: the library duplicates them before
/// returning, so they may be closed at once; the worker receives its own
/// copies (`rcluster_event_take_fd`). Queued, in order with
/// `rcluster_primary_send`; never blocks. `RCLUSTER_E_INVAL` if an fd is
/// not open, `RCLUSTER_E_TOOBIG` over the limit: nothing is sent.
#[no_mangle]
pub extern "C" fn rcluster_primary_send_fds(
    primary: *mut rcluster_primary,
    worker_id: u32,
    data: *const c_void,
    len: usize,
    fds: *const c_int,
    nfds: usize,
) -> c_int {
    guard(|| {
        let primary = PRIMARIES.get(primary)?;
        let fds = fd_list(fds, nfds)?;
        primary.send_fds(worker_id, bytes(data as *const u8, len, "data")?, &fds)
    })
}

/// Sends `len` bytes to the primary with `nfds` file descriptors attached
/// (at most `RCLUSTER_MAX_FDS`). The caller KEEPS its fds (the kernel
/// duplicates them as the message leaves). The primary takes them only if
/// it was created with `accept_message_fds`; otherwise it cuts this worker
/// off and closes them. Blocks while the channel is full.
#[no_mangle]
pub extern "C" fn rcluster_worker_send_fds(
    worker: *mut rcluster_worker,
    data: *const c_void,
    len: usize,
    fds: *const c_int,
    nfds: usize,
) -> c_int {
    guard(|| {
        let worker = WORKERS.get(worker)?;
        let fds = fd_list(fds, nfds)?;
        worker.send_fds(bytes(data as *const u8, len, "data")?, &fds)
    })
}
