//! A primary's settings: [`Config`] and the [`Limits`] it carries, with
//! their defaults and validation.

use std::time::Duration;

use crate::error::{Code, Error, Result};
use crate::spawn::SpawnSpec;

use super::{PolicyKind, Supervision};

/// How a primary behaves. `Config::default()` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// How workers are started (argv, environment, cwd).
    pub spawn: SpawnSpec,
    /// The scheduling policy.
    pub policy: PolicyKind,
    /// Connections a worker may hold handed-over but not yet acknowledged
    /// (its credit). Lower is fairer, higher pipelines more. Default 8.
    pub max_unacked: u32,
    /// Connections the primary may hold accepted but not yet handed over.
    /// When full, it stops accepting and the kernel's backlog holds the rest.
    /// Default 1024.
    pub max_pending: u32,
    /// listen(2) backlog of the sockets the primary binds. Default 511.
    pub backlog: i32,
    /// How long a worker asked to disconnect may take before SIGTERM, and
    /// again before SIGKILL. Default 10 s.
    pub stop_timeout: Duration,
    /// Handle SIGTERM and SIGINT (graceful shutdown), SIGHUP (rolling
    /// reload), SIGTTIN and SIGTTOU (one worker more or less). Default off:
    /// the host's signals are the host's.
    pub handle_signals: bool,
    /// Restarts, reloads, heartbeat, recycling.
    pub supervision: Supervision,
    /// A worker holding a handed-over connection unacknowledged this long
    /// is treated as hung: it is killed (an `Unresponsive` event says so),
    /// its connections go to other workers once it is reaped, and its slot
    /// restarts it. `None`: no deadline. Default 30 s.
    pub ack_timeout: Option<Duration>,
    /// What workers may ask of the primary, and how much it queues.
    pub limits: Limits,
    /// Allow a primary in a process that was started as a worker. Off by
    /// default: a program that forgets to check `is_worker` would otherwise
    /// have every worker start workers of its own (a fork bomb).
    pub allow_nested: bool,
    /// Serve Prometheus metrics (`GET /metrics`) and a health check
    /// (`GET /healthz`: 200 only while the cluster serves) on this
    /// `HOST:PORT`, from a thread of their own. `None` (default): no endpoint.
    pub metrics_address: Option<String>,
    /// Speak systemd's protocols (see `systemd.rs`): take the listening
    /// sockets passed with `LISTEN_FDS` for their addresses instead of
    /// binding, and report readiness, reloads and the stop to
    /// `NOTIFY_SOCKET`. Default on: without those variables it does nothing.
    pub systemd: bool,
    /// Accept file descriptors attached to workers' messages (they come
    /// with `Event::Message`). Default off: a worker that attaches any is
    /// cut off (`WorkerError`) and they are closed, since a host that does
    /// not expect them would leave them to the event's drop.
    pub message_fds: bool,
}

/// Bounds on what workers may ask of the primary and on what it queues.
/// `Default` gives the documented defaults; each must be at least 1.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Listeners workers' listen requests may have the primary bind, in all.
    /// Beyond it a listen request for a new address fails with `EMFILE`.
    /// Default 1024.
    pub max_listeners: u32,
    /// Listeners one worker may hold. Default 64.
    pub max_listeners_per_worker: u32,
    /// A listener bound for workers' requests that no live worker has used
    /// for this long is closed (long enough that restarts and reloads keep
    /// it; listeners the host declared with `Primary::listen` stay open).
    /// Default 60 s.
    pub listener_idle: Duration,
    /// Bytes of messages queued for one worker that is not reading its
    /// channel; past it `send` fails with `TooBig` and sends nothing.
    /// Default 64 MiB.
    pub max_send_queue: usize,
    /// Bytes of worker messages waiting in the event queue for the host;
    /// past it the primary stops reading workers' channels (they wait,
    /// nothing is dropped) until the host has taken half. Default 64 MiB.
    pub max_event_bytes: usize,
    /// Largest message a worker may send; a larger one is a protocol
    /// error that cuts the worker off. At most (and by default)
    /// `channel::MAX_MESSAGE`.
    pub max_message: usize,
    /// File descriptors of worker messages waiting in the event queue for
    /// the host (`Config::message_fds`); past it the primary stops reading
    /// workers' channels, as for `max_event_bytes`, so a worker cannot make
    /// the primary run out of fds. Default 256.
    pub max_event_fds: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_listeners: 1024,
            max_listeners_per_worker: 64,
            listener_idle: Duration::from_secs(60),
            max_send_queue: 64 << 20,
            max_event_bytes: 64 << 20,
            max_message: crate::channel::MAX_MESSAGE,
            max_event_fds: 256,
        }
    }
}

impl Config {
    /// Refuses settings that cannot work: nothing would ever be accepted
    /// or handed out, or healthy workers would be killed.
    pub fn validate(&self) -> Result<()> {
        let refuse = |what: &str| Err(Error::new(Code::InvalidArgument, what.to_owned()));
        let s = &self.supervision;
        let l = &self.limits;
        if self.max_unacked == 0 {
            return refuse("max_unacked must be at least 1 (no worker could be handed a connection)");
        }
        if self.max_pending == 0 {
            return refuse("max_pending must be at least 1 (the primary would never accept a connection)");
        }
        if s.heartbeat_interval.is_some_and(|i| i.is_zero()) {
            return refuse("heartbeat_interval must be above 0 (leave it unset for no heartbeat)");
        }
        if s.heartbeat_timeout.is_zero() {
            return refuse("heartbeat_timeout must be above 0 (every worker would be killed as hung)");
        }
        if self.ack_timeout.is_some_and(|t| t.is_zero()) {
            return refuse("ack_timeout must be above 0 (leave it unset for no deadline)");
        }
        if !(s.restart_backoff.is_finite() && s.restart_backoff >= 1.0) {
            return refuse("restart_backoff must be a number >= 1");
        }
        if l.max_listeners == 0 || l.max_listeners_per_worker == 0 {
            return refuse("max_listeners and max_listeners_per_worker must be at least 1");
        }
        if l.max_send_queue == 0 || l.max_event_bytes == 0 || l.max_event_fds == 0 {
            return refuse("max_send_queue, max_event_bytes and max_event_fds must be at least 1");
        }
        if l.max_message == 0 || l.max_message > crate::channel::MAX_MESSAGE {
            return refuse("max_message must be between 1 and the channel's limit (256 MiB)");
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            spawn: SpawnSpec { own_process_group: true, ..SpawnSpec::default() },
            policy: PolicyKind::RoundRobin,
            max_unacked: 8,
            max_pending: 1024,
            backlog: 511,
            stop_timeout: Duration::from_secs(10),
            handle_signals: false,
            supervision: Supervision::default(),
            ack_timeout: Some(Duration::from_secs(30)),
            limits: Limits::default(),
            allow_nested: false,
            systemd: true,
            metrics_address: None,
            message_fds: false,
        }
    }
}
