//! What the addon's own threads (accepting connections, receiving
//! datagrams) wait on: the permits JS grants, and a stop that wakes them
//! wherever they wait (in poll on their fd, or for a permit).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use napi::bindgen_prelude::*;

pub(crate) struct Gate {
    /// What the thread may still take before JS grants more.
    permits: Mutex<u64>,
    permits_changed: Condvar,
    stopping: AtomicBool,
    /// An eventfd that wakes the thread out of poll when stopping.
    wake: OwnedFd,
}

impl Gate {
    pub(crate) fn new() -> Result<Gate> {
        // SAFETY: eventfd with flags only; the fd is wrapped at once.
        let raw: RawFd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(Error::from_reason(format!("eventfd: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: a fresh fd owned by nothing else.
        let wake = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Gate { permits: Mutex::new(0), permits_changed: Condvar::new(), stopping: AtomicBool::new(false), wake })
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops the thread: it returns from any wait below (idempotent).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: an 8-byte write of a local into an eventfd we own.
        unsafe { libc::write(self.wake.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        let _guard = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        self.permits_changed.notify_all();
    }

    /// Lets the thread take `n` more.
    pub(crate) fn grant(&self, n: u32) {
        let mut permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        *permits = permits.saturating_add(n as u64);
        self.permits_changed.notify_all();
    }

    /// The thread took one.
    pub(crate) fn took_one(&self) {
        let mut permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        *permits = permits.saturating_sub(1);
    }

    /// The permits granted and not used.
    pub(crate) fn unused(&self) -> u32 {
        let permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        (*permits).min(u32::MAX as u64) as u32
    }

    /// Waits for a permit; false when stopping.
    pub(crate) fn wait_for_permit(&self) -> bool {
        let mut permits = self.permits.lock().unwrap_or_else(|p| p.into_inner());
        while *permits == 0 && !self.stopping() {
            permits = self.permits_changed.wait(permits).unwrap_or_else(|p| p.into_inner());
        }
        !self.stopping()
    }

    /// Waits until `fd` may be readable; false when stopping.
    pub(crate) fn wait_readable(&self, fd: RawFd) -> bool {
        let mut fds = [
            libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        while !self.stopping() {
            // SAFETY: poll on a local array of two pollfds.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } > 0 {
                return !self.stopping();
            }
        }
        false
    }
}
