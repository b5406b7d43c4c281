//! Replacing the primary itself without refusing a connection, the way
//! nginx and gunicorn do it on SIGUSR2, spoken in systemd's protocols:
//!
//! 1. this primary starts a new one from the program's current file (so a
//!    deploy that replaced it is what runs), handing it every listening
//!    socket as socket activation does (`LISTEN_FDS`, `LISTEN_PID` = the
//!    new process, fds from 3), and a `NOTIFY_SOCKET` of its own;
//! 2. the new primary takes those sockets instead of binding (see
//!    `systemd.rs`), starts its workers, and says `READY=1` once they all
//!    listen;
//! 3. then this one stops gracefully: it hands out what it already
//!    accepted, closes its copies of the sockets (the new one keeps them
//!    open, so the kernel keeps queueing), and its workers finish.
//!
//! If the new primary exits, or is not ready within `ready_timeout`, it is
//! stopped (SIGTERM) and this one keeps serving: an `UpgradeFailed` event
//! says why. The new primary is not this process's worker: no parent-death
//! signal, and it outlives us.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::spawn;

/// An upgrade under way: the new primary and where it reports.
pub(crate) struct Upgrade {
    pub child: Child,
    pub notify: UnixDatagram,
    dir: PathBuf,
    pub deadline: Instant,
}

impl Drop for Upgrade {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the new primary with `sockets` (address, name, fd) at fds 3, 4, ...
pub(crate) fn start(sockets: &[(SocketAddr, String, RawFd)], deadline: Instant) -> Result<Upgrade> {
    let argv = spawn::current_argv()?;
    // SAFETY: getpid has no arguments and cannot fail.
    let me = unsafe { libc::getpid() };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("rcluster-upgrade-{me}-{nanos}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::os(&format!("creating {}", dir.display()), e))?;
    let path = dir.join("notify");
    let notify = UnixDatagram::bind(&path).map_err(|e| Error::os("binding the upgrade's notify socket", e))?;
    notify.set_nonblocking(true).map_err(|e| Error::os("set_nonblocking", e))?;
    let fds: Vec<RawFd> = sockets.iter().map(|(_, _, fd)| *fd).collect();
    let names: Vec<&str> = sockets.iter().map(|(_, name, _)| name.as_str()).collect();
    // `sh` sets LISTEN_PID to its own pid and execs the program, which keeps it.
    let mut command = Command::new("/bin/sh");
    command.arg("-c").arg("LISTEN_PID=$$ exec \"$@\"").arg("sh").args(&argv);
    command
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(crate::primary::systemd::UPGRADE_NOTIFY, &path)
        // Not the service's main process as systemd knows it: it tells us, not systemd.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_PID");
    // SAFETY: the closure runs in the child before exec and calls only
    // fcntl and dup2 (async-signal-safe) on fd numbers captured by copy.
    unsafe {
        command.pre_exec(move || place_fds(&fds));
    }
    let child = command.spawn().map_err(|e| Error::os(&format!("starting the new primary {:?}", argv[0]), e))?;
    Ok(Upgrade { child, notify, dir, deadline })
}

/// In the child: `fds[i]` at fd 3 + i, inheritable. First every one is
/// copied above the target range, so moving one never overwrites another.
fn place_fds(fds: &[RawFd]) -> std::io::Result<()> {
    let top = 3 + fds.len() as RawFd;
    let mut high = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: fcntl on an fd this process holds.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, top) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        high.push(copy);
    }
    for (i, &copy) in high.iter().enumerate() {
        // SAFETY: dup2 onto a number in the target range; the result has no FD_CLOEXEC.
        if unsafe { libc::dup2(copy, 3 + i as RawFd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Upgrade {
    /// What the new primary has said since the last call: true once it
    /// said `READY=1`.
    pub(crate) fn heard_ready(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut ready = false;
        while let Ok(n) = self.notify.recv(&mut buf) {
            ready |= buf[..n].split(|&b| b == b'\n').any(|line| line == b"READY=1");
        }
        ready
    }

    /// Why the new primary will not take over, if it will not.
    pub(crate) fn failed(&mut self, now: Instant) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("the new primary exited before it was ready ({status})")),
            Ok(None) if now >= self.deadline => Some("the new primary was not ready in time".into()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot watch the new primary: {e}")),
        }
    }

    /// The new primary's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The fd to watch for its notifications.
    pub(crate) fn fd(&self) -> RawFd {
        self.notify.as_raw_fd()
    }
}
