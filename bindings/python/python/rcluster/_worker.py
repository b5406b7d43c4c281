"""The worker side: listen through the primary, accept the connections it
hands over, exchange messages with it.

A :class:`Listener` quacks like a listening :class:`socket.socket` where the
standard library looks (``fileno``, ``accept``, ``close``, ``getsockname``,
timeouts, and no-op ``bind``/``listen``/``setsockopt``), so
``socketserver``, ``http.server`` and ``wsgiref`` servers serve from it
unchanged: see :meth:`Listener.attach` and :func:`make_server`.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import json
import logging
import socket
import os
import sys
import threading
import weakref
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from ._errors import BadHandle, Closed, InvalidArgument, StateError, Timeout, WouldBlock, check, last_error
from ._events import EventKind, fd_numbers
from ._ffi import Deadline, cstr, ffi, lib, wait_readable
from ._source import EventSource

__all__ = [
    "Worker",
    "Listener",
    "is_worker",
    "worker_id",
    "worker",
    "listen",
    "send",
    "send_json",
    "make_server",
    "split_address",
]

_log = logging.getLogger("rcluster")

Address = Union[tuple[str, int], tuple[str, int, int, int], int]


def is_worker() -> bool:
    """Whether this process was started as a worker (its environment names one)."""
    return bool(lib.rcluster_is_worker())


def worker_id() -> Optional[int]:
    """This worker's id (>= 1), or ``None`` in a primary or a plain process."""
    out = ffi.new("uint32_t *")
    return int(out[0]) if lib.rcluster_worker_id(out) == 0 else None


def split_address(address: Address) -> tuple[str, int]:
    """``(host, port)`` or a bare port -> the host string the C library
    takes (an IP literal, ``""`` for all IPv4 interfaces) and the port.
    Host names are resolved here, in the worker: the primary never resolves
    names, so a DNS lookup cannot stall its dispatch loop."""
    if isinstance(address, int):
        host, port = "", address
    elif isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
    else:
        raise InvalidArgument(lib.RCLUSTER_E_INVAL, f"address must be (host, port) or a port, not {address!r}")
    if host is None:
        host = ""
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgument(lib.RCLUSTER_E_INVAL, f"bad address {address!r}")
    if host not in ("", "localhost"):
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                raise InvalidArgument(lib.RCLUSTER_E_INVAL, f"cannot resolve {host!r}: {e}") from None
            host = str(infos[0][4][0])
    return host, port


def _bound_host(host: str) -> str:
    if host == "":
        return "0.0.0.0"
    if host == "localhost":
        return "127.0.0.1"
    return host.strip("[]")


class Worker(EventSource):
    """This process's side of the cluster (get it with :func:`rcluster.worker`).

    Events (``"message"``, ``"disconnect"``, ``"primary_gone"``) come from
    ``next_event``, iteration, callbacks (:meth:`on`) or :mod:`rcluster.aio`;
    the last one is ``"primary_gone"``. A ``"disconnect"`` event means the
    primary asks this worker to leave: its listeners return the connections
    already queued, then raise :class:`~rcluster.Leaving` (a :class:`~rcluster.Closed`).
    """

    _last_kind = EventKind.PRIMARY_GONE

    def __init__(self) -> None:
        super().__init__()
        out = ffi.new("rcluster_worker **")
        check(lib.rcluster_worker_open(out))
        # The library removed the worker variables from the C environment;
        # os.environ is Python's own copy, which subprocesses inherit: this
        # worker's children are ordinary processes, not workers.
        os.environ.pop("RCLUSTER_WORKER_ID", None)
        os.environ.pop("RCLUSTER_CHANNEL_FD", None)
        self._handle: Any = out[0]
        fd = ffi.new("int *")
        check(lib.rcluster_worker_fd(self._handle, fd))
        self._fd = fd[0]
        self.id: int = worker_id() or 0
        self._listeners: "weakref.WeakSet[Listener]" = weakref.WeakSet()
        self._disconnecting = False
        # Leave gracefully at exit (queued connections go to other workers).
        self._finalizer = weakref.finalize(self, lib.rcluster_worker_close, self._handle)

    def _h(self) -> Any:
        if self._handle == ffi.NULL:
            raise BadHandle(lib.RCLUSTER_E_HANDLE, "this Worker is closed")
        return self._handle

    def fileno(self) -> int:
        """An fd readable when an event may be waiting. Owned by the worker."""
        self._h()
        return int(self._fd)

    def _next_raw(self, raw: Any) -> int:
        return int(lib.rcluster_worker_next_event(self._h(), raw))

    def _observe(self, event: Any) -> None:
        if event.kind == EventKind.DISCONNECT:
            self._disconnecting = True

    @property
    def disconnecting(self) -> bool:
        """Whether a ``"disconnect"`` event was taken: the primary wants this worker to leave."""
        return self._disconnecting

    @property
    def closed(self) -> bool:
        return bool(self._handle == ffi.NULL)

    def listen(self, address: Address, *, timeout: Optional[float] = None) -> "Listener":
        """Asks the primary to listen on ``(host, port)`` (or a bare port: all
        IPv4 interfaces) and serve this worker its connections; waits up to
        ``timeout`` seconds for the answer. Port 0 gives an OS-picked port,
        as Node's cluster does: this worker's n-th listener on port 0 at a
        host shares one port with every other worker's n-th. A bind failure is
        an :class:`~rcluster.AddressError` whose ``errno`` says why."""
        host, port = split_address(address)
        out = ffi.new("rcluster_listener **")
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        check(lib.rcluster_worker_listen(self._h(), cstr(host), port, ms, out))
        listener = Listener(self, out[0], _bound_host(host))
        self._listeners.add(listener)
        return listener

    @property
    def reports_done(self) -> bool:
        """Whether the primary counts finished connections (its policy is
        load-aware, ``"least"``). Known once a listen has been answered;
        connections taken under other policies report nothing on close."""
        out = ffi.new("int *")
        check(lib.rcluster_worker_reports_done(self._h(), out))
        return bool(out[0])

    def _connection_done(self) -> None:
        """A connection taken from one of our listeners was closed."""
        handle = self._handle
        if handle != ffi.NULL:
            lib.rcluster_worker_done(handle, 1)  # best effort: the worker may be closing

    def ready(self) -> None:
        """Tells the primary this worker is ready to serve. Needed only when
        the primary was created with ``wait_ready=True``: then a replacement
        (reload, restart) counts as started, and the worker it replaces is
        stopped, only after this call."""
        check(lib.rcluster_worker_ready(self._h()))

    def send(self, data: Union[bytes, bytearray, memoryview], fds: Optional[Sequence[Any]] = None) -> None:
        """Sends ``data`` to the primary (a ``"message"`` event there); blocks
        while the channel is full.

        ``fds``: ``socket.socket`` objects or ints to attach (at most
        ``rcluster.MAX_FDS``); the caller keeps them. The primary takes them
        only if it was created with ``accept_message_fds=True``; otherwise
        it cuts this worker off."""
        if isinstance(data, str):
            raise TypeError("send() takes bytes; use send_json() for objects, or encode the text")
        buf = ffi.from_buffer(data)
        if fds is None:
            check(lib.rcluster_worker_send(self._h(), buf, len(buf)))
            return
        numbers = fd_numbers(fds)
        check(lib.rcluster_worker_send_fds(self._h(), buf, len(buf), numbers, len(numbers)))

    def send_json(self, obj: Any) -> None:
        """Sends ``obj`` as JSON (the primary reads it with ``event.json()``)."""
        self.send(json.dumps(obj, separators=(",", ":")).encode())

    def close(self) -> None:
        """Leaves the cluster gracefully: closes this worker's listeners
        (their queued connections go to other workers), says goodbye to the
        primary and closes the channel. Idempotent."""
        for listener in list(self._listeners):
            listener.close()
        handle, self._handle = self._handle, ffi.NULL
        if handle != ffi.NULL:
            self._finalizer.detach()
            check(lib.rcluster_worker_close(handle))

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<rcluster.Worker id={self.id}{' closed' if self.closed else ''}>"


_current: Optional[Worker] = None
_current_lock = threading.Lock()


def worker() -> Worker:
    """This process's :class:`Worker`, opened on first use (once per
    process). :class:`~rcluster.StateError` in a process that is not a worker."""
    global _current
    with _current_lock:
        if _current is None:
            if not is_worker():
                raise StateError(
                    lib.RCLUSTER_E_STATE, "this process is not an rcluster worker (RCLUSTER_WORKER_ID is not set)"
                )
            _current = Worker()
            _count_uncaught_exceptions_as_crashes()
        return _current


def _count_uncaught_exceptions_as_crashes() -> None:
    """A worker that dies of an uncaught exception (an import error, a
    failed ``listen``...) has not left on purpose, but at exit the Worker's
    finalizer would say a graceful goodbye, and the primary replaces a
    worker that left on purpose at once, without backoff or crash-loop
    detection: a failing worker would be restarted as fast as it can fail.
    So the goodbye is dropped when an exception ends the program (the
    channel then just hangs up, and the primary counts a crash)."""
    previous = sys.excepthook

    def excepthook(exc_type: Any, exc: Any, tb: Any) -> None:
        _abandon_current()
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook


def _abandon_current() -> None:
    """Lets this process exit without the graceful goodbye: its channel just
    hangs up, so the primary counts a crash (restart with backoff,
    crash-loop detection) instead of a worker that left on purpose. For a
    worker that failed to start (see ``_serve.fail_startup``)."""
    current = _current
    if current is None:
        return
    for listener in list(current._listeners):
        listener._finalizer.detach()
    current._finalizer.detach()


def listen(address: Address, *, timeout: Optional[float] = None) -> "Listener":
    """``rcluster.worker().listen(address)``: a :class:`Listener` served by the primary."""
    return worker().listen(address, timeout=timeout)


def send(data: Union[bytes, bytearray, memoryview], fds: Optional[Sequence[Any]] = None) -> None:
    """``rcluster.worker().send(data, fds)``: sends bytes (and fds) to the primary."""
    worker().send(data, fds)


def send_json(obj: Any) -> None:
    """``rcluster.worker().send_json(obj)``: sends an object as JSON to the primary."""
    worker().send_json(obj)


class _Connection(socket.socket):
    """A connection taken from a :class:`Listener`: a plain ``socket.socket``
    that, when it is really closed, tells the primary the connection is
    finished if the primary counts them (the load-aware ``least`` policy;
    under the others ``_worker`` is None and closing costs nothing extra).
    It hooks ``_real_close``, which both ``close()`` and the last
    ``makefile()`` reference go through."""

    _worker: Optional["Worker"] = None

    def _real_close(self, *args: Any, **kwargs: Any) -> None:
        super()._real_close(*args, **kwargs)  # type: ignore[misc]
        worker, self._worker = self._worker, None
        if worker is not None:
            worker._connection_done()


class Listener:
    """A listening address served through the primary.

    ``accept()`` returns ``(socket.socket, address)`` like a listening
    socket's, and honours ``settimeout``/``setblocking`` the same way
    (non-blocking: :class:`BlockingIOError`; timeout: :class:`TimeoutError`).
    ``fileno()`` is readable when ``accept`` may have a connection (a
    wakeup can be spurious: a non-blocking accept then raises
    :class:`BlockingIOError`, which servers tolerate). After the primary
    asked this worker to leave, ``accept`` returns the connections already
    queued, then raises :class:`~rcluster.Leaving` (a :class:`~rcluster.Closed`).
    """

    type = socket.SOCK_STREAM
    proto = socket.IPPROTO_TCP

    def __init__(self, worker: Worker, handle: Any, host: str) -> None:
        self._worker = worker
        self._handle = handle
        port = ffi.new("uint16_t *")
        check(lib.rcluster_listener_port(handle, port))
        fd = ffi.new("int *")
        check(lib.rcluster_listener_fd(handle, fd))
        self._fd = fd[0]
        self.address: tuple[str, int] = (host, int(port[0]))
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._timeout: Optional[float] = None
        self._done = False
        self._on_done: list[Callable[[], Any]] = []
        #: Set by servers that stop by themselves at the end (rcluster.aio's).
        self._stopped_by_owner = False
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, lib.rcluster_listener_close, handle)
        # Known now that this listen was answered; the policy never changes.
        self._done_to: Optional[Worker] = worker if worker.reports_done else None

    @property
    def port(self) -> int:
        """The bound port (the OS-picked one when 0 was asked for)."""
        return self.address[1]

    @property
    def closed(self) -> bool:
        return bool(self._handle == ffi.NULL)

    @property
    def done(self) -> bool:
        """Whether ``accept`` reported the end (worker asked to leave and
        queue drained, primary gone, or listener closed)."""
        return self._done

    def fileno(self) -> int:
        """An fd readable when ``accept`` may have a connection; -1 once closed."""
        return -1 if self.closed else self._fd

    def getsockname(self) -> tuple[str, int]:
        """``(host, port)`` bound by the primary."""
        return self.address

    # socket-like timeout handling ---------------------------------------

    def settimeout(self, timeout: Optional[float]) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = timeout

    def gettimeout(self) -> Optional[float]:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # what socketserver calls on its socket; the primary already did it ---

    def bind(self, address: Any) -> None:
        """No-op: the primary bound the address when the worker listened."""

    def listen(self, backlog: int = 0) -> None:
        """No-op: the primary listens (its ``backlog`` option sets the queue)."""

    def setsockopt(self, *args: Any) -> None:
        """No-op: options belong to the primary's socket."""

    def accept(self) -> tuple[socket.socket, Any]:
        """The next connection handed over by the primary, as
        ``(socket.socket, peer address)``. The socket is connected, blocking
        and yours to close."""
        return self._take(1)[0]

    def accept_many(self, max: int = 64) -> list[tuple[socket.socket, Any]]:
        """Up to ``max`` connections at once, as ``accept`` returns them:
        waits (per the timeout) for the first, then takes only what is
        already queued. The batch costs the primary one acknowledgement, not
        one per connection. Under ``shared`` (the workers accept on one
        socket) it returns one connection per call, so a slow worker cannot
        hoard the shared queue; under ``reuseport`` the socket is this
        worker's own and the batch goes up to ``max``."""
        if max < 1:
            raise ValueError("max must be at least 1")
        return self._take(max)

    def _take(self, max: int) -> list[tuple[socket.socket, Any]]:
        deadline: Optional[Deadline] = None
        fds = ffi.new("int[]", max)
        count = ffi.new("size_t *")
        while True:
            handle = self._handle
            if handle == ffi.NULL:
                raise Closed(lib.RCLUSTER_E_CLOSED, "the listener is closed")
            rc = lib.rcluster_listener_accept_many(handle, 0, fds, max, count)
            if rc == 0:
                taken = self._connections(list(fds[0 : count[0]]))
                if taken:
                    return taken
                continue  # every one was reset before we saw it: take the next
            if rc != lib.RCLUSTER_E_AGAIN:
                error = last_error(rc)
                unwatched = self._unwatch_from_event_loop()
                stopped = self._finish()
                if unwatched and not stopped and not self._stopped_by_owner:
                    _log.warning(
                        "rcluster: worker %s stops taking connections on %s:%d (%s); the asyncio "
                        "server serving this Listener no longer accepts, but nothing stops it, so "
                        "the primary will SIGTERM this worker after its stop timeout. Stop it with "
                        "listener.on_done(server.close), or serve with rcluster.aio.create_server / "
                        "rcluster.run_asgi, which stop by themselves.",
                        self._worker.id, *self.address, error.message,
                    )
                raise error
            if self._timeout == 0.0:
                raise WouldBlock(lib.RCLUSTER_E_AGAIN, "no connection is waiting", _errno.EAGAIN)
            if deadline is None:
                deadline = Deadline(self._timeout)
            if not wait_readable(self._fd, deadline.left()) and deadline.expired():
                raise Timeout(lib.RCLUSTER_E_TIMEOUT, "timed out")

    def _connections(self, fds: list[int]) -> list[tuple[socket.socket, Any]]:
        """``(socket, peer)`` for each accepted fd, skipping (and closing)
        those the peer already reset. Family, type and protocol are known,
        so a socket is made without asking the kernel. Should making one
        fail, every fd of the batch is closed before the error propagates:
        none is left open unowned."""
        taken: list[tuple[socket.socket, Any]] = []
        for index, fd in enumerate(fds):
            try:
                sock = _Connection(self.family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fd)
            except BaseException:
                for rest in fds[index:]:
                    _close_fd(rest)
                for made, _ in taken:
                    made.close()
                raise
            sock._worker = self._done_to
            try:
                taken.append((sock, sock.getpeername()))
            except OSError:
                sock.close()  # reset before we saw it
        return taken

    def _unwatch_from_event_loop(self) -> bool:
        """The end came (asked to leave and drained, primary gone): if an
        asyncio loop running on this thread watches our fd, stop it watching.

        ``fileno()`` stays readable after the end, so that any poller wakes
        up to see it; asyncio's own accept loop (``loop.create_server(sock=
        listener)``, uvicorn's ``sockets=``) would otherwise call ``accept``
        again at every turn of the loop, for ever. The reader can only be
        the code that is calling us (asyncio's, or :mod:`rcluster.aio`'s),
        since a loop's callbacks run on its thread. True if one was removed."""
        asyncio = sys.modules.get("asyncio")
        if asyncio is None or self._handle == ffi.NULL:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        try:
            return bool(loop.remove_reader(self._fd))
        except (ValueError, NotImplementedError, RuntimeError):
            # A loop that cannot watch fds (NotImplementedError), a closed
            # loop (RuntimeError) or an fd it never watched (ValueError):
            # nothing to stop, and the caller's shutdown goes on.
            return False

    def on_done(self, callback: Callable[[], Any]) -> None:
        """Calls ``callback()`` once, when ``accept`` reports the end (the
        worker was asked to leave and its queue is drained, or the primary is
        gone). At once if that already happened."""
        with self._lock:
            if not self._done:
                self._on_done.append(callback)
                return
        callback()

    def _finish(self) -> bool:
        """Marks the end and runs the ``on_done`` callbacks; True if there was one."""
        with self._lock:
            if self._done:
                return True
            self._done = True
            callbacks, self._on_done = self._on_done, []
        for callback in callbacks:
            callback()
        return bool(callbacks)

    def close(self) -> None:
        """Stops taking this address's connections (those queued here go to
        other workers). Idempotent."""
        with self._lock:
            handle, self._handle = self._handle, ffi.NULL
        if handle != ffi.NULL:
            self._finalizer.detach()
            check(lib.rcluster_listener_close(handle))

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def attach(self, server: Any) -> Any:
        """Makes a ``socketserver`` server (``http.server``, ``wsgiref``...)
        serve from this listener: replaces its socket, runs its
        ``server_bind``/``server_activate`` (which set ``server_address`` and
        the like; the socket calls are no-ops here), switches to non-blocking
        accept (a wakeup of ``fileno()`` may be spurious), and arranges that
        ``serve_forever()`` returns once the primary asks this worker to
        leave and the connections already queued are accepted. Each wake-up
        of ``serve_forever`` takes every connection queued then
        (:meth:`accept_many`), so ``handle_request`` may serve several.
        Returns the server.

        Create the server with ``bind_and_activate=False``."""
        old = getattr(server, "socket", None)
        if old is not None and old is not self:
            old.close()
        server.socket = self
        self.setblocking(False)
        server.server_address = self.address
        server.server_bind()
        server.server_activate()

        def stop_serving() -> None:
            # shutdown() waits for serve_forever to return, so it must not run
            # on the thread that calls accept (serve_forever's own).
            threading.Thread(target=server.shutdown, name="rcluster-drain", daemon=True).start()

        self.on_done(stop_serving)
        self._serve_in_batches(server)
        return server

    def _serve_in_batches(self, server: Any) -> None:
        """Each wake-up of ``serve_forever`` takes every connection already
        queued (``accept_many``: one acknowledgement to the primary for the
        batch) and hands each to the server as ``_handle_request_noblock``
        would have. A server without that method keeps calling ``accept``."""
        if not callable(getattr(server, "_handle_request_noblock", None)):
            return

        def handle_queued() -> None:
            try:
                taken = self.accept_many()
            except OSError:
                return  # as socketserver does when get_request fails
            for index, (request, client_address) in enumerate(taken):
                try:
                    if server.verify_request(request, client_address):
                        server.process_request(request, client_address)
                    else:
                        server.shutdown_request(request)
                except Exception:
                    server.handle_error(request, client_address)
                    server.shutdown_request(request)
                except BaseException:
                    server.shutdown_request(request)
                    for rest, _ in taken[index + 1 :]:
                        server.shutdown_request(rest)
                    raise

        server._handle_request_noblock = handle_queued

    def __repr__(self) -> str:
        host, port = self.address
        return f"<rcluster.Listener {host}:{port}{' closed' if self.closed else ''}>"


def _close_fd(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass


S = TypeVar("S")


def make_server(
    server_class: Callable[..., S],
    address: Address,
    handler_class: Any,
    *,
    timeout: Optional[float] = None,
    **kwargs: Any,
) -> S:
    """Builds a ``socketserver``-style server that serves from
    ``rcluster.listen(address)``::

        server = rcluster.make_server(http.server.ThreadingHTTPServer, ("127.0.0.1", 8080), Handler)
        server.serve_forever()   # returns when the primary asks this worker to leave
        server.server_close()

    ``kwargs`` go to ``server_class``; ``timeout`` bounds the listen request."""
    listener = listen(address, timeout=timeout)
    try:
        server = server_class(listener.address, handler_class, bind_and_activate=False, **kwargs)
        attached: S = listener.attach(server)
        return attached
    except BaseException:
        listener.close()
        raise
