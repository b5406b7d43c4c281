//! Policy `hybrid` in the loop: carrying out `core::Overflow`'s switches
//! (watching a listener's socket or not, telling its workers).

use super::*;
use crate::primary::core::Switch;

impl EventLoop {
    /// A worker saw connections queueing on a `hybrid` listener's socket.
    pub(super) fn on_busy(&mut self, listener: u32) {
        let now = self.now;
        let Some(entry) = self.listeners.get_mut(&listener) else { return };
        if entry.sockets != Sockets::Hybrid {
            return; // a listener closed and its id reused: nothing to do
        }
        if let Some(switch) = entry.overflow.busy(now) {
            self.switch_overflow(listener, switch);
        }
    }

    /// Windows that ended: the primary steps out where the queue is gone.
    pub(super) fn tick_overflows(&mut self, now: Instant) {
        let mut out = Vec::new();
        for listener in self.listeners.values_mut() {
            if let Some(switch) = listener.overflow.tick(now) {
                out.push((listener.id, switch));
            }
        }
        for (id, switch) in out {
            self.switch_overflow(id, switch);
        }
    }

    fn switch_overflow(&mut self, id: u32, switch: Switch) {
        let Some(listener) = self.listeners.get_mut(&id) else { return };
        if let Some(socket) = &listener.socket {
            let mut source = SourceFd(&socket.as_raw_fd());
            let registry = self.poll.registry();
            let watched = match switch {
                // Edge-triggered: ready now, so this turn's accept drains what is queued.
                Switch::Dispatch => registry.register(&mut source, token(KIND_LISTENER, id), Interest::READABLE),
                Switch::SelfAccept => registry.deregister(&mut source),
            };
            if let Err(e) = watched {
                // Not watched: the workers keep accepting themselves, which serves.
                eprintln!("rcluster: hybrid listener {id}: {e}");
                if switch == Switch::Dispatch {
                    listener.overflow = Default::default();
                    return;
                }
            }
        }
        listener.ready = switch == Switch::Dispatch;
        let frame = Frame::SelfAccept { listener: id, on: switch == Switch::SelfAccept }.encode();
        let members: Vec<u32> = self.workers.values().filter(|w| w.listening_on.contains(&id)).map(|w| w.id).collect();
        for worker in members {
            self.send_frame(worker, &frame, &[]);
        }
    }
}
