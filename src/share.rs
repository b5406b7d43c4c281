//! Sockets a primary binds once and hands, as they are, to every worker that
//! asks for the same address: what Node's cluster does for Unix-socket
//! servers and dgram sockets (round-robin dispatch is for TCP connections;
//! these the workers use themselves). The worker asks with
//! [`crate::Worker::share`]; the primary answers from
//! `primary::shared_sockets`.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use crate::error::{Code, Error, Result};
use crate::primary::parse_address;
use crate::sys;

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

/// How a shared UDP socket is bound: the options Node's dgram passes
/// through its cluster primary with a worker's bind (`reuseAddr`,
/// `ipv6Only`), which must be set before the bind, so the primary sets them.
/// The primary keys a shared socket by kind, address, port and index, not
/// by these (as Node's primary does): a second worker asking for the same
/// socket gets the one already bound, whatever options it asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ShareFlags {
    /// `SO_REUSEADDR`: other sockets with it may bind the same address and port.
    pub reuse_addr: bool,
    /// `IPV6_V6ONLY`: an IPv6 socket bound to `::` leaves IPv4 to others
    /// (UDP over IPv6 only).
    pub ipv6_only: bool,
}

impl ShareFlags {
    const REUSE_ADDR: u8 = 1;
    const IPV6_ONLY: u8 = 2;
    const KNOWN: u8 = Self::REUSE_ADDR | Self::IPV6_ONLY;

    /// The flags as the share request carries them (0: none).
    pub fn to_wire(self) -> u8 {
        (if self.reuse_addr { Self::REUSE_ADDR } else { 0 }) | (if self.ipv6_only { Self::IPV6_ONLY } else { 0 })
    }

    /// The flags a share request carries; a bit this version does not know
    /// (a newer worker's option) is refused rather than ignored, since a
    /// socket bound without an option its worker relies on is a wrong one.
    pub fn from_wire(bits: u8) -> Result<ShareFlags> {
        if bits & !Self::KNOWN != 0 {
            let what = format!("unknown shared socket flags {:#04x} (this primary knows {:#04x})", bits, Self::KNOWN);
            return Err(Error::new(Code::InvalidArgument, what).with_errno(libc::EINVAL));
        }
        Ok(ShareFlags { reuse_addr: bits & Self::REUSE_ADDR != 0, ipv6_only: bits & Self::IPV6_ONLY != 0 })
    }

    /// Refuses flags `kind` cannot take, as Node refuses them (EINVAL): none
    /// for a Unix socket, `ipv6_only` only over IPv6.
    fn check(self, kind: SocketKind) -> Result<()> {
        let refused = match kind {
            SocketKind::Unix if self != ShareFlags::default() => "a shared Unix socket takes no flags",
            SocketKind::Udp4 if self.ipv6_only => "ipv6_only is for a UDP socket over IPv6",
            _ => return Ok(()),
        };
        Err(Error::new(Code::Address, refused).with_errno(libc::EINVAL))
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
/// `localhost` or "" for UDP) and `port`, with `flags`. The fd is
/// close-on-exec.
pub(crate) fn bind(kind: SocketKind, address: &str, port: u16, flags: ShareFlags) -> Result<Bound> {
    flags.check(kind)?;
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
            let socket = udp_socket(addr, flags)?;
            let bound = socket.local_addr().map_err(|e| Error::os("getsockname", e))?;
            Ok((OwnedFd::from(socket), bound.port(), bound.ip().to_string()))
        }
    }
}

/// A UDP socket bound to `addr`, its `flags` set before the bind (where
/// they take effect); blocking, close-on-exec.
fn udp_socket(addr: SocketAddr, flags: ShareFlags) -> Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall; the fd is wrapped at once.
    let raw = sys::cvt(unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        .map_err(|e| Error::os("socket", e))?;
    // SAFETY: a fresh fd owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut options = Vec::new();
    if flags.reuse_addr {
        options.push((libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR"));
    }
    if flags.ipv6_only {
        options.push((libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY"));
    }
    for (level, name, what) in options {
        let one: libc::c_int = 1;
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: setsockopt with a pointer to a local int and its size.
        sys::cvt(unsafe {
            libc::setsockopt(raw, level, name, &one as *const libc::c_int as *const libc::c_void, size)
        })
        .map_err(|e| Error::os(&format!("setsockopt({what})"), e))?;
    }
    let (storage, len) = sys::sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the call.
    sys::cvt(unsafe {
        libc::bind(fd.as_raw_fd(), &storage as *const libc::sockaddr_storage as *const libc::sockaddr, len)
    })
    .map_err(|e| Error::os(&format!("bind udp {addr}"), e))?;
    Ok(std::net::UdpSocket::from(fd))
}
