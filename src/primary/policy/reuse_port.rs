//! `reuseport`: each worker gets its own `SO_REUSEPORT` listening socket on
//! the address and accepts itself; the kernel spreads connections over the
//! sockets by a hash of the peer's address and port. The primary leaves the
//! data path and only holds the port (bound, not listening, so no
//! connection ever waits on it).
//!
//! Known weakness: a listening socket that closes resets the connections in
//! its accept queue, and the kernel does not hand them to the other sockets
//! unless `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+). What rcluster does
//! about it: a worker asked to leave accepts everything already queued on
//! its socket before it reports closed, so a graceful stop loses nothing but
//! the connections that arrive in the instant between its last accept and
//! its close; a worker that crashes loses its whole queue unless
//! `tcp_migrate_req` is on. Use `rr` or `least` where that matters.

use super::{Policy, Sockets};

/// One `SO_REUSEPORT` socket per worker.
pub struct ReusePort;

impl Policy for ReusePort {
    fn sockets(&self) -> Sockets {
        Sockets::PerWorker
    }

    fn pick(&mut self, _members: &[u32], _load: &mut dyn FnMut(u32) -> Option<u32>) -> Option<u32> {
        None
    }
}
