//! Opt-in signal handling for the primary: SIGTERM and SIGINT start a
//! graceful shutdown (a second one stops the workers at once), SIGHUP a
//! rolling reload, SIGTTIN and SIGTTOU add and remove a worker, SIGUSR2
//! replaces the primary itself (`upgrade.rs`).
//!
//! Installed only when the host asks (`Config::handle_signals`); the
//! previous handlers are restored when the primary ends. The handler does
//! one thing, async-signal-safe: it writes the signal number into a
//! non-blocking pipe that the event loop watches.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Code, Error, Result};
use crate::sys;

/// The signals a primary handles when asked to.
pub const HANDLED: [libc::c_int; 6] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGUSR2];

static PIPE_WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = PIPE_WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write(2) and errno access are async-signal-safe; errno is
        // saved and restored so the interrupted code does not see it change.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, &byte as *const u8 as *const libc::c_void, 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Installed handlers; restores the previous ones when dropped.
pub struct SignalPipe {
    read: OwnedFd,
    _write: OwnedFd,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalPipe {
    /// Installs the handlers. One primary per process may own them.
    pub fn install() -> Result<SignalPipe> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` is a valid out-array; both fds are wrapped at once.
        sys::cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })
            .map_err(|e| Error::os("pipe2 for signals", e))?;
        // SAFETY: fresh fds owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if PIPE_WRITE_FD.compare_exchange(-1, write.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return Err(Error::new(Code::State, "another primary in this process already handles signals"));
        }
        let mut previous = Vec::new();
        for signal in HANDLED {
            // SAFETY: zeroed sigaction is valid; we set a plain handler with
            // SA_RESTART and an empty mask, and keep the old action to restore.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) == 0 {
                    previous.push((signal, old));
                }
            }
        }
        Ok(SignalPipe { read, _write: write, previous })
    }

    /// The fd to watch.
    pub fn fd(&self) -> &OwnedFd {
        &self.read
    }

    /// Signals received since the last call.
    pub fn take(&self) -> Vec<libc::c_int> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        loop {
            // SAFETY: reads into a local buffer from a pipe we own.
            let n = unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                return out;
            }
            out.extend(buf[..n as usize].iter().map(|&b| b as libc::c_int));
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: restores the action sigaction gave us.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
        PIPE_WRITE_FD.store(-1, Ordering::SeqCst);
    }
}
