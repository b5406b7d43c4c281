//! `shared`: the listening socket is handed to every worker, which accept on
//! it themselves; the primary leaves the data path. The kernel decides which
//! worker wakes, so distribution can be uneven (gunicorn's model).

use super::{Policy, Sockets};

/// Shared listening socket.
pub struct SharedSocket;

impl Policy for SharedSocket {
    fn sockets(&self) -> Sockets {
        Sockets::Shared
    }

    fn pick(&mut self, _members: &[u32], _load: &mut dyn FnMut(u32) -> Option<u32>) -> Option<u32> {
        None
    }
}
