//! C ABI of the bare channel: fd passing on any SEQPACKET socket, without a primary.

use std::ffi::{c_int, c_void};
use std::os::fd::{BorrowedFd, IntoRawFd, RawFd};

use super::{bytes, guard, non_null};
use crate::channel::{self, Read, Reassembler};
use crate::error::{Code, Error, Result};
use crate::sys;

/// Checks `fd` is an open SEQPACKET socket and borrows it for the call.
fn socket_arg<'a>(fd: c_int) -> Result<BorrowedFd<'a>> {
    if !sys::fd_is_open(fd) {
        return Err(Error::new(Code::InvalidArgument, format!("fd {fd} is not open")));
    }
    // SAFETY: the fd is open (checked) and the caller keeps it open for the call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    channel::check_socket(borrowed)?;
    Ok(borrowed)
}

/// Creates a connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets, both
/// close-on-exec, in `fds[0]` and `fds[1]`. The caller owns both.
#[no_mangle]
pub extern "C" fn rcluster_socketpair(fds: *mut c_int) -> c_int {
    guard(|| {
        let out = non_null(fds, "fds")?;
        let (a, b) = channel::socketpair()?;
        // SAFETY: the caller promises room for two ints at `fds` (header).
        unsafe {
            *out = a.into_raw_fd();
            *(fds.add(1)) = b.into_raw_fd();
        }
        Ok(())
    })
}

/// Sends one message of `len` bytes with `nfds` descriptors on `sock`, an
/// `AF_UNIX` `SOCK_SEQPACKET` socket (a stream socket is refused with
/// `RCLUSTER_E_INVAL`). Messages up to `RCLUSTER_MAX_MESSAGE` bytes are
/// split into records and rejoined by `rcluster_recv_handle`; up to
/// `RCLUSTER_MAX_FDS` descriptors travel with the first record.
///
/// `data` may be NULL when `len` is 0. The descriptors in `fds` stay the
/// caller's (the peer receives duplicates).
///
/// `timeout_ms` bounds each wait for buffer space (negative: no limit). If it
/// runs out before anything was sent the call may be retried; if it runs out
/// midway (`last_error` says so), the socket holds half a message and must
/// be closed.
#[no_mangle]
pub extern "C" fn rcluster_send_handle(
    sock: c_int,
    data: *const c_void,
    len: usize,
    fds: *const c_int,
    nfds: usize,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        let sock = socket_arg(sock)?;
        let data = bytes(data as *const u8, len, "data")?;
        channel::check_limits(len, nfds)?;
        let fds: &[RawFd] = if nfds == 0 {
            &[]
        } else if fds.is_null() {
            return Err(Error::new(Code::InvalidArgument, format!("fds is NULL but nfds is {nfds}")));
        } else {
            // SAFETY: non-NULL; the caller promises `nfds` ints at `fds`.
            unsafe { std::slice::from_raw_parts(fds, nfds) }
        };
        if let Some(bad) = fds.iter().find(|&&fd| !sys::fd_is_open(fd)) {
            return Err(Error::new(Code::InvalidArgument, format!("fd {bad} to send is not open")));
        }
        channel::send_message(sock, data, fds, sys::timeout_from_ms(timeout_ms))
    })
}

/// Receives one message from `sock` (an `AF_UNIX` `SOCK_SEQPACKET` socket).
///
/// On success `*data` points at `*len` bytes the library allocated (NULL
/// when `*len` is 0): release them with `rcluster_buffer_free(*data, *len)`.
/// Up to `max_fds` descriptors are stored in `fds` (may be NULL when
/// `max_fds` is 0) and their count in `*nfds`; they are the caller's, opened
/// close-on-exec. If more descriptors arrived than `max_fds`, all of them
/// are closed, nothing is returned, and the result is `RCLUSTER_E_TRUNCATED`.
///
/// Returns `RCLUSTER_E_CLOSED` if the peer hung up, `RCLUSTER_E_TIMEOUT` if
/// no record arrived within `timeout_ms` (0: don't wait, `RCLUSTER_E_AGAIN`;
/// negative: no limit). The timeout bounds each record's wait; a message
/// that times out midway is lost and the socket should be closed.
#[no_mangle]
pub extern "C" fn rcluster_recv_handle(
    sock: c_int,
    data: *mut *mut c_void,
    len: *mut usize,
    fds: *mut c_int,
    max_fds: usize,
    nfds: *mut usize,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        let sock_fd = socket_arg(sock)?;
        let data_out = non_null(data, "data")?;
        let len_out = non_null(len, "len")?;
        let nfds_out = non_null(nfds, "nfds")?;
        *nfds_out = 0;
        *len_out = 0;
        *data_out = std::ptr::null_mut();
        if max_fds > 0 && fds.is_null() {
            return Err(Error::new(Code::InvalidArgument, format!("fds is NULL but max_fds is {max_fds}")));
        }
        let mut reassembler = Reassembler::new();
        let read = if timeout_ms == 0 {
            reassembler.read(sock_fd)?
        } else {
            reassembler.read_blocking(sock_fd, sys::timeout_from_ms(timeout_ms))?
        };
        let message = match read {
            Read::Message(message) => message,
            Read::WouldBlock if reassembler.in_progress() => {
                return Err(Error::new(Code::Timeout, "only part of a message had arrived; it is lost"));
            }
            Read::WouldBlock => return Err(Error::new(Code::WouldBlock, "no message is waiting")),
            Read::Eof => return Err(Error::new(Code::Closed, "the peer hung up")),
        };
        if message.fds_lost {
            drop(message);
            return Err(Error::new(
                Code::Truncated,
                "some descriptors sent with the message did not arrive (at the fd limit?); those that did were closed",
            ));
        }
        if message.fds.len() > max_fds {
            let n = message.fds.len();
            drop(message);
            return Err(Error::new(
                Code::Truncated,
                format!("{n} descriptors arrived but max_fds is {max_fds}; all were closed"),
            ));
        }
        for (i, fd) in message.fds.into_iter().enumerate() {
            // SAFETY: i < max_fds and the caller promises room for max_fds ints.
            unsafe { *fds.add(i) = fd.into_raw_fd() };
            *nfds_out = i + 1;
        }
        if !message.data.is_empty() {
            let boxed = message.data.into_boxed_slice();
            *len_out = boxed.len();
            *data_out = Box::into_raw(boxed) as *mut u8 as *mut c_void;
        }
        Ok(())
    })
}

/// Frees a buffer the library returned (`rcluster_recv_handle`), given the
/// same pointer and length. NULL is a no-op.
#[no_mangle]
pub extern "C" fn rcluster_buffer_free(data: *mut c_void, len: usize) -> c_int {
    guard(|| {
        if !data.is_null() {
            // SAFETY: the caller passes back exactly what rcluster_recv_handle
            // produced with Box::into_raw of a boxed slice of `len` bytes.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data as *mut u8, len)) });
        }
        Ok(())
    })
}
