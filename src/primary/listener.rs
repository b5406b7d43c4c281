//! Listening sockets owned by the primary, one per address key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use super::core::Overflow;
use super::policy::Sockets;
use crate::error::{Code, Error, Result};
use crate::sys;

/// Parses `host` and `port` into an address. `host` is an IPv4 or IPv6
/// literal (brackets allowed), `localhost`, or empty for `0.0.0.0`. Names
/// are not resolved: a DNS lookup would stall the dispatch loop.
pub fn parse_address(host: &str, port: u16) -> Result<SocketAddr> {
    let trimmed = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match trimmed {
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        literal => literal.parse().map_err(|_| {
            Error::new(
                Code::Address,
                format!("bad address {host:?}: give an IP address, \"localhost\" or \"\" for all interfaces"),
            )
            .with_errno(libc::EINVAL)
        })?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// A listening socket and the workers it serves.
pub struct Listener {
    pub id: u32,
    /// `None` once closed at shutdown: the listener still routes the
    /// connections it accepted before, to the workers that remain.
    pub socket: Option<TcpListener>,
    pub address: SocketAddr,
    /// Who accepts its connections (its policy's choice; the policy
    /// itself, with the listener's workers, is in the core's `Connections`).
    pub sockets: Sockets,
    /// Edge-triggered readiness seen and not yet drained to EAGAIN.
    pub ready: bool,
    /// Accepting is paused (after EMFILE and the like) until then.
    pub paused_until: Option<Instant>,
    /// The host declared it (`Primary::listen`): it stays open while the
    /// primary runs. Others were bound for workers' requests and close
    /// once no worker has used them for `listener_idle`.
    pub declared: bool,
    /// Since when no worker has been a member (for the idle close).
    pub idle_since: Option<Instant>,
    /// Under `hybrid`: whether the primary accepts now (and watches the socket).
    pub overflow: Overflow,
}

impl Listener {
    /// Binds `address` for `policy`: a listening socket (non-blocking,
    /// close-on-exec) when the primary accepts or shares it; for per-worker
    /// sockets, a bound `SO_REUSEPORT` socket that does not listen and only
    /// holds the port.
    ///
    /// `inherited`: a listening socket systemd passed for this address, taken
    /// in place of a new one where the policy can use it (the primary
    /// accepting, or one socket every worker shares). Per-worker
    /// `SO_REUSEPORT` sockets cannot join a socket bound without that
    /// option, so `reuseport` binds as usual and says so.
    pub fn bind(
        id: u32,
        address: SocketAddr,
        backlog: i32,
        sockets: Sockets,
        inherited: Option<OwnedFd>,
    ) -> Result<Listener> {
        if let Some(fd) = inherited {
            if sockets != Sockets::PerWorker {
                let socket = TcpListener::from(fd);
                socket.set_nonblocking(true).map_err(|e| Error::os("set_nonblocking on listener", e))?;
                let address = socket.local_addr().map_err(|e| Error::os("getsockname on listener", e))?;
                return Ok(Listener::new(id, socket, address, sockets));
            }
            eprintln!(
                "rcluster: the socket systemd passed for {address} is not used: reuseport binds a socket per worker"
            );
        }
        let socket = match sockets {
            Sockets::PrimaryAccepts | Sockets::Shared | Sockets::Hybrid => {
                let socket = TcpListener::bind(address).map_err(|e| address_error(address, e))?;
                // Calling listen(2) again on a listening socket sets its backlog.
                // SAFETY: listen on a socket fd we own.
                unsafe { libc::listen(socket.as_raw_fd(), backlog) };
                socket.set_nonblocking(true).map_err(|e| Error::os("set_nonblocking on listener", e))?;
                socket
            }
            Sockets::PerWorker => TcpListener::from(reuse_port_socket(address)?),
        };
        let address = socket.local_addr().map_err(|e| Error::os("getsockname on listener", e))?;
        Ok(Listener::new(id, socket, address, sockets))
    }

    fn new(id: u32, socket: TcpListener, address: SocketAddr, sockets: Sockets) -> Listener {
        Listener {
            id,
            socket: Some(socket),
            address,
            sockets,
            ready: true,
            paused_until: None,
            declared: false,
            idle_since: None,
            overflow: Overflow::default(),
        }
    }

    /// Whether the primary accepts this listener's connections now: always
    /// when its policy says so, under `hybrid` while it has stepped in.
    pub fn primary_accepts(&self) -> bool {
        match self.sockets {
            Sockets::PrimaryAccepts => true,
            Sockets::Hybrid => self.overflow.dispatching(),
            Sockets::Shared | Sockets::PerWorker => false,
        }
    }

    /// The listening socket to give a worker that will accept itself: a
    /// descriptor of the shared socket, or a new `SO_REUSEPORT` socket of
    /// its own. `None` when the primary accepts.
    pub fn socket_for_worker(&self, backlog: i32) -> Result<Option<OwnedFd>> {
        let Some(socket) = &self.socket else {
            return Err(Error::new(Code::Leaving, "the listener is closed: the primary is shutting down"));
        };
        match self.sockets {
            Sockets::PrimaryAccepts => Ok(None),
            Sockets::Shared | Sockets::Hybrid => {
                socket.try_clone().map(|s| Some(OwnedFd::from(s))).map_err(|e| Error::os("dup of the listener", e))
            }
            Sockets::PerWorker => {
                let own = reuse_port_socket(self.address)?;
                // SAFETY: listen on a socket fd we own.
                sys::cvt(unsafe { libc::listen(own.as_raw_fd(), backlog) })
                    .map_err(|e| address_error(self.address, e))?;
                Ok(Some(own))
            }
        }
    }
}

fn address_error(address: SocketAddr, e: std::io::Error) -> Error {
    let errno = e.raw_os_error().unwrap_or(0);
    Error::new(Code::Address, format!("cannot listen on {address}: {e}")).with_errno(errno)
}

/// A TCP socket with SO_REUSEADDR and SO_REUSEPORT, bound to `address`, not
/// listening; non-blocking and close-on-exec.
fn reuse_port_socket(address: SocketAddr) -> Result<OwnedFd> {
    let domain = if address.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscall; the fd is wrapped at once.
    let raw =
        sys::cvt(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })
            .map_err(|e| Error::os("socket", e))?;
    // SAFETY: fresh fd owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: setsockopt with a pointer to a local int and its size.
        sys::cvt(unsafe {
            libc::setsockopt(raw, libc::SOL_SOCKET, option, &one as *const libc::c_int as *const libc::c_void, 4)
        })
        .map_err(|e| Error::os("setsockopt(SO_REUSEPORT)", e))?;
    }
    let (storage, len) = sys::sockaddr(address);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the call.
    sys::cvt(unsafe { libc::bind(raw, &storage as *const libc::sockaddr_storage as *const libc::sockaddr, len) })
        .map_err(|e| address_error(address, e))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_literals_and_refuses_names() {
        assert_eq!(parse_address("127.0.0.1", 80).unwrap().to_string(), "127.0.0.1:80");
        assert_eq!(parse_address("[::1]", 80).unwrap().to_string(), "[::1]:80");
        assert_eq!(parse_address("", 1).unwrap().to_string(), "0.0.0.0:1");
        assert_eq!(parse_address("localhost", 1).unwrap().to_string(), "127.0.0.1:1");
        let err = parse_address("example.com", 1).unwrap_err();
        assert_eq!(err.code(), Code::Address);
        assert_eq!(err.errno(), libc::EINVAL);
    }
}
