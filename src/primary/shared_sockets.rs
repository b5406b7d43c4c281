//! The primary's side of shared sockets (`crate::share`): one bound socket
//! per kind, address, port and port-0 index, handed to every worker that
//! asks. As Node's primary, it closes one when no worker uses it any more
//! (its last user hung up or exited), removing a Unix socket's file, so the
//! path can be bound again; what is left goes when the primary's loop ends.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::share::{self, ShareFlags, SocketKind};
use crate::wire::Frame;

type Key = (SocketKind, String, u16, u16);

/// One bound socket, what workers were told about it, and who asked for it.
struct Shared {
    fd: Arc<OwnedFd>,
    port: u16,
    address: String,
    users: HashSet<u32>,
}

impl Shared {
    /// Closes the primary's socket; a Unix socket's file goes with it (as
    /// libuv unlinks a pipe it bound when it closes it).
    fn close(self, kind: SocketKind) {
        if kind == SocketKind::Unix {
            let _ = std::fs::remove_file(&self.address);
        }
    }
}

/// What a `Share` request asks for, as it came on the wire.
pub(crate) struct Asked<'a> {
    pub kind: u8,
    pub address: &'a str,
    pub port: u16,
    pub index: u16,
    pub flags: u8,
}

#[derive(Default)]
pub(crate) struct SharedSockets {
    sockets: HashMap<Key, Shared>,
}

impl SharedSockets {
    /// The answer to `worker`'s `Share` request: `ShareOk` with the socket
    /// (bound now, with `flags`, or before), or `ListenErr` with the bind's
    /// errno (an unknown kind or flag: `InvalidArgument`, EINVAL).
    pub(crate) fn answer(&mut self, worker: u32, request: u32, asked: &Asked) -> (Frame, Option<Arc<OwnedFd>>) {
        let refuse = |e: crate::Error| (Frame::listen_err(request, &e), None);
        let Asked { kind, address, port, index, flags } = *asked;
        let (kind, flags) = match (SocketKind::from_wire(kind), ShareFlags::from_wire(flags)) {
            (Ok(kind), Ok(flags)) => (kind, flags),
            (Err(e), _) | (_, Err(e)) => return refuse(e),
        };
        // Only port 0 needs the index: each worker's n-th such socket shares one port.
        let key = (kind, address.to_owned(), port, if port == 0 { index } else { 0 });
        if let Some(shared) = self.sockets.get_mut(&key) {
            shared.users.insert(worker);
            let reply = Frame::ShareOk { request, port: shared.port, address: shared.address.clone() };
            return (reply, Some(shared.fd.clone()));
        }
        match share::bind(kind, address, port, flags) {
            Ok((fd, port, address)) => {
                let fd = Arc::new(fd);
                let users = HashSet::from([worker]);
                self.sockets.insert(key, Shared { fd: fd.clone(), port, address: address.clone(), users });
                (Frame::ShareOk { request, port, address }, Some(fd))
            }
            Err(e) => refuse(e),
        }
    }

    /// `worker` hung up or exited: the sockets no other worker uses close.
    pub(crate) fn release(&mut self, worker: u32) {
        let unused: Vec<Key> = self
            .sockets
            .iter_mut()
            .filter_map(|(key, shared)| (shared.users.remove(&worker) && shared.users.is_empty()).then(|| key.clone()))
            .collect();
        for key in unused {
            if let Some(shared) = self.sockets.remove(&key) {
                shared.close(key.0);
            }
        }
    }
}

impl Drop for SharedSockets {
    fn drop(&mut self) {
        for ((kind, _, _, _), shared) in self.sockets.drain() {
            shared.close(kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn asked(kind: u8, address: &str, port: u16, index: u16, flags: u8) -> Asked<'_> {
        Asked { kind, address, port, index, flags }
    }

    fn ok(answer: (Frame, Option<Arc<OwnedFd>>)) -> (u16, String, Arc<OwnedFd>) {
        match answer {
            (Frame::ShareOk { port, address, .. }, Some(fd)) => (port, address, fd),
            other => panic!("expected ShareOk, got {other:?}"),
        }
    }

    #[test]
    fn one_socket_per_key_and_port_zero_index() {
        let mut shared = SharedSockets::default();
        let (port, address, first) = ok(shared.answer(7, 1, &asked(SocketKind::Udp4 as u8, "127.0.0.1", 0, 0, 0)));
        assert!(port > 0);
        assert_eq!(address, "127.0.0.1");
        let (again, _, same) = ok(shared.answer(8, 2, &asked(SocketKind::Udp4 as u8, "127.0.0.1", 0, 0, 0)));
        assert_eq!((again, same.as_raw_fd()), (port, first.as_raw_fd()), "the same socket for the same key");
        let (other, _, _) = ok(shared.answer(7, 3, &asked(SocketKind::Udp4 as u8, "127.0.0.1", 0, 1, 0)));
        assert_ne!(other, port, "a worker's second port-0 socket is another one");
    }

    #[test]
    fn unix_socket_is_shared_and_its_file_removed_on_drop() {
        let path = std::env::temp_dir().join(format!("rcluster-share-test-{}.sock", std::process::id()));
        let path_text = path.to_str().unwrap().to_owned();
        let _ = std::fs::remove_file(&path);
        {
            let mut shared = SharedSockets::default();
            let (_, address, first) = ok(shared.answer(7, 1, &asked(SocketKind::Unix as u8, &path_text, 0, 0, 0)));
            assert_eq!(address, path_text);
            let (_, _, second) = ok(shared.answer(8, 2, &asked(SocketKind::Unix as u8, &path_text, 0, 0, 0)));
            assert_eq!(first.as_raw_fd(), second.as_raw_fd());
            assert!(path.exists());
        }
        assert!(!path.exists(), "the socket file goes with the primary");
    }

    #[test]
    fn bind_errors_and_bad_kinds_are_listen_errors() {
        let mut shared = SharedSockets::default();
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        match shared.answer(7, 1, &asked(SocketKind::Udp4 as u8, "127.0.0.1", port, 0, 0)) {
            (Frame::ListenErr { request: 1, errno, .. }, None) => assert_eq!(errno, libc::EADDRINUSE),
            other => panic!("expected EADDRINUSE, got {other:?}"),
        }
        assert!(matches!(
            shared.answer(8, 2, &asked(9, "127.0.0.1", 0, 0, 0)),
            (Frame::ListenErr { request: 2, .. }, None)
        ));
        assert!(matches!(
            shared.answer(7, 3, &asked(SocketKind::Udp6 as u8, "127.0.0.1", 0, 0, 0)),
            (Frame::ListenErr { .. }, None)
        ));
        assert!(matches!(
            shared.answer(7, 4, &asked(SocketKind::Unix as u8, "", 0, 0, 0)),
            (Frame::ListenErr { .. }, None)
        ));
    }

    #[test]
    fn udp_flags_are_set_before_the_bind() {
        use crate::sys::sockopt_int;
        use std::os::fd::AsFd;
        let mut shared = SharedSockets::default();
        let reuse = ShareFlags { reuse_addr: true, ..ShareFlags::default() }.to_wire();
        let (port, _, first) = ok(shared.answer(1, 1, &asked(SocketKind::Udp4 as u8, "127.0.0.1", 0, 0, reuse)));
        assert_eq!(sockopt_int(first.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap(), 1);
        // Another key (a port, not port 0), so a second bind of that port: SO_REUSEADDR lets it.
        let (again, _, second) = ok(shared.answer(1, 2, &asked(SocketKind::Udp4 as u8, "127.0.0.1", port, 0, reuse)));
        assert_eq!(again, port);
        assert_ne!(first.as_raw_fd(), second.as_raw_fd());

        let v6only = ShareFlags { ipv6_only: true, ..ShareFlags::default() }.to_wire();
        let (port, _, six) = ok(shared.answer(1, 3, &asked(SocketKind::Udp6 as u8, "::", 0, 0, v6only)));
        assert_eq!(sockopt_int(six.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap(), 1);
        let (four, _, _) = ok(shared.answer(1, 4, &asked(SocketKind::Udp4 as u8, "0.0.0.0", port, 0, 0)));
        assert_eq!(four, port, "IPv4 on the port of an IPv6-only socket");
    }

    #[test]
    fn unknown_or_misplaced_flags_are_refused_with_einval() {
        let mut shared = SharedSockets::default();
        for (request, kind, address, flags) in [
            (1, SocketKind::Udp4, "127.0.0.1", 0x80),
            (2, SocketKind::Udp4, "127.0.0.1", ShareFlags { ipv6_only: true, ..ShareFlags::default() }.to_wire()),
            (3, SocketKind::Unix, "/tmp/rcluster-never-bound.sock", 1),
        ] {
            match shared.answer(1, request, &asked(kind as u8, address, 0, 0, flags)) {
                (Frame::ListenErr { request: r, errno, message, .. }, None) => {
                    assert_eq!((r, errno), (request, libc::EINVAL), "{message}");
                }
                other => panic!("expected EINVAL, got {other:?}"),
            }
        }
        assert!(!std::path::Path::new("/tmp/rcluster-never-bound.sock").exists());
    }

    #[test]
    fn a_socket_closes_when_its_last_user_leaves() {
        let path = std::env::temp_dir().join(format!("rcluster-share-release-{}.sock", std::process::id()));
        let path_text = path.to_str().unwrap().to_owned();
        let _ = std::fs::remove_file(&path);
        let mut shared = SharedSockets::default();
        let (_, _, first) = ok(shared.answer(1, 1, &asked(SocketKind::Unix as u8, &path_text, 0, 0, 0)));
        ok(shared.answer(2, 2, &asked(SocketKind::Unix as u8, &path_text, 0, 0, 0)));
        let (udp_port, _, _) = ok(shared.answer(1, 3, &asked(SocketKind::Udp4 as u8, "127.0.0.1", 0, 0, 0)));
        drop(first);
        shared.release(1);
        assert!(path.exists(), "worker 2 still uses the Unix socket");
        assert!(
            std::net::UdpSocket::bind(("127.0.0.1", udp_port)).is_ok(),
            "the UDP socket only worker 1 used is closed"
        );
        shared.release(2);
        assert!(!path.exists(), "the file goes with the last user");
        let (_, _, again) = ok(shared.answer(3, 4, &asked(SocketKind::Unix as u8, &path_text, 0, 0, 0)));
        assert!(path.exists(), "the path is bound again");
        drop(again);
        shared.release(3);
        assert!(!path.exists());
    }
}
