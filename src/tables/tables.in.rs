// The tables every layer derives its names, numbers and messages from: the
// Rust enums (`src/tables/mod.rs` expands this file), the C constants of
// `include/rcluster.h` (`build.rs` expands it into `#define`s), and through
// those the Python package (cffi reads the header) and the Node addon (it
// links the Rust enums). One row: `Variant = value, C_NAME, "text";`, with
// the doc comment both the Rust item and the C constant carry. The text is
// the error message for codes and the name every binding uses for the
// others (always the C name's suffix in lower case, checked by a test).
// Values are ABI: never renumber a row, only add.

tables! {
    /// What kind of failure an [`Error`](crate::Error) is; the negative C status `RCLUSTER_E_*`.
    enum Code: "error codes", message {
        /// A bad argument: NULL pointer, out-of-range value, malformed string.
        InvalidArgument = -1, RCLUSTER_E_INVAL, "invalid argument";
        /// A NULL, unknown, stale or already-freed handle.
        BadHandle = -2, RCLUSTER_E_HANDLE, "bad handle (NULL, unknown or freed)";
        /// The operating system refused; `rcluster_last_errno()` says why.
        Os = -3, RCLUSTER_E_OS, "operating system error";
        /// The wait ran out of time.
        Timeout = -4, RCLUSTER_E_TIMEOUT, "timed out";
        /// Non-blocking call: nothing is ready yet; poll the object's fd and retry.
        WouldBlock = -5, RCLUSTER_E_AGAIN, "nothing ready yet";
        /// Closed: the peer hung up, the primary is gone, or the object was closed.
        Closed = -6, RCLUSTER_E_CLOSED, "closed";
        /// The peer sent something that is not a valid frame.
        Protocol = -7, RCLUSTER_E_PROTOCOL, "protocol error";
        /// A record or its descriptors were truncated; every fd that arrived was closed.
        Truncated = -8, RCLUSTER_E_TRUNCATED, "message or descriptors truncated";
        /// An address could not be parsed, bound or listened on; `rcluster_last_errno()` says why.
        Address = -9, RCLUSTER_E_ADDR, "address error";
        /// Not valid in the current state (not a worker, shut down, threads exist).
        State = -10, RCLUSTER_E_STATE, "not valid in the current state";
        /// A panic inside the library was caught at the boundary (a bug: please report it).
        Panic = -11, RCLUSTER_E_PANIC, "internal panic";
        /// A message or an fd list is larger than the protocol allows.
        TooBig = -12, RCLUSTER_E_TOOBIG, "too big";
        /// This worker is leaving: it was asked to disconnect (accept returns
        /// what was already queued for it, then this), or the cluster is
        /// shutting down (a listen is refused with this). Not a failure: finish
        /// what you hold and exit.
        Leaving = -13, RCLUSTER_E_LEAVING, "the worker is leaving";
    }

/// What an event reports (`rcluster_event.kind`, `RCLUSTER_EVENT_*`).
    enum EventKind: "event kinds", name {
        /// Primary: a worker process was started.
        Fork = 1, RCLUSTER_EVENT_FORK, "fork";
        /// Primary: a worker opened its channel (Node's `online`).
        Online = 2, RCLUSTER_EVENT_ONLINE, "online";
        /// Primary: a worker is served connections of `address`:`port`.
        Listening = 3, RCLUSTER_EVENT_LISTENING, "listening";
        /// Both sides: a message arrived; its bytes are in `data`/`len`.
        Message = 4, RCLUSTER_EVENT_MESSAGE, "message";
        /// Primary: a worker's channel closed. Worker: the primary asks this worker
        /// to finish what it holds and leave (accept returns the connections
        /// already queued, then `RCLUSTER_E_LEAVING`).
        Disconnect = 5, RCLUSTER_EVENT_DISCONNECT, "disconnect";
        /// Primary: a worker process ended (`exit_code` or `signal`; `flags` may
        /// hold `RCLUSTER_EXIT_AFTER_DISCONNECT`).
        Exit = 6, RCLUSTER_EVENT_EXIT, "exit";
        /// Primary: a worker broke the protocol and was cut off; the reason is in `data`.
        WorkerError = 7, RCLUSTER_EVENT_WORKER_ERROR, "worker_error";
        /// Primary: the shutdown is complete; no worker is left, listeners are closed.
        Shutdown = 8, RCLUSTER_EVENT_SHUTDOWN, "shutdown";
        /// Worker: the primary is gone; further event calls return `RCLUSTER_E_CLOSED`.
        PrimaryGone = 9, RCLUSTER_EVENT_PRIMARY_GONE, "primary_gone";
        /// Primary: slot `slot` crash-looped (too many unexpected exits within the
        /// window); it is not restarted until a reload or a scale. The others keep serving.
        CrashLoop = 10, RCLUSTER_EVENT_CRASH_LOOP, "crash_loop";
        /// Primary: a worker did not answer the heartbeat in time; it is killed and replaced.
        Unresponsive = 11, RCLUSTER_EVENT_UNRESPONSIVE, "unresponsive";
        /// Primary: a rolling reload finished; every slot runs generation `generation`.
        ReloadDone = 12, RCLUSTER_EVENT_RELOAD_DONE, "reload_done";
        /// Primary: a rolling reload of `generation` stopped because a replacement did
        /// not become ready (reason in `data`); workers not yet replaced keep serving.
        ReloadFailed = 13, RCLUSTER_EVENT_RELOAD_FAILED, "reload_failed";
        /// Primary: a worker for `slot` could not be started (out of fds or
        /// processes, the program missing); the reason and the retry time are in
        /// `data`. Not a crash: the slot keeps retrying with a growing delay.
        SpawnFailed = 14, RCLUSTER_EVENT_SPAWN_FAILED, "spawn_failed";
        /// Primary: a new primary (`pid`), started on SIGUSR2, took over the
        /// listening sockets and its workers listen; this one stops gracefully.
        Upgraded = 15, RCLUSTER_EVENT_UPGRADED, "upgraded";
        /// Primary: the new primary did not take over (the reason is in `data`);
        /// it was stopped and this one keeps serving.
        UpgradeFailed = 16, RCLUSTER_EVENT_UPGRADE_FAILED, "upgrade_failed";
    }

/// Where a worker is in its life, as stats report it (`RCLUSTER_WORKER_*`).
    enum WorkerState: "worker states", name {
        /// Worker state in `rcluster_worker_stats`: started, not yet online.
        Starting = 0, RCLUSTER_WORKER_STARTING, "starting";
        /// Online (channel open), not yet listening.
        Online = 1, RCLUSTER_WORKER_ONLINE, "online";
        /// Listening: it is handed connections.
        Listening = 2, RCLUSTER_WORKER_LISTENING, "listening";
        /// Leaving: asked to go, or going on its own; no new connections.
        Leaving = 3, RCLUSTER_WORKER_LEAVING, "leaving";
        /// Its channel closed; not yet reaped.
        Disconnected = 4, RCLUSTER_WORKER_DISCONNECTED, "disconnected";
    }

/// Which scheduling policy a primary uses (`RCLUSTER_POLICY_*`).
    enum PolicyKind: "scheduling policies", name {
        /// Policy `rr` (the default): the primary accepts and hands each connection
        /// to the next worker in turn; a connection is the primary's until the
        /// worker acknowledges it.
        RoundRobin = 0, RCLUSTER_POLICY_RR, "rr";
        /// Policy `shared`: the listening socket is given to the workers, which
        /// accept themselves; the kernel decides which worker gets a connection.
        Shared = 1, RCLUSTER_POLICY_SHARED, "shared";
        /// Policy `reuseport`: each worker gets its own `SO_REUSEPORT` socket and
        /// accepts itself; the kernel spreads connections by a hash of the peer.
        /// Connections queued on a crashed worker's socket are lost unless
        /// `net.ipv4.tcp_migrate_req` is 1; a worker asked to leave takes what is
        /// queued first.
        ReusePort = 2, RCLUSTER_POLICY_REUSEPORT, "reuseport";
        /// Policy `least`: the primary accepts and hands each connection to the
        /// worker holding the fewest (unacknowledged, plus accepted and not yet
        /// reported finished with `rcluster_worker_done`); ties go to the worker
        /// picked last (still warm), then to the ones after it in turn.
        LeastLoaded = 3, RCLUSTER_POLICY_LEAST, "least";
        /// Policy `hybrid`: every worker gets the listening socket and accepts
        /// itself while the load is light (one wake-up, no hop through the
        /// primary); when connections queue on it, the primary accepts and
        /// hands them over as `least` does until the queue is gone.
        Hybrid = 4, RCLUSTER_POLICY_HYBRID, "hybrid";
    }
}
