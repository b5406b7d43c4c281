//! The worker's side of shared sockets (`crate::share`).

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::Worker;
use crate::error::{Code, Error, Result};
use crate::share::{ShareFlags, SocketKind};
use crate::wire::Frame;

impl Worker {
    /// Asks the primary for the socket of `kind` at `address` (a path for a
    /// Unix socket) and `port`, which it binds once and hands to every
    /// worker asking for the same; for port 0, `index` says which of this
    /// worker's port-0 sockets at that address this is (each worker's n-th
    /// shares one, as Node's cluster does). `flags`: the options a UDP
    /// socket is bound with (when this request is the one that binds it).
    /// Returns the socket (this
    /// process's to use and close; close-on-exec), the port and the address
    /// it is bound to. A bind error comes back as an `Address` error with
    /// the bind's errno.
    pub fn share(
        &self,
        kind: SocketKind,
        address: &str,
        port: u16,
        index: u16,
        flags: ShareFlags,
        timeout: Option<Duration>,
    ) -> Result<(OwnedFd, u16, String)> {
        self.check_open()?;
        if address.len() > crate::wire::MAX_STR {
            return Err(Error::new(Code::InvalidArgument, "address too long for a share request"));
        }
        let request = self.next_request();
        let flags = flags.to_wire();
        self.send_frame(&Frame::Share { request, kind: kind as u8, port, index, address: address.to_owned(), flags })?;
        let reply =
            self.await_reply(request, timeout, || format!("the share request for {kind:?} {address}:{port}"))?;
        match reply {
            (Frame::ShareOk { port, address, .. }, Some(fd)) => Ok((fd, port, address)),
            (reply @ Frame::ListenErr { .. }, _) => Err(reply.listen_error().expect("a ListenErr frame")),
            (other, _) => Err(Error::new(Code::Protocol, format!("unexpected share reply {other:?}"))),
        }
    }
}
