"""The primary: starts workers, owns the listening sockets, reports events.

A thin layer over ``rcluster_primary_*``. The dispatch loop itself runs on
the library's own thread, so a busy Python thread never stalls it; Python
only pulls events (``Primary.next_event``, iteration, callbacks, or
:mod:`rcluster.aio`) and sends commands.
"""

from __future__ import annotations

import dataclasses

import json
import os
import signal as _signal
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from ._errors import BadHandle, Closed, InvalidArgument, StateError, Timeout, check
from ._events import Event, EventKind, fd_numbers
from ._ffi import CStrArray, Deadline, cstr, cstr_array, ffi, lib
from ._source import EventSource

__all__ = ["Primary", "WorkerInfo", "WorkerStats", "POLICIES", "default_argv"]


def _policies() -> dict[str, int]:
    """Policy name -> ``RCLUSTER_POLICY_*`` value, read from the header, so a
    policy added to the C library is accepted here without a change."""
    found: dict[str, int] = {}
    for name in dir(lib):
        if name.startswith("RCLUSTER_POLICY_"):
            key = name[len("RCLUSTER_POLICY_"):].lower()
            found[key] = getattr(lib, name)
            found[key.replace("_", "-")] = getattr(lib, name)
    return found


#: The scheduling policies the bundled library knows, by name.
POLICIES: Mapping[str, int] = _policies()


def default_argv() -> list[str]:
    """The argv workers run by default: this interpreter with the arguments
    it was started with (``-m module``, ``-X`` flags and the script included),
    as Node uses ``process.execPath`` + ``execArgv`` + ``argv``."""
    orig = getattr(sys, "orig_argv", None)
    if orig:
        return [sys.executable, *orig[1:]]
    return [sys.executable, *sys.argv]


@dataclass
class WorkerInfo:
    """What the primary knows of one worker, from the events taken so far."""

    #: The worker's id (>= 1, never reused within a primary).
    id: int
    #: Its process id.
    pid: int
    #: ``"forked"``, ``"online"``, ``"listening"``, ``"disconnected"`` or ``"exited"``.
    state: str = "forked"
    #: Its supervised slot (``None``: started outside the slots).
    slot: Optional[int] = None
    #: The reload generation it was started in (0 before any reload).
    generation: int = 0
    #: The ``(host, port)`` addresses it is served connections of.
    addresses: list[tuple[str, int]] = field(default_factory=list)
    #: Exit events: the exit code (``None`` if a signal ended it).
    exit_code: Optional[int] = None
    #: Exit events: the signal that ended it, or 0.
    signal: int = 0

    @property
    def is_connected(self) -> bool:
        """Whether its channel is open (messages can be sent to it)."""
        return self.state in ("forked", "online", "listening")


def _worker_states() -> dict[int, str]:
    return {
        getattr(lib, name): name[len("RCLUSTER_WORKER_"):].lower()
        for name in dir(lib)
        if name.startswith("RCLUSTER_WORKER_") and isinstance(getattr(lib, name), int)
    }


_WORKER_STATES = _worker_states()


@dataclass(frozen=True)
class WorkerStats:
    """One worker's numbers (:meth:`Primary.stats`)."""

    worker_id: int
    pid: int
    #: Its slot, or ``None`` for a worker outside the slots.
    slot: Optional[int]
    #: ``"starting"``, ``"online"``, ``"listening"``, ``"leaving"`` or ``"disconnected"``.
    state: str
    #: The reload generation it was started in.
    generation: int
    #: Restarts its slot has needed.
    restarts: int
    #: Connections handed to it so far.
    dispatched: int
    #: Connections handed to it and not yet acknowledged.
    in_flight: int
    #: Connections it accepted and has not closed yet; counted under the
    #: ``"least"`` policy only (else 0).
    active: int
    #: Seconds since it was started.
    uptime: float
    #: CPU time (user + system) its process has used, in seconds (from /proc).
    cpu: float = 0.0
    #: Its resident memory, in bytes (from /proc).
    rss_bytes: int = 0
    #: Application messages it sent the primary, and the primary sent it.
    messages_in: int = 0
    messages_out: int = 0

    @classmethod
    def from_c(cls, raw: Any) -> "WorkerStats":
        return cls(
            worker_id=int(raw.worker_id),
            pid=int(raw.pid),
            slot=None if raw.slot < 0 else int(raw.slot),
            state=_WORKER_STATES.get(raw.state, str(raw.state)),
            generation=int(raw.generation),
            restarts=int(raw.restarts),
            dispatched=int(raw.dispatched),
            in_flight=int(raw.in_flight),
            active=int(raw.active),
            uptime=raw.uptime_ms / 1000.0,
        )


_Bytes = Union[bytes, bytearray, memoryview]


class Primary(EventSource):
    """A cluster's primary: starts ``workers`` worker processes and serves
    their listening sockets.

    Workers run ``argv`` (default: this interpreter with this program's
    arguments, see :func:`default_argv`), with ``env`` added to their
    environment; in them ``rcluster.is_worker`` is true.

    Keyword options map onto the fields of ``rcluster_primary_options`` in
    ``rcluster.h``, so every setting of the C library is here, under the
    same name; a field ending in ``_ms`` is given in seconds without the
    suffix (``stop_timeout=10.0``, ``restart_delay=0.1``). Among them:
    ``policy`` (``"rr"`` or ``"shared"``), ``max_unacked``, ``max_pending``,
    ``backlog``, ``handle_signals`` (SIGTERM/SIGINT: graceful shutdown,
    SIGHUP: rolling reload, SIGTTIN/SIGTTOU: one worker more/less),
    ``own_process_group``; supervision: ``restart`` (replace workers that
    exit unasked; on by default), ``restart_delay``, ``restart_delay_max``,
    ``restart_backoff``, ``stable_after``, ``crash_loop_count``,
    ``crash_loop_window``, ``ready_timeout``, ``wait_ready``,
    ``reload_concurrency``, ``heartbeat_interval``, ``heartbeat_timeout``,
    ``recycle_after``, ``recycle_jitter``, ``max_memory_mb``; operations:
    ``metrics_address`` (``"HOST:PORT"``: Prometheus ``/metrics`` and
    ``/healthz``). An unknown option is a :class:`TypeError`.

    Use it as a context manager: entering starts the workers; leaving shuts
    the cluster down gracefully and waits until every worker has exited::

        with rcluster.Primary(workers=4) as primary:
            for event in primary:
                print(event)

    Events come from ``next_event``, iteration, callbacks (:meth:`on`) or
    :mod:`rcluster.aio`; the last event is ``"shutdown"``.
    """

    _last_kind = EventKind.SHUTDOWN

    def __init__(
        self,
        workers: Optional[int] = None,
        *,
        argv: Optional[Iterable[Union[str, bytes, "os.PathLike[str]"]]] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[Union[str, "os.PathLike[str]"]] = None,
        policy: Union[str, int] = "rr",
        handle_signals: bool = False,
        stop_timeout: Optional[float] = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if workers is not None and (not isinstance(workers, int) or workers < 0):
            raise InvalidArgument(lib.RCLUSTER_E_INVAL, f"workers must be an int >= 0, not {workers!r}")
        self._count = (os.cpu_count() or 1) if workers is None else workers
        self._lock = threading.Lock()
        self._workers: dict[int, WorkerInfo] = {}
        #: slot -> the last exit of a worker of that slot that never listened.
        self._failed_starts: dict[int, Event] = {}
        self._started = False
        self._handle: Any = ffi.NULL
        self.argv = [os.fsdecode(a) for a in (default_argv() if argv is None else argv)]
        if not self.argv:
            raise InvalidArgument(lib.RCLUSTER_E_INVAL, "argv is empty")
        self.env = dict(env or {})
        self.policy = self._policy_name(policy)

        raw = ffi.new("rcluster_primary_options *")
        check(lib.rcluster_primary_options_init2(raw, ffi.sizeof("rcluster_primary_options")))
        options["policy"] = POLICIES[self.policy] if isinstance(policy, str) else policy
        options["handle_signals"] = handle_signals
        if stop_timeout is not None:
            options["stop_timeout"] = stop_timeout
        # A string option: kept alive until rcluster_primary_new2 copies it.
        metrics_address = options.pop("metrics_address", None)
        metrics_c = cstr(str(metrics_address)) if metrics_address is not None else ffi.NULL
        raw.metrics_address = metrics_c
        for name, value in options.items():
            _set_option(raw, name, value)
        # These must outlive rcluster_primary_new2, which copies the strings.
        argv_c = CStrArray(self.argv)
        env_c = CStrArray([f"{k}={v}" for k, v in self.env.items()])
        cwd_c = cstr(os.fsdecode(cwd)) if cwd is not None else ffi.NULL
        raw.argv, raw.env, raw.cwd = argv_c.array, env_c.array, cwd_c
        self.stop_timeout = raw.stop_timeout_ms / 1000.0
        #: Whether the library replaces workers that exit unasked (``restart`` option).
        self.restart = bool(getattr(raw, "restart", 0))
        out = ffi.new("rcluster_primary **")
        check(lib.rcluster_primary_new2(raw, out))
        self._handle = out[0]
        fd = ffi.new("int *")
        check(lib.rcluster_primary_fd(self._handle, fd))
        self._fd = fd[0]
        # Freeing shuts down and reaps every worker: done by close(), or at
        # the latest when this object is collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, lib.rcluster_primary_free, self._handle)

    @staticmethod
    def _policy_name(policy: Union[str, int]) -> str:
        if isinstance(policy, str):
            if policy not in POLICIES:
                known = ", ".join(sorted(k for k in POLICIES if "-" not in k))
                raise InvalidArgument(lib.RCLUSTER_E_INVAL, f"unknown policy {policy!r} (known: {known})")
            return policy
        for name, value in POLICIES.items():
            if value == policy:
                return name
        return str(policy)

    def _h(self) -> Any:
        if self._handle == ffi.NULL:
            raise BadHandle(lib.RCLUSTER_E_HANDLE, "this Primary is closed")
        return self._handle

    # ----- lifecycle ----------------------------------------------------

    def start(self) -> "Primary":
        """Starts the configured number of workers (once). Returns self."""
        with self._lock:
            if self._started:
                return self
            self._started = True
        for _ in range(self._count):
            self.fork()
        return self

    def __enter__(self) -> "Primary":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._handle != ffi.NULL and not self.ended:
                self.shutdown()
                self.run()
        finally:
            self.close()

    def close(self) -> None:
        """Frees the primary. If it has not shut down, shuts it down first
        (grace: the stop timeout) and waits until every worker has exited
        and been reaped. Events not yet taken are lost. Idempotent."""
        handle, self._handle = self._handle, ffi.NULL
        if handle != ffi.NULL:
            self._finalizer.detach()
            check(lib.rcluster_primary_free(handle))

    @property
    def closed(self) -> bool:
        return bool(self._handle == ffi.NULL)

    def fileno(self) -> int:
        """An fd readable while events wait (for selectors, ``add_reader``).
        The primary owns it: do not close or read it."""
        self._h()
        return int(self._fd)

    def _next_raw(self, raw: Any) -> int:
        return int(lib.rcluster_primary_next_event(self._h(), raw))

    # ----- workers --------------------------------------------------------

    def fork(self, env: Optional[Mapping[str, str]] = None) -> WorkerInfo:
        """Starts one more worker, with ``env`` added to its environment.
        Returns once the process exists; a ``"fork"`` event follows."""
        keep = cstr_array([f"{k}={v}" for k, v in env.items()]) if env else None
        worker_id = ffi.new("uint32_t *")
        pid = ffi.new("int32_t *")
        check(lib.rcluster_primary_fork(self._h(), keep.array if keep else ffi.NULL, worker_id, pid))
        info = WorkerInfo(id=worker_id[0], pid=pid[0])
        with self._lock:
            self._workers.setdefault(info.id, info)
        return info

    @property
    def workers(self) -> dict[int, WorkerInfo]:
        """The workers not known to have exited, by id (as of the events taken)."""
        with self._lock:
            return {i: w for i, w in self._workers.items() if w.state != "exited"}

    def send(self, worker_id: int, data: _Bytes, fds: Optional[Sequence[Any]] = None) -> None:
        """Sends ``data`` to worker ``worker_id`` (copied, queued; never
        blocks). :class:`~rcluster.Closed` if it is not connected.

        ``fds``: ``socket.socket`` objects or ints to attach (at most
        ``rcluster.MAX_FDS``). The caller keeps them (duplicates travel), so
        it may close its own at once; the worker finds them in ``event.fds``."""
        if isinstance(data, str):
            raise TypeError("send() takes bytes; use send_json() for objects, or encode the text")
        buf = ffi.from_buffer(data)
        if fds is None:
            check(lib.rcluster_primary_send(self._h(), worker_id, buf, len(buf)))
            return
        numbers = fd_numbers(fds)
        check(lib.rcluster_primary_send_fds(self._h(), worker_id, buf, len(buf), numbers, len(numbers)))

    def send_json(self, worker_id: int, obj: Any) -> None:
        """Sends ``obj`` as JSON (the worker reads it with ``event.json()``)."""
        self.send(worker_id, json.dumps(obj, separators=(",", ":")).encode())

    def broadcast(self, data: _Bytes) -> int:
        """Sends ``data`` to every connected worker; returns how many got it."""
        sent = 0
        for info in list(self.workers.values()):
            try:
                self.send(info.id, data)
                sent += 1
            except Closed:
                pass
        return sent

    def disconnect(self, worker_id: int) -> None:
        """Asks a worker to finish what it holds and leave: it gets no new
        connections; after the stop timeout it gets SIGTERM, then SIGKILL."""
        check(lib.rcluster_primary_disconnect(self._h(), worker_id))

    def kill(self, worker_id: int, signal: int = _signal.SIGTERM) -> None:
        """Sends ``signal`` to a worker's process (ignored once it is reaped)."""
        check(lib.rcluster_primary_kill(self._h(), worker_id, int(signal)))

    def listen(self, address: Union[tuple[str, int], int]) -> int:
        """Binds a listener up front; workers listening on the same address,
        or on the port returned, share it. Returns the bound port."""
        from ._worker import split_address

        host, port = split_address(address)
        bound = ffi.new("uint16_t *")
        check(lib.rcluster_primary_listen(self._h(), cstr(host), port, bound))
        return int(bound[0])

    def shutdown(self, grace: Optional[float] = None) -> None:
        """Starts a graceful shutdown and returns at once: connections already
        accepted are handed out, listeners close, every worker is asked to
        leave (SIGTERM after ``grace`` seconds, default the stop timeout,
        SIGKILL after as long again). A ``"shutdown"`` event marks the end
        (``run()`` waits for it). Idempotent."""
        ms = int((self.stop_timeout if grace is None else grace) * 1000)
        check(lib.rcluster_primary_shutdown(self._h(), max(0, ms)))

    # ----- supervision -------------------------------------------------

    def reload(self) -> int:
        """Starts a zero-downtime rolling reload and returns at once: slot by
        slot (``reload_concurrency`` at a time) a replacement starts, and once
        it is ready the old worker is asked to leave gracefully; listeners
        stay open throughout. Returns the generation the new workers carry.
        Ends with a ``"reload_done"`` or ``"reload_failed"`` event."""
        generation = ffi.new("uint32_t *")
        check(lib.rcluster_primary_reload(self._h(), generation))
        return int(generation[0])

    def scale(self, workers: int) -> None:
        """Sets the number of workers: starts new ones, or asks the newest
        to leave gracefully."""
        if not isinstance(workers, int) or workers < 0:
            raise InvalidArgument(lib.RCLUSTER_E_INVAL, f"workers must be an int >= 0, not {workers!r}")
        check(lib.rcluster_primary_scale(self._h(), workers))
        self._count = workers

    def stats(self) -> list[WorkerStats]:
        """The primary's numbers for each of its workers, as of now (read
        from the dispatch loop, not from the events taken)."""
        count = ffi.new("size_t *")
        capacity = 0
        while True:
            buf = ffi.new("rcluster_worker_stats[]", capacity) if capacity else ffi.NULL
            check(lib.rcluster_primary_stats(self._h(), buf, capacity, count))
            if count[0] <= capacity:
                return [self._with_usage(WorkerStats.from_c(buf[i])) for i in range(count[0])]
            capacity = count[0] + 4  # workers may have been added meanwhile

    def _with_usage(self, stats: WorkerStats) -> WorkerStats:
        """``stats`` with the worker's CPU time, memory and message counts."""
        usage = ffi.new("rcluster_worker_usage *")
        usage.struct_size = ffi.sizeof("rcluster_worker_usage")
        if lib.rcluster_primary_worker_usage(self._h(), stats.worker_id, usage) != 0:
            return stats  # gone meanwhile
        return dataclasses.replace(
            stats,
            cpu=usage.cpu_ms / 1000.0,
            rss_bytes=int(usage.rss_bytes),
            messages_in=int(usage.messages_in),
            messages_out=int(usage.messages_out),
        )

    # ----- events -------------------------------------------------------

    def wait_listening(self, workers: Optional[int] = None, timeout: Optional[float] = None) -> tuple[str, int]:
        """Takes events (running callbacks) until ``workers`` workers (default:
        as many as were asked for) are listening; returns the ``(host, port)``
        they listen on (the OS-picked port when 0 was asked for).

        Raises :class:`~rcluster.StateError` if a slot crash-loops (for
        example every worker fails to bind), or, with ``restart=False``, if a
        worker exits first; :class:`~rcluster.Closed` if the cluster shuts
        down first; :class:`~rcluster.Timeout` after ``timeout`` seconds."""
        want = self._count if workers is None else workers
        deadline = Deadline(timeout)
        while True:
            with self._lock:
                listening = [w for w in self._workers.values() if w.state == "listening"]
            if listening and len(listening) >= want:
                return listening[-1].addresses[-1]
            event = self.next_event(deadline.left())
            if event is None:
                if deadline.expired():
                    raise Timeout(
                        lib.RCLUSTER_E_TIMEOUT, f"{len(listening)} of {want} workers listening after {timeout} s"
                    )
                continue
            if event.kind == EventKind.CRASH_LOOP:
                failed = self._failed_starts.get(event.slot) if event.slot is not None else None
                why = (
                    f": its workers exit before they listen (the last, worker {failed.worker_id} "
                    f"pid {failed.pid}, {_how_it_ended(failed)})"
                    if failed is not None else ""
                )
                raise StateError(
                    lib.RCLUSTER_E_STATE,
                    f"worker {event.worker_id} crash-looped before the cluster was ready "
                    f"(slot {event.slot}){why}",
                )
            if event.kind == EventKind.EXIT and not event.after_disconnect and not self.restart:
                raise StateError(
                    lib.RCLUSTER_E_STATE,
                    f"worker {event.worker_id} {_how_it_ended(event)} before the cluster was ready",
                )
            if event.kind == EventKind.SHUTDOWN:
                raise Closed(lib.RCLUSTER_E_CLOSED, "the cluster shut down before it was ready")

    def _observe(self, event: Event) -> None:
        with self._lock:
            if event.worker_id == 0:
                return
            info = self._workers.get(event.worker_id)
            if info is None:
                info = self._workers[event.worker_id] = WorkerInfo(id=event.worker_id, pid=event.pid)
            kind = event.kind
            if kind == EventKind.FORK:
                info.slot = event.slot
                info.generation = event.generation
            elif kind == EventKind.ONLINE and info.state == "forked":
                info.state = "online"
            elif kind == EventKind.LISTENING:
                info.state = "listening"
                if event.address is not None and event.address not in info.addresses:
                    info.addresses.append(event.address)
            elif kind == EventKind.DISCONNECT and info.state != "exited":
                info.state = "disconnected"
            elif kind == EventKind.EXIT:
                clean = event.after_disconnect and event.exit_code == 0
                if info.state != "listening" and info.slot is not None and not clean:
                    # Why a slot crash-loops, for wait_listening (one entry per
                    # slot). As the core judges it: a non-zero exit is a crash,
                    # even after the worker said goodbye.
                    self._failed_starts[info.slot] = event
                info.state = "exited"
                info.exit_code = event.exit_code
                info.signal = event.signal
                # Keep the table bounded over long runs: forget the dead.
                del self._workers[event.worker_id]

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("ended" if self.ended else "running")
        return f"<rcluster.Primary {state} policy={self.policy} workers={len(self.workers)}>"


def _how_it_ended(event: Event) -> str:
    if event.exit_code is not None:
        return f"exited with code {event.exit_code}"
    if event.signal:
        try:
            name = f" ({_signal.Signals(event.signal).name})"
        except ValueError:
            name = ""
        return f"was killed by signal {event.signal}{name}"
    return "exited"


def _set_option(raw: Any, name: str, value: Any) -> None:
    """Sets ``rcluster_primary_options.<name>`` (or ``<name>_ms`` from seconds)."""
    # struct_size is the library's to read, set by rcluster_primary_options_init2.
    fields = {n: f for n, f in ffi.typeof("rcluster_primary_options").fields if n != "struct_size"}
    if name in ("argv", "env", "cwd"):
        raise TypeError(f"{name} is a named parameter")
    if name in fields:
        c_name, scale = name, 1
    elif f"{name}_ms" in fields:
        c_name, scale = f"{name}_ms", 1000
    else:
        known = sorted(n[:-3] if n.endswith("_ms") else n for n in fields if n not in ("argv", "env", "cwd"))
        raise TypeError(f"unknown Primary option {name!r} (known: {', '.join(known)})")
    ctype = fields[c_name].type
    if ctype.kind != "primitive":
        raise TypeError(f"option {name!r} has C type {ctype.cname}, which this binding cannot set")
    if isinstance(value, bool):
        value = int(value)
    if scale != 1:
        value = round(float(value) * scale)
    try:
        setattr(raw, c_name, value)
    except (TypeError, OverflowError) as e:
        raise InvalidArgument(lib.RCLUSTER_E_INVAL, f"bad value {value!r} for option {name!r}: {e}") from None

