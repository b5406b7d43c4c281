//! Listening sockets owned by the primary, one per address key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::policy::Policy;
use crate::error::{Code, Error, Result};

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
    /// Workers taking this listener's connections, in join order.
    pub members: Vec<u32>,
    pub policy: Box<dyn Policy>,
    /// Edge-triggered readiness seen and not yet drained to EAGAIN.
    pub ready: bool,
    /// Accepting is paused (after EMFILE and the like) until then.
    pub paused_until: Option<Instant>,
}

impl Listener {
    /// Binds `address` and listens with `backlog`, non-blocking, close-on-exec.
    pub fn bind(id: u32, address: SocketAddr, backlog: i32, policy: Box<dyn Policy>) -> Result<Listener> {
        let socket = TcpListener::bind(address).map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(0);
            Error::new(Code::Address, format!("cannot listen on {address}: {e}")).with_errno(errno)
        })?;
        // Calling listen(2) again on a listening socket sets its backlog.
        // SAFETY: listen on a socket fd we own.
        unsafe { libc::listen(socket.as_raw_fd(), backlog) };
        socket.set_nonblocking(true).map_err(|e| Error::os("set_nonblocking on listener", e))?;
        let address = socket.local_addr().map_err(|e| Error::os("getsockname on listener", e))?;
        Ok(Listener { id, socket: Some(socket), address, members: Vec::new(), policy, ready: true, paused_until: None })
    }
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
