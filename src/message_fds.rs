//! File descriptors attached to application messages (Node's `sendHandle`).
//!
//! # Ownership
//!
//! The sender keeps its descriptors: sending duplicates them (the kernel
//! does, on the spot, for a worker's send; the primary, whose sends are
//! queued for its loop thread, duplicates them before `send_fds` returns),
//! so the caller may close its copy as soon as the call returns, whatever
//! the result. The receiver gets new descriptors, close-on-exec, owned by
//! the event that carries them until the host takes them.
//!
//! # Limits
//!
//! At most [`MAX_FDS`] per message (they ride on the message's first
//! record). A message carrying descriptors travels as a `User` frame of its
//! own: the packed `Users` frame, and every control frame a peer has no
//! reason to attach one to, may carry none (a peer that attaches some
//! breaks the protocol; they are closed with the frame).
//!
//! A receiver at its fd limit gets fewer descriptors than were sent (the
//! kernel installs what fits, in order, and drops the rest): the message
//! still arrives, with the ones that came.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::channel;
use crate::error::{Code, Error, Result};
use crate::sys;
use crate::wire::Frame;

pub use crate::channel::MAX_FDS;

/// Checks that a message of `len` bytes may carry `fds`: at most
/// [`MAX_FDS`] of them, each open.
pub fn check(len: usize, fds: &[RawFd]) -> Result<()> {
    channel::check_limits(len.saturating_add(1), fds.len())?;
    for &fd in fds {
        if !sys::fd_is_open(fd) {
            return Err(Error::new(Code::InvalidArgument, format!("fd {fd} is not an open file descriptor")));
        }
    }
    Ok(())
}

/// Duplicates `fds` (close-on-exec) for a message sent later: the caller
/// keeps its own. Checks them as [`check`] does.
pub fn duplicate(len: usize, fds: &[RawFd]) -> Result<Vec<OwnedFd>> {
    check(len, fds)?;
    fds.iter()
        .map(|&fd| {
            // SAFETY: `check` found `fd` open; F_DUPFD_CLOEXEC creates a new
            // fd that nothing else owns, wrapped at once.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            sys::cvt(copy).map_err(|e| Error::os(&format!("duplicating fd {fd} to send it"), e))?;
            // SAFETY: `copy` is a fresh fd owned by nothing else.
            Ok(unsafe { OwnedFd::from_raw_fd(copy) })
        })
        .collect()
}

/// Borrowed fds as raw numbers, for the channel.
pub fn raw(fds: &[BorrowedFd<'_>]) -> Vec<RawFd> {
    fds.iter().map(|fd| fd.as_raw_fd()).collect()
}

/// The descriptors that came with a frame from a peer, if that frame may
/// carry them: only a `User` frame, and only when `accepted` (the receiver
/// asked for them). Otherwise a protocol error; the descriptors are closed.
pub fn take(frame: &Frame, fds: Vec<OwnedFd>, fds_lost: bool, accepted: bool) -> Result<Vec<OwnedFd>> {
    if fds.is_empty() && !fds_lost {
        return Ok(fds);
    }
    if matches!(frame, Frame::User(_)) && accepted {
        return Ok(fds);
    }
    let count = fds.len();
    drop(fds);
    let what = match frame {
        Frame::User(_) => format!(
            "sent file descriptors with a message ({count} arrived), which this primary does not accept \
             (message_fds is off); they were closed"
        ),
        other => format!(
            "sent file descriptors with a {} frame ({count} arrived), which carries none; they were closed",
            frame_name(other)
        ),
    };
    Err(Error::new(Code::Protocol, what))
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello { .. } => "hello",
        Frame::Listen { .. } => "listen",
        Frame::Share { .. } => "share",
        Frame::ShareOk { .. } => "share-ok",
        Frame::Unlisten { .. } => "unlisten",
        Frame::Ack { .. } => "ack",
        Frame::Acks { .. } => "acks",
        Frame::Lost { .. } => "lost",
        Frame::Goodbye => "goodbye",
        Frame::Pong { .. } => "pong",
        Frame::Ready => "ready",
        Frame::Done { .. } => "done",
        Frame::ListenOk { .. } => "listen-ok",
        Frame::ListenErr { .. } => "listen-error",
        Frame::Conns { .. } => "connections",
        Frame::Disconnect => "disconnect",
        Frame::Ping { .. } => "ping",
        Frame::SelfAccept { .. } => "self-accept",
        Frame::Busy { .. } => "busy",
        Frame::User(_) => "message",
        Frame::Users(_) => "packed-messages",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: a valid out-array of two ints; both wrapped at once.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn closed_and_too_many_fds_are_refused() {
        let (r, w) = pipe();
        let closed = w.as_raw_fd();
        drop(w);
        assert_eq!(check(3, &[r.as_raw_fd(), closed]).unwrap_err().code(), Code::InvalidArgument);
        let many = vec![r.as_raw_fd(); MAX_FDS + 1];
        assert_eq!(check(3, &many).unwrap_err().code(), Code::TooBig);
        assert!(check(3, &[r.as_raw_fd(); MAX_FDS]).is_ok());
    }

    #[test]
    fn a_duplicate_is_a_new_close_on_exec_fd() {
        let (r, _w) = pipe();
        let copies = duplicate(0, &[r.as_raw_fd()]).unwrap();
        assert_ne!(copies[0].as_raw_fd(), r.as_raw_fd());
        // SAFETY: F_GETFD on an open fd.
        assert_eq!(unsafe { libc::fcntl(copies[0].as_raw_fd(), libc::F_GETFD) } & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn only_an_accepted_user_frame_keeps_its_fds() {
        let (r, w) = pipe();
        let user = Frame::User(vec![1]);
        assert_eq!(take(&user, vec![r], false, true).unwrap().len(), 1);
        assert_eq!(take(&user, vec![w], false, false).unwrap_err().code(), Code::Protocol);
        let (r, _w) = pipe();
        let err = take(&Frame::Ready, vec![r], false, true).unwrap_err();
        assert!(err.message().contains("ready frame"), "{err}");
        assert!(take(&Frame::Users(vec![]), Vec::new(), true, true).is_err());
        assert!(take(&Frame::Ready, Vec::new(), false, false).unwrap().is_empty());
    }
}
