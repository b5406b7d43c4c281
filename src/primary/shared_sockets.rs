//! The primary's side of shared sockets (`crate::share`): one bound socket
//! per kind, address, port and port-0 index, handed to every worker that
//! asks. Kept while the primary runs; a Unix socket's file is removed when
//! the primary's loop ends (Node removes it when the server closes).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::share::{self, SocketKind};
use crate::wire::Frame;

type Key = (SocketKind, String, u16, u16);

#[derive(Default)]
pub(crate) struct SharedSockets {
    sockets: HashMap<Key, (Arc<OwnedFd>, u16, String)>,
}

impl SharedSockets {
    /// The answer to a worker's `Share` request: `ShareOk` with the socket
    /// (bound now or before), or `ListenErr` with the bind's errno.
    pub(crate) fn answer(
        &mut self,
        request: u32,
        kind: u8,
        address: &str,
        port: u16,
        index: u16,
    ) -> (Frame, Option<Arc<OwnedFd>>) {
        let refuse = |e: crate::Error| (Frame::listen_err(request, &e), None);
        let kind = match SocketKind::from_wire(kind) {
            Ok(kind) => kind,
            Err(e) => return refuse(e),
        };
        // Only port 0 needs the index: each worker's n-th such socket shares one port.
        let key = (kind, address.to_owned(), port, if port == 0 { index } else { 0 });
        if let Some((fd, port, address)) = self.sockets.get(&key) {
            return (Frame::ShareOk { request, port: *port, address: address.clone() }, Some(fd.clone()));
        }
        match share::bind(kind, address, port) {
            Ok((fd, port, address)) => {
                let fd = Arc::new(fd);
                self.sockets.insert(key, (fd.clone(), port, address.clone()));
                (Frame::ShareOk { request, port, address }, Some(fd))
            }
            Err(e) => refuse(e),
        }
    }
}

impl Drop for SharedSockets {
    fn drop(&mut self) {
        for ((kind, _, _, _), (_, _, path)) in &self.sockets {
            if *kind == SocketKind::Unix {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn ok(answer: (Frame, Option<Arc<OwnedFd>>)) -> (u16, String, Arc<OwnedFd>) {
        match answer {
            (Frame::ShareOk { port, address, .. }, Some(fd)) => (port, address, fd),
            other => panic!("expected ShareOk, got {other:?}"),
        }
    }

    #[test]
    fn one_socket_per_key_and_port_zero_index() {
        let mut shared = SharedSockets::default();
        let (port, address, first) = ok(shared.answer(1, SocketKind::Udp4 as u8, "127.0.0.1", 0, 0));
        assert!(port > 0);
        assert_eq!(address, "127.0.0.1");
        let (again, _, same) = ok(shared.answer(2, SocketKind::Udp4 as u8, "127.0.0.1", 0, 0));
        assert_eq!((again, same.as_raw_fd()), (port, first.as_raw_fd()), "the same socket for the same key");
        let (other, _, _) = ok(shared.answer(3, SocketKind::Udp4 as u8, "127.0.0.1", 0, 1));
        assert_ne!(other, port, "a worker's second port-0 socket is another one");
    }

    #[test]
    fn unix_socket_is_shared_and_its_file_removed_on_drop() {
        let path = std::env::temp_dir().join(format!("rcluster-share-test-{}.sock", std::process::id()));
        let path_text = path.to_str().unwrap().to_owned();
        let _ = std::fs::remove_file(&path);
        {
            let mut shared = SharedSockets::default();
            let (_, address, first) = ok(shared.answer(1, SocketKind::Unix as u8, &path_text, 0, 0));
            assert_eq!(address, path_text);
            let (_, _, second) = ok(shared.answer(2, SocketKind::Unix as u8, &path_text, 0, 0));
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
        match shared.answer(1, SocketKind::Udp4 as u8, "127.0.0.1", port, 0) {
            (Frame::ListenErr { request: 1, errno, .. }, None) => assert_eq!(errno, libc::EADDRINUSE),
            other => panic!("expected EADDRINUSE, got {other:?}"),
        }
        assert!(matches!(shared.answer(2, 9, "127.0.0.1", 0, 0), (Frame::ListenErr { request: 2, .. }, None)));
        assert!(matches!(shared.answer(3, SocketKind::Udp6 as u8, "127.0.0.1", 0, 0), (Frame::ListenErr { .. }, None)));
        assert!(matches!(shared.answer(4, SocketKind::Unix as u8, "", 0, 0), (Frame::ListenErr { .. }, None)));
    }
}
