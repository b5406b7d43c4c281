//! The systemd protocols, both directions, spoken without libsystemd (each
//! is a few environment variables and a datagram; see sd_listen_fds(3) and
//! sd_notify(3)).
//!
//! - **Socket activation.** A service started with `LISTEN_PID` = its pid
//!   finds `LISTEN_FDS` listening sockets at fds 3, 4, ... (named by
//!   `LISTEN_FDNAMES`). The primary takes the TCP ones as the listeners for
//!   their addresses instead of binding: a restart of the service then
//!   refuses nothing (systemd holds the sockets; the kernel queues).
//! - **Readiness.** With `NOTIFY_SOCKET` set, the primary says `READY=1`
//!   once every worker listens, `RELOADING=1` (with `MONOTONIC_USEC`) and
//!   `READY=1` around a rolling reload, `STOPPING=1` at shutdown, and a
//!   `STATUS=` line with the workers and the generation.
//!
//! Neither variable set is the usual case and costs nothing. Bad input (a
//! `LISTEN_PID` that is not ours, an fd that is not a listening socket, a
//! `NOTIFY_SOCKET` nobody listens on) is a one-line warning on stderr and
//! the primary carries on as without systemd: never a crash, never a wrong
//! socket. Workers inherit none of these variables (see `spawn`).

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

use crate::sys;

/// The first fd of the socket-activation protocol.
const LISTEN_FDS_START: RawFd = 3;

/// Where a primary being replaced (`upgrade.rs`) waits for this one's
/// `READY=1`: told once, then forgotten (it is gone soon after).
pub(crate) const UPGRADE_NOTIFY: &str = "RCLUSTER_UPGRADE_NOTIFY";

/// The variables of both protocols: a worker inherits none of them.
pub(crate) const VARIABLES: [&str; 5] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", UPGRADE_NOTIFY];

fn warn(what: &str) {
    eprintln!("rcluster: {what}");
}

/// A listening TCP socket systemd passed us.
pub(crate) struct InheritedSocket {
    pub address: SocketAddr,
    pub socket: OwnedFd,
    /// Its name in `LISTEN_FDNAMES` (`""` if none).
    pub name: String,
}

/// The `LISTEN_FDNAMES` name under which a primary hands a port-0 listener
/// to the primary replacing it (`upgrade.rs`): the port was the OS's pick,
/// so the new primary finds it by this name and the worker's index, not by
/// the address its workers ask for (port 0).
pub(crate) fn port_zero_name(index: u16) -> String {
    format!("rcluster-port0-{index}")
}

/// The TCP listening sockets passed with `LISTEN_FDS` for this process,
/// close-on-exec from now on. Anything else passed is left alone and
/// warned about.
pub(crate) fn take_listen_fds() -> Vec<InheritedSocket> {
    let Ok(count) = std::env::var("LISTEN_FDS") else { return Vec::new() };
    // SAFETY: getpid has no arguments and cannot fail.
    let me = unsafe { libc::getpid() };
    match std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<i32>().ok()) {
        Some(pid) if pid == me => {}
        Some(pid) => {
            warn(&format!("LISTEN_FDS ignored: LISTEN_PID is {pid}, not this process ({me})"));
            return Vec::new();
        }
        None => {
            warn("LISTEN_FDS ignored: LISTEN_PID is missing or not a number");
            return Vec::new();
        }
    }
    let Some(count) = count.parse::<i32>().ok().filter(|&n| (0..=4096).contains(&n)) else {
        warn(&format!("LISTEN_FDS ignored: {count:?} is not a count of fds"));
        return Vec::new();
    };
    let names: Vec<String> =
        std::env::var("LISTEN_FDNAMES").unwrap_or_default().split(':').map(str::to_owned).collect();
    let mut sockets = Vec::new();
    for (i, fd) in (LISTEN_FDS_START..LISTEN_FDS_START + count).enumerate() {
        let name = names.get(i).cloned().unwrap_or_default();
        match listening_tcp_address(fd) {
            Ok(address) => {
                // SAFETY: the protocol hands this fd to this process, LISTEN_PID
                // says we are that process, and nothing else here claims it.
                let socket = unsafe { OwnedFd::from_raw_fd(fd) };
                if let Err(e) = sys::set_cloexec(socket.as_fd(), true) {
                    warn(&format!("LISTEN_FDS fd {fd}: FD_CLOEXEC: {e}"));
                }
                sockets.push(InheritedSocket { address, socket, name });
            }
            Err(why) => warn(&format!("LISTEN_FDS fd {fd} ({name:?}) not used: {why}")),
        }
    }
    sockets
}

/// The address of `fd` if it is a listening TCP socket.
fn listening_tcp_address(fd: RawFd) -> Result<SocketAddr, String> {
    if !sys::fd_is_open(fd) {
        return Err("not an open fd".into());
    }
    // SAFETY: only borrowed for these queries; fd_is_open said it is open.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let int = |level, name| sys::sockopt_int(borrowed, level, name).map_err(|e| format!("not a socket ({e})"));
    if int(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not a stream socket".into());
    }
    if int(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err("not listening".into());
    }
    let domain = int(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err("not a TCP socket (a Unix or other socket)".into());
    }
    // A TcpListener only borrowed for its address: forgotten, never closed here.
    // SAFETY: a listening TCP socket (checked above), not closed by the ManuallyDrop.
    let listener = std::mem::ManuallyDrop::new(unsafe { std::net::TcpListener::from_raw_fd(fd) });
    listener.local_addr().map_err(|e| format!("getsockname: {e}"))
}

type Target = (UnixDatagram, std::os::unix::net::SocketAddr);

/// Where readiness goes: `NOTIFY_SOCKET`, if set and reachable, and a
/// primary being replaced, until it has heard `READY=1`.
pub(crate) struct Notifier {
    target: Option<Target>,
    upgrade: Option<Target>,
    warned: bool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and
    /// `RCLUSTER_UPGRADE_NOTIFY`.
    pub(crate) fn from_env() -> Notifier {
        Notifier { target: target("NOTIFY_SOCKET"), upgrade: target(UPGRADE_NOTIFY), warned: false }
    }

    /// One that tells nobody (the `systemd` option is off).
    pub(crate) fn from_nothing() -> Notifier {
        Notifier { target: None, upgrade: None, warned: false }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines). A socket that
    /// does not answer is warned about once; the primary carries on.
    pub(crate) fn notify(&mut self, state: &str) {
        if let Some((socket, address)) = &self.target {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), address) {
                if !std::mem::replace(&mut self.warned, true) {
                    warn(&format!("NOTIFY_SOCKET: cannot tell systemd {:?}: {e}", state.lines().next().unwrap_or("")));
                }
            }
        }
        if state.lines().any(|line| line == "READY=1") {
            if let Some((socket, address)) = self.upgrade.take() {
                if let Err(e) = socket.send_to_addr(state.as_bytes(), &address) {
                    warn(&format!("cannot tell the primary this one replaces that it is ready: {e}"));
                }
            }
        }
    }

    /// Whether anyone is told.
    pub(crate) fn active(&self) -> bool {
        self.target.is_some() || self.upgrade.is_some()
    }
}

/// The datagram target named by the variable `name`, if set and usable.
fn target(name: &str) -> Option<Target> {
    let path = std::env::var_os(name)?;
    let address = {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_bytes();
        match bytes.strip_prefix(b"@") {
            Some(abstract_name) => std::os::unix::net::SocketAddr::from_abstract_name(abstract_name),
            None => std::os::unix::net::SocketAddr::from_pathname(&path),
        }
    };
    match (address, UnixDatagram::unbound()) {
        (Ok(address), Ok(socket)) => Some((socket, address)),
        (Err(e), _) | (_, Err(e)) => {
            warn(&format!("{name} {path:?} not used: {e}"));
            None
        }
    }
}

/// `MONOTONIC_USEC=` for a `RELOADING=1` message: CLOCK_MONOTONIC now, in µs.
pub(crate) fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
