//! `rcluster exec-worker`: the trampoline every worker of a `--listen` app
//! (and every worker the daemon starts) runs first, in the worker's own
//! process, and that then execs the program. Same pid throughout, so:
//!
//! - the systemd socket-activation protocol is met exactly: the sockets at
//!   fds 3, 4, ..., `LISTEN_FDS` = their count, `LISTEN_PID` = this pid
//!   (which the program keeps: exec does not change it; it cannot be set
//!   by the primary, which does not know the pid before the fork),
//!   `LISTEN_FDNAMES` = their names joined by ':'. The sockets come from
//!   the primary through the library (`Worker::listen`, policy `shared` or
//!   `reuseport`), so the primary sees the worker listen (it is "ready"),
//!   and stay non-blocking, as the primary holds them (see `place_fds`:
//!   a program that accepts blocking sets that itself). The rcluster channel
//!   moves right above them (`RCLUSTER_CHANNEL_FD` says where), so a program
//!   that does use rcluster still finds it;
//! - stdout and stderr are connected to the daemon's log socket (`logs.rs`),
//!   which prefixes each line with the worker id.
//!
//! The parent-death signal and process group the library set before the
//! first exec survive the second.

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use rcluster::Worker;
use rcluster::{ENV_CHANNEL_FD, ENV_WORKER_ID};

use crate::cli::ExecArgs;
use crate::{fail, Fail, Res};

/// The first fd of the systemd protocol.
const SD_LISTEN_FDS_START: RawFd = 3;

pub fn exec_worker(args: ExecArgs) -> Res<i32> {
    if args.cmd.is_empty() {
        fail!("exec-worker: no command");
    }
    let id = std::env::var(ENV_WORKER_ID).unwrap_or_else(|_| "?".into());
    if let (Some(socket), Some(app)) = (&args.log, &args.app) {
        capture_output(socket, app, &id);
    }
    let mut command = std::process::Command::new(&args.cmd[0]);
    command.args(&args.cmd[1..]);
    if !args.listen.is_empty() {
        // Read before `Worker::open`, which removes the variable.
        let channel: RawFd = std::env::var(ENV_CHANNEL_FD)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Fail("exec-worker: no channel fd".into()))?;
        let worker = Worker::open()?;
        let mut sockets = Vec::new();
        let mut listeners = Vec::new();
        for address in &args.listen {
            let Some((host, port)) = address.rsplit_once(':') else { fail!("exec-worker: bad address {address}") };
            let port: u16 = port.parse().map_err(|_| Fail(format!("exec-worker: bad address {address}")))?;
            let listener = worker.listen(host, port, Some(Duration::from_secs(30)))?;
            let Some(fd) = listener.socket_fd() else {
                fail!("exec-worker: the primary accepts on {address} itself (policy rr or least); --listen needs shared or reuseport")
            };
            sockets.push(fd);
            listeners.push(listener);
        }
        let channel_at = place_fds(&sockets, channel)?;
        // The fds now live at their new numbers; these objects must not close
        // or say goodbye on the old ones (the program takes over).
        std::mem::forget(listeners);
        std::mem::forget(worker);
        let names = if args.names.len() == sockets.len() {
            args.names.join(":")
        } else {
            (0..sockets.len()).map(|i| format!("listen{i}")).collect::<Vec<_>>().join(":")
        };
        // `Worker::open` removed the worker's variables from this process's
        // environment (its children are not workers); the program we exec
        // is this worker, so it gets them back, the channel where it now is.
        command
            .env(ENV_WORKER_ID, &id)
            .env("LISTEN_FDS", sockets.len().to_string())
            .env("LISTEN_PID", std::process::id().to_string())
            .env("LISTEN_FDNAMES", names)
            .env(ENV_CHANNEL_FD, channel_at.to_string());
    }
    let error = command.exec();
    let _ = writeln!(std::io::stderr(), "rcluster: cannot run {}: {error}", args.cmd[0]);
    Ok(127)
}

/// Puts `sockets` at fds 3, 4, ... (inherited across exec) and the channel
/// right above them; returns the channel's new fd.
///
/// The sockets keep their file status flags (non-blocking, as the primary
/// made them): every worker shares one open file description (`shared`),
/// so making it blocking here would also make it blocking under the
/// workers already running, and an event loop (asyncio, libuv) blocked in
/// accept() stalls. A program that wants blocking accepts sets that itself
/// (every worker of an app runs the same program, so they agree).
fn place_fds(sockets: &[RawFd], channel: RawFd) -> Res<RawFd> {
    let count = sockets.len() as RawFd;
    // First copy everything out of the way (a source may sit on a target).
    let floor = SD_LISTEN_FDS_START + count + 16;
    let mut copies = Vec::new();
    for &fd in sockets.iter().chain(std::iter::once(&channel)) {
        // SAFETY: fcntl on an fd this process holds; the copy is ours.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        if copy < 0 {
            fail!("exec-worker: dup: {}", std::io::Error::last_os_error());
        }
        copies.push(copy);
    }
    for (i, &copy) in copies.iter().enumerate() {
        let target = SD_LISTEN_FDS_START + i as RawFd;
        // SAFETY: dup2 onto a number we own from here on (whatever was there
        // is ours to close: the fds opened by this trampoline); the new fd
        // has no FD_CLOEXEC, so the program inherits it.
        if unsafe { libc::dup2(copy, target) } < 0 {
            fail!("exec-worker: dup2: {}", std::io::Error::last_os_error());
        }
        // SAFETY: closing our own temporary copy.
        unsafe { libc::close(copy) };
    }
    Ok(SD_LISTEN_FDS_START + count)
}

/// Connects stdout and stderr to the daemon's log socket; on failure they
/// stay as they were.
fn capture_output(socket: &Path, app: &str, id: &str) {
    for (stream, fd) in [("out", libc::STDOUT_FILENO), ("err", libc::STDERR_FILENO)] {
        let Ok(mut connection) = UnixStream::connect(socket) else { continue };
        if writeln!(connection, "{app}\t{id}\t{stream}").is_err() {
            continue;
        }
        // SAFETY: dup2 onto stdout/stderr, which this process owns; the
        // UnixStream closes only its own (close-on-exec) fd.
        unsafe { libc::dup2(connection.as_raw_fd(), fd) };
    }
}
