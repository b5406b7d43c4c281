//! Sockets a primary binds once and hands, as they are, to every worker that
//! asks for the same address: what Node's cluster does for Unix-socket
//! servers and dgram sockets (round-robin dispatch is for TCP connections;
//! these the workers use themselves). The worker asks with
//! [`crate::Worker::share`]; the primary answers from
//! `primary::shared_sockets`.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;

use crate::error::{Code, Error, Result};
use crate::primary::parse_address;

/// What kind of socket is shared; the number is its value on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// A listening Unix stream socket at a path (Node's pipe servers).
    Unix = 1,
    /// A bound UDP socket over IPv4.
    Udp4 = 2,
    /// A bound UDP socket over IPv6.
    Udp6 = 3,
}

impl SocketKind {
    /// The kind a wire value names.
    pub fn from_wire(value: u8) -> Result<SocketKind> {
        match value {
            1 => Ok(SocketKind::Unix),
            2 => Ok(SocketKind::Udp4),
            3 => Ok(SocketKind::Udp6),
            other => Err(Error::new(Code::InvalidArgument, format!("unknown shared socket kind {other}"))
                .with_errno(libc::EINVAL)),
        }
    }

    /// Parses a kind's name as bindings spell it (`unix`, `udp4`, `udp6`).
    pub fn from_name(name: &str) -> Result<SocketKind> {
        match name {
            "unix" => Ok(SocketKind::Unix),
            "udp4" => Ok(SocketKind::Udp4),
            "udp6" => Ok(SocketKind::Udp6),
            other => Err(Error::new(
                Code::InvalidArgument,
                format!("unknown shared socket kind {other:?}: give unix, udp4 or udp6"),
            )),
        }
    }
}

/// The longest path a Unix socket address holds (sun_path, less its NUL).
const SUN_PATH_MAX: usize = 107;

/// `path` as bind(2) can take it: one longer than sun_path under the
/// primary's cwd is bound relative to that cwd, as Node's primary does for
/// a worker's path (workers send absolute paths, resolved in their own cwd).
fn bindable_path(path: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(path);
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return path.to_path_buf();
    }
    match std::env::current_dir() {
        Ok(cwd) => match path.strip_prefix(&cwd) {
            Ok(relative) if !relative.as_os_str().is_empty() => relative.to_path_buf(),
            _ => path.to_path_buf(),
        },
        Err(_) => path.to_path_buf(),
    }
}

/// A bound socket and what it is bound to: (fd, port, address or path).
pub(crate) type Bound = (OwnedFd, u16, String);

/// Binds a socket of `kind` at `address` (a path for `Unix`; an IP literal,
/// `localhost` or "" for UDP) and `port`. The fd is close-on-exec (std's
/// sockets are).
pub(crate) fn bind(kind: SocketKind, address: &str, port: u16) -> Result<Bound> {
    match kind {
        SocketKind::Unix => {
            if address.is_empty() {
                return Err(Error::new(Code::Address, "a Unix socket needs a path").with_errno(libc::EINVAL));
            }
            let listener =
                UnixListener::bind(bindable_path(address)).map_err(|e| Error::os(&format!("bind {address}"), e))?;
            Ok((OwnedFd::from(listener), 0, address.to_owned()))
        }
        SocketKind::Udp4 | SocketKind::Udp6 => {
            let host = match (kind, address) {
                (SocketKind::Udp6, "") => "::",
                (_, host) => host,
            };
            let addr: SocketAddr = parse_address(host, port)?;
            if addr.is_ipv4() != (kind == SocketKind::Udp4) {
                let what = format!("{host} is not an address of the {kind:?} family");
                return Err(Error::new(Code::Address, what).with_errno(libc::EINVAL));
            }
            let socket = UdpSocket::bind(addr).map_err(|e| Error::os(&format!("bind udp {addr}"), e))?;
            let bound = socket.local_addr().map_err(|e| Error::os("getsockname", e))?;
            Ok((OwnedFd::from(socket), bound.port(), bound.ip().to_string()))
        }
    }
}
