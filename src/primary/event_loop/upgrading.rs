//! Replacing the primary itself (SIGUSR2; see `primary/upgrade.rs`).

use super::*;

impl EventLoop {
    /// Starts a new primary from the program's current file with our
    /// listening sockets (see `upgrade.rs`). One at a time; not while stopping.
    pub(super) fn start_upgrade(&mut self) {
        if self.shutdown.is_some() || self.upgrade.is_some() {
            return;
        }
        // A listener bound for port 0 is named by its place among port-0
        // listeners: the new primary's workers ask for port 0 again.
        let port_zero: HashMap<u32, u16> = self
            .by_address
            .iter()
            .filter(|((address, _), _)| address.port() == 0)
            .map(|(&(_, index), &id)| (id, index))
            .collect();
        let sockets: Vec<(SocketAddr, String, RawFd)> = self
            .listeners
            .values()
            .filter(|l| l.sockets != Sockets::PerWorker)
            .filter_map(|l| {
                let name = port_zero.get(&l.id).map_or_else(|| "listener".to_owned(), |&i| systemd::port_zero_name(i));
                l.socket.as_ref().map(|s| (l.address, name, s.as_raw_fd()))
            })
            .collect();
        let deadline = Instant::now() + self.config.supervision.ready_timeout;
        match upgrade::start(&sockets, deadline) {
            Ok(up) => {
                let registered =
                    self.poll.registry().register(&mut SourceFd(&up.fd()), TOKEN_UPGRADE, Interest::READABLE);
                if let Err(e) = registered {
                    return self.upgrade_failed(up, format!("cannot watch the new primary: {e}"));
                }
                self.upgrade = Some(up);
            }
            Err(e) => self.shared.emit(Event::UpgradeFailed { message: e.message().to_owned() }),
        }
    }

    /// The new primary spoke: once it says READY=1, this one stops.
    pub(super) fn on_upgrade_news(&mut self) {
        let Some(up) = &self.upgrade else { return };
        if !up.heard_ready() {
            return;
        }
        let Some(up) = self.upgrade.take() else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&up.fd()));
        self.shared.emit(Event::Upgraded { pid: up.pid() });
        drop(up); // the new primary outlives us: not waited for, not signalled
        self.begin_shutdown(self.config.stop_timeout);
    }

    /// Checks on a new primary that has not said it is ready.
    pub(super) fn watch_upgrade(&mut self, now: Instant) {
        self.on_upgrade_news();
        let Some(up) = &mut self.upgrade else { return };
        let Some(why) = up.failed(now) else { return };
        let Some(up) = self.upgrade.take() else { return };
        let _ = self.poll.registry().deregister(&mut SourceFd(&up.fd()));
        self.upgrade_failed(up, why);
    }

    pub(super) fn upgrade_failed(&mut self, mut up: Upgrade, why: String) {
        // It stops its own workers gracefully on SIGTERM.
        let _ = sys::kill(up.pid(), libc::SIGTERM);
        let _ = up.child.try_wait();
        self.shared.emit(Event::UpgradeFailed { message: format!("{why}; this primary keeps serving") });
    }
}
