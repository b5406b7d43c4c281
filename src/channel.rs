//! The channel: an `AF_UNIX` `SOCK_SEQPACKET` socket carrying messages of any
//! size with file descriptors attached (SCM_RIGHTS).
//!
//! # Records
//!
//! A message travels as one or more *records* (SEQPACKET datagrams) of at most
//! [`RECORD_SIZE`] bytes. Each record starts with one header byte:
//! [`FIRST`] on the first record of a message, [`LAST`] on the last one (a
//! one-record message has both). File descriptors ride on the first record
//! only, at most [`MAX_FDS`] of them, so they arrive atomically with the start
//! of their message. A zero-byte read means the peer hung up (our records are
//! never empty).
//!
//! Receiving uses `MSG_CMSG_CLOEXEC` and wraps every fd in an `OwnedFd` at once.
//! `MSG_TRUNC` (the bytes were cut) is an error and every fd that did arrive
//! is closed. `MSG_CTRUNC` alone means the bytes are whole but some fds did
//! not arrive — most often because this process is at its fd limit, when the
//! kernel installs what it can, in order, and drops the rest: the message is
//! delivered with the fds that came and [`Message::fds_lost`] set, and the
//! reader decides (a worker refuses the connections whose fds are missing;
//! see docs/decisions). A record out of sequence (a continuation with no
//! message started, or a new message before the last ended) is a protocol
//! error.
//!
//! All socket calls use `MSG_DONTWAIT`, so one socket serves blocking callers
//! (who wait in poll(2) with a deadline) and non-blocking ones alike, whatever
//! the fd's O_NONBLOCK flag says.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

use crate::error::{Code, Error, Result};
use crate::sys::{self, Deadline};

/// Largest record, header byte included. Well under the default socket send
/// buffer (about 208 KiB), so one record always fits.
pub const RECORD_SIZE: usize = 64 * 1024;
/// Payload bytes per record.
pub const RECORD_PAYLOAD: usize = RECORD_SIZE - 1;
/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 16;
/// Largest message: 256 MiB. Memory for a message grows only as its records
/// arrive, so a peer cannot make us allocate more than it actually sends.
pub const MAX_MESSAGE: usize = 256 << 20;

/// Header flag: first record of a message.
pub const FIRST: u8 = 1;
/// Header flag: last record of a message.
pub const LAST: u8 = 2;

/// A whole message with the descriptors that came with it (owned by the holder).
#[derive(Debug, Default)]
pub struct Message {
    /// The bytes.
    pub data: Vec<u8>,
    /// The descriptors that arrived, close-on-exec, in the order sent.
    pub fds: Vec<OwnedFd>,
    /// Some descriptors sent with it did not arrive (`MSG_CTRUNC`): those
    /// in `fds` are the first ones sent, the rest are lost.
    pub fds_lost: bool,
}

/// Creates a connected `SOCK_SEQPACKET | SOCK_CLOEXEC` socketpair.
pub fn socketpair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid out-array of two ints; both fds are wrapped at once.
    sys::cvt(unsafe {
        libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
    })
    .map_err(|e| Error::os("socketpair(AF_UNIX, SOCK_SEQPACKET)", e))?;
    // SAFETY: both fds are fresh and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Checks that `fd` is an open `AF_UNIX` `SOCK_SEQPACKET` socket.
///
/// A stream socket would lose record boundaries, and a plain read on it drops
/// attached descriptors silently, so it is refused with a clear error.
pub fn check_socket(fd: BorrowedFd<'_>) -> Result<()> {
    let domain = sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTSOCK) || e.raw_os_error() == Some(libc::EBADF) {
            Error::new(Code::InvalidArgument, format!("fd {} is not an open socket", fd.as_raw_fd()))
        } else {
            Error::os("getsockopt(SO_DOMAIN)", e)
        }
    })?;
    let kind =
        sys::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| Error::os("getsockopt(SO_TYPE)", e))?;
    if domain != libc::AF_UNIX || kind != libc::SOCK_SEQPACKET {
        return Err(Error::new(
            Code::InvalidArgument,
            format!(
                "fd {} is not an AF_UNIX SOCK_SEQPACKET socket (stream sockets lose record boundaries)",
                fd.as_raw_fd()
            ),
        ));
    }
    Ok(())
}

/// Sends one record: `header` then `payload`, with `fds` attached.
/// SEQPACKET sends a record whole or not at all; `WouldBlock` means nothing was sent.
pub fn send_record(fd: BorrowedFd<'_>, header: u8, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    debug_assert!(payload.len() <= RECORD_PAYLOAD);
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds for one record"));
    }
    let mut iov = [
        libc::iovec { iov_base: &header as *const u8 as *mut libc::c_void, iov_len: 1 },
        libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() },
    ];
    let mut cmsg_buf = CmsgBuffer::new();
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = if payload.is_empty() { 1 } else { 2 };
    if !fds.is_empty() {
        let data_len = mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let space = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
        msg.msg_control = cmsg_buf.as_mut_ptr();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at our aligned buffer of at least `space`
        // bytes (CmsgBuffer holds CMSG_SPACE(MAX_FDS ints)), so CMSG_FIRSTHDR is
        // non-null and the header plus `data_len` bytes of data lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as usize;
            ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), data_len);
        }
    }
    loop {
        // SAFETY: `msg` points at iovecs and a control buffer that outlive the
        // call; the kernel only reads them.
        let ret = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if ret >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// What one read of the socket gave.
#[derive(Debug)]
pub enum RecordIn {
    /// A record: its header byte, payload length (in the caller's buffer),
    /// fds, and whether some fds sent with it did not arrive (`MSG_CTRUNC`).
    Record { header: u8, len: usize, fds: Vec<OwnedFd>, fds_lost: bool },
    /// The peer hung up.
    Eof,
}

/// Receives one record into `buf` (payload only; the header is returned apart).
/// Non-blocking: `WouldBlock` when nothing is queued.
pub fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<RecordIn> {
    let mut header: u8 = 0;
    let mut iov = [
        libc::iovec { iov_base: &mut header as *mut u8 as *mut libc::c_void, iov_len: 1 },
        libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() },
    ];
    let mut cmsg_buf = CmsgBuffer::new();
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2;
    msg.msg_control = cmsg_buf.as_mut_ptr();
    msg.msg_controllen = CmsgBuffer::SIZE;
    let received = loop {
        // SAFETY: `msg` points at our header byte, `buf` and the control buffer,
        // all writable and alive for the call.
        let ret = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        if ret >= 0 {
            break ret as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(Error::os("recvmsg on channel", err));
        }
    };
    // Take ownership of every fd first, so any error path below closes them.
    let fds = take_fds(&msg);
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        drop(fds);
        return Err(Error::new(Code::Truncated, "channel record was truncated; the fds that arrived were closed"));
    }
    if received == 0 {
        drop(fds);
        return Ok(RecordIn::Eof);
    }
    let fds_lost = msg.msg_flags & libc::MSG_CTRUNC != 0;
    Ok(RecordIn::Record { header, len: received - 1, fds, fds_lost })
}

/// Wraps every SCM_RIGHTS fd in `msg`'s control data in an OwnedFd.
fn take_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    if msg.msg_controllen == 0 {
        return fds;
    }
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well
    // formed cmsg headers; CMSG_FIRSTHDR/NXTHDR stay inside that range, and each
    // SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 ints, which we read
    // unaligned. Each fd was installed for us alone, so wrapping it is sound.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    let raw = ptr::read_unaligned((data as *const RawFd).add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    fds
}

/// An aligned control-message buffer big enough for [`MAX_FDS`] descriptors
/// plus room to notice that a peer sent more (which then reads as truncated).
#[repr(C, align(8))]
struct CmsgBuffer([u8; CmsgBuffer::SIZE]);

impl CmsgBuffer {
    // CMSG_SPACE(MAX_FDS * 4) = 16 (header) + 64, rounded to 8.
    const SIZE: usize = 16 + MAX_FDS * mem::size_of::<RawFd>();

    fn new() -> CmsgBuffer {
        CmsgBuffer([0; CmsgBuffer::SIZE])
    }

    fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.0.as_mut_ptr() as *mut libc::c_void
    }
}

/// Splits `data` into (header, payload) records.
pub fn records(data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let count = data.len().div_ceil(RECORD_PAYLOAD).max(1);
    (0..count).map(move |i| {
        let start = i * RECORD_PAYLOAD;
        let end = (start + RECORD_PAYLOAD).min(data.len());
        let mut header = 0;
        if i == 0 {
            header |= FIRST;
        }
        if i + 1 == count {
            header |= LAST;
        }
        (header, &data[start..end])
    })
}

/// Checks a message's size and fd count against the protocol's limits.
pub fn check_limits(len: usize, nfds: usize) -> Result<()> {
    if len > MAX_MESSAGE {
        return Err(Error::new(Code::TooBig, format!("message of {len} bytes exceeds the {MAX_MESSAGE}-byte limit")));
    }
    if nfds > MAX_FDS {
        return Err(Error::new(Code::TooBig, format!("{nfds} fds exceed the limit of {MAX_FDS} per message")));
    }
    Ok(())
}

/// Sends a whole message, waiting in poll(2) while the socket is full.
///
/// `timeout` bounds each wait for buffer space (an inactivity timeout). If it
/// runs out before the first record left, nothing was sent and the call may be
/// retried; if it runs out midway, the peer holds half a message and the
/// socket must be closed (the error says so).
pub fn send_message(fd: BorrowedFd<'_>, data: &[u8], fds: &[RawFd], timeout: Option<Duration>) -> Result<()> {
    check_limits(data.len(), fds.len())?;
    for (index, (header, payload)) in records(data).enumerate() {
        let attached = if index == 0 { fds } else { &[] };
        let deadline = Deadline::after(timeout);
        loop {
            match send_record(fd, header, payload, attached) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut pfd = [sys::pollfd(fd.as_raw_fd(), libc::POLLOUT)];
                    let ready = sys::poll(&mut pfd, deadline).map_err(|e| Error::os("poll on channel", e))?;
                    if ready == 0 {
                        let what = if index == 0 {
                            "timed out waiting to send on the channel; nothing was sent"
                        } else {
                            "timed out in the middle of a message; the channel is unusable and must be closed"
                        };
                        return Err(Error::new(Code::Timeout, what));
                    }
                }
                Err(e) => return Err(Error::os("sendmsg on channel", e)),
            }
        }
    }
    Ok(())
}

/// What [`Reassembler::read`] produced.
#[derive(Debug)]
pub enum Read {
    /// A whole message.
    Message(Message),
    /// Nothing more is queued right now (a partial message is kept).
    WouldBlock,
    /// The peer hung up (a partial message, if any, is discarded with its fds).
    Eof,
}

/// Reassembles records into messages. Keeps a partial message between calls,
/// so a non-blocking reader loses nothing when a message is still arriving.
pub struct Reassembler {
    partial: Option<Message>,
    buf: Vec<u8>,
    /// Largest message accepted (at most [`MAX_MESSAGE`]).
    limit: usize,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::new()
    }
}

impl Reassembler {
    /// An empty reassembler.
    pub fn new() -> Reassembler {
        Reassembler::with_limit(MAX_MESSAGE)
    }

    /// One that refuses messages over `limit` bytes (capped at [`MAX_MESSAGE`]):
    /// a peer can make it hold at most that much of an unfinished message.
    pub fn with_limit(limit: usize) -> Reassembler {
        Reassembler { partial: None, buf: vec![0; RECORD_PAYLOAD], limit: limit.min(MAX_MESSAGE) }
    }

    /// Reads records (non-blocking) until a message is whole, the socket is
    /// empty, or the peer hung up.
    pub fn read(&mut self, fd: BorrowedFd<'_>) -> Result<Read> {
        loop {
            let (header, len, fds, fds_lost) = match recv_record(fd, &mut self.buf) {
                Ok(RecordIn::Record { header, len, fds, fds_lost }) => (header, len, fds, fds_lost),
                Ok(RecordIn::Eof) => {
                    self.partial = None;
                    return Ok(Read::Eof);
                }
                Err(e) if e.code() == Code::WouldBlock => return Ok(Read::WouldBlock),
                Err(e) => {
                    self.partial = None;
                    return Err(e);
                }
            };
            let payload = &self.buf[..len];
            match (header & FIRST != 0, self.partial.take()) {
                (true, Some(_)) => {
                    return Err(Error::new(Code::Protocol, "a new message started before the previous one ended"));
                }
                (false, None) => {
                    return Err(Error::new(Code::Protocol, "a continuation record arrived with no message started"));
                }
                (false, Some(mut partial)) => {
                    if !fds.is_empty() || fds_lost {
                        return Err(Error::new(Code::Protocol, "descriptors attached to a continuation record"));
                    }
                    if partial.data.len() + payload.len() > self.limit {
                        let limit = self.limit;
                        return Err(Error::new(Code::TooBig, format!("peer sent a message over {limit} bytes")));
                    }
                    partial.data.extend_from_slice(payload);
                    self.partial = Some(partial);
                }
                (true, None) => {
                    if payload.len() > self.limit {
                        let limit = self.limit;
                        return Err(Error::new(Code::TooBig, format!("peer sent a message over {limit} bytes")));
                    }
                    self.partial = Some(Message { data: payload.to_vec(), fds, fds_lost });
                }
            }
            if header & LAST != 0 {
                return Ok(Read::Message(self.partial.take().unwrap_or_default()));
            }
        }
    }

    /// Reads one whole message, waiting in poll(2) up to `timeout` for each
    /// record (an inactivity timeout, as for [`send_message`]).
    pub fn read_blocking(&mut self, fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<Read> {
        loop {
            match self.read(fd)? {
                Read::WouldBlock => {}
                done => return Ok(done),
            }
            let mut pfd = [sys::pollfd(fd.as_raw_fd(), libc::POLLIN)];
            let ready = sys::poll(&mut pfd, Deadline::after(timeout)).map_err(|e| Error::os("poll on channel", e))?;
            if ready == 0 {
                return Err(Error::new(Code::Timeout, "timed out waiting for a message on the channel"));
            }
        }
    }

    /// Whether part of a message has arrived and the rest is awaited.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }
}
