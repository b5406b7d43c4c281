//! What the host thread and the loop thread share: the event queue with
//! its byte and fd accounting, and the command queue that wakes the loop.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::Result;
use crate::event::{Event, EventQueue, Metrics, WorkerStats};
use crate::sys::Flag;

use super::WorkerInfo;

pub(crate) enum Command {
    Fork {
        env: Vec<(OsString, OsString)>,
        overrides: crate::spawn::SpawnOverrides,
        reply: mpsc::SyncSender<Result<(WorkerInfo, crate::spawn::StdioPipes)>>,
    },
    Listen {
        host: String,
        port: u16,
        reply: mpsc::SyncSender<Result<SocketAddr>>,
    },
    Send {
        worker: u32,
        data: Vec<u8>,
    },
    /// A message with file descriptors (duplicates the loop owns): a frame of its own.
    SendFds {
        worker: u32,
        data: Vec<u8>,
        fds: Vec<std::os::fd::OwnedFd>,
    },
    /// Messages `send_many` packed into frames on the host thread.
    SendFrames {
        worker: u32,
        frames: Vec<Vec<u8>>,
        /// How many messages the frames hold.
        count: usize,
    },
    Disconnect {
        worker: u32,
    },
    Kill {
        worker: u32,
        signal: i32,
    },
    HangUp {
        worker: u32,
    },
    Shutdown {
        grace: Duration,
    },
    Reload {
        reply: mpsc::SyncSender<Result<u32>>,
    },
    Scale {
        workers: u32,
        reply: mpsc::SyncSender<Result<()>>,
    },
    Stats {
        reply: mpsc::SyncSender<Vec<WorkerStats>>,
    },
    Metrics {
        reply: mpsc::SyncSender<Metrics>,
    },
}

/// What the host thread and the loop thread share.
pub(crate) struct Shared {
    pub(super) events: ManuallyDrop<EventQueue<Event>>,
    pub(super) commands: Mutex<VecDeque<Command>>,
    /// Readable while commands wait; watched by the loop.
    pub(super) wake: ManuallyDrop<Flag>,
    /// Workers whose channel is open (for send()'s synchronous check), with
    /// the bytes queued for each: in commands not yet taken by the loop,
    /// plus in its outbox (the loop adds and takes away its part).
    pub(super) connected: Mutex<HashMap<u32, Arc<AtomicUsize>>>,
    /// Bytes of worker messages in the event queue not yet taken by the host.
    pub(super) event_bytes: AtomicUsize,
    /// File descriptors of worker messages in the event queue not yet taken.
    pub(super) event_fds: AtomicUsize,
    /// The loop stopped reading worker channels (`max_event_bytes`): the
    /// host wakes it when it has taken half.
    pub(super) reads_paused: AtomicBool,
    pub(super) max_send_queue: usize,
    pub(super) max_event_bytes: usize,
    pub(super) max_event_fds: usize,
    /// The loop has finished (after shutdown).
    pub(super) stopped: AtomicBool,
    /// This process is a raw-forked child: the fds above were closed by hand.
    pub(super) in_child: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !self.in_child.load(Ordering::SeqCst) {
            // SAFETY: dropped exactly once, here, and only when fork_raw's
            // child path did not already close their fds.
            unsafe {
                ManuallyDrop::drop(&mut self.events);
                ManuallyDrop::drop(&mut self.wake);
            }
        }
    }
}

impl Shared {
    pub(crate) fn emit(&self, event: Event) {
        if let Event::Message { data, fds, .. } = &event {
            self.event_bytes.fetch_add(data.len(), Ordering::Relaxed);
            if !fds.is_empty() {
                self.event_fds.fetch_add(fds.len(), Ordering::Relaxed);
            }
        }
        self.events.push(event);
    }

    /// Emits worker messages (counted against `max_event_bytes`).
    pub(crate) fn emit_messages(&self, worker: u32, pid: i32, messages: Vec<Vec<u8>>) {
        let bytes: usize = messages.iter().map(Vec::len).sum();
        self.event_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.events.push_many(messages.into_iter().map(|data| Event::Message { worker, pid, data, fds: Vec::new() }));
    }

    /// Whether the host has fallen so far behind that the loop must stop
    /// reading workers' messages.
    pub(crate) fn events_over_limit(&self) -> bool {
        self.event_bytes.load(Ordering::Relaxed) > self.max_event_bytes
            || self.event_fds.load(Ordering::Relaxed) > self.max_event_fds
    }

    /// The host took `event`: count its bytes off, and wake a paused loop
    /// once half the limit is free again.
    pub(super) fn taken(&self, event: &Event) {
        if let Event::Message { data, fds, .. } = event {
            let left = self.event_bytes.fetch_sub(data.len(), Ordering::Relaxed) - data.len();
            let fds_left = match fds.len() {
                0 => self.event_fds.load(Ordering::Relaxed),
                n => self.event_fds.fetch_sub(n, Ordering::Relaxed) - n,
            };
            if left <= self.max_event_bytes / 2
                && fds_left <= self.max_event_fds / 2
                && self.reads_paused.swap(false, Ordering::SeqCst)
            {
                self.wake.set();
            }
        }
    }

    /// Queues a command for the loop and wakes it; false once it has stopped.
    pub(super) fn submit(&self, command: Command) -> bool {
        if self.stopped.load(Ordering::SeqCst) {
            return false;
        }
        let mut commands = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        if commands.is_empty() {
            self.wake.set();
        }
        commands.push_back(command);
        true
    }

    pub(super) fn lock_connected(&self) -> MutexGuard<'_, HashMap<u32, Arc<AtomicUsize>>> {
        self.connected.lock().unwrap_or_else(|p| p.into_inner())
    }
}
