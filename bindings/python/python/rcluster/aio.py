"""asyncio integration: servers in workers, events on both sides.

Everything here watches the library's pollable fds with ``loop.add_reader``
and takes what is ready with non-blocking calls: no busy loop, no thread
per connection. Accepted connections enter asyncio through
``loop.connect_accepted_socket``, so streams, protocols and TLS work as
with ``asyncio.start_server``/``loop.create_server``::

    async def handle(reader, writer):
        ...

    async def main():
        server = await rcluster.aio.start_server(handle, "127.0.0.1", 8080)
        async with server:
            await server.serve_forever()   # returns when the primary asks us to leave
        rcluster.worker().close()
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union

from ._errors import WouldBlock
from ._events import Event
from ._source import EventSource
from ._worker import Listener, Worker, worker

__all__ = ["Server", "create_server", "start_server", "events", "run", "wait_readable"]

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Optional[Awaitable[None]]]

#: Connections taken per wakeup before yielding to the loop, so one busy
#: listener cannot starve other callbacks.
_ACCEPT_BATCH = 64


class Server:
    """A server over an rcluster :class:`~rcluster.Listener`, shaped like
    :class:`asyncio.Server`.

    It stops serving by itself when the primary asks this worker to leave
    (after accepting the connections already queued here) or the primary
    is gone; ``serve_forever()`` then returns, and ``wait_closed()`` waits
    for the connections it accepted to close.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: Listener,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        ssl: Any = None,
        ssl_handshake_timeout: Optional[float] = None,
    ) -> None:
        self._loop = loop
        self._listener = listener
        self._protocol_factory = protocol_factory
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._serving = False
        self._closed = loop.create_future()
        self._live: set[int] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        listener.setblocking(False)
        listener._stopped_by_owner = True  # we close ourselves when accept reports the end

    # ----- asyncio.Server's interface ---------------------------------

    @property
    def sockets(self) -> tuple[Listener, ...]:
        """The listener (while serving)."""
        return () if self._listener.closed else (self._listener,)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` served."""
        return self._listener.address

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        """Starts accepting (``create_server`` does it unless ``start_serving=False``)."""
        if self._serving or self._closed.done():
            return
        self._serving = True
        self._loop.add_reader(self._listener.fileno(), self._on_readable)

    async def serve_forever(self) -> None:
        """Serves until the primary asks this worker to leave (or is gone),
        or until cancelled (which closes the server, as asyncio's does)."""
        await self.start_serving()
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            self.close()
            raise

    def close(self) -> None:
        """Stops accepting; connections queued here go to other workers.
        Connections already accepted stay open."""
        if self._serving:
            self._loop.remove_reader(self._listener.fileno())
            self._serving = False
        self._listener.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        """Waits until the server is closed and every connection it accepted is closed."""
        await asyncio.shield(self._closed)
        await self._idle.wait()

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()

    # ----- accepting ------------------------------------------------------

    def _on_readable(self) -> None:
        # accept_many: what is queued in one call and one acknowledgement
        # (one connection per call under 'shared').
        taken = 0
        while taken < _ACCEPT_BATCH:
            try:
                batch = self._listener.accept_many(_ACCEPT_BATCH - taken)
            except WouldBlock:
                return
            except OSError:
                # Closed (asked to leave and drained, primary gone) or broken: stop.
                self.close()
                return
            taken += len(batch)
            for sock, _address in batch:
                task = self._loop.create_task(self._connect(sock))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _connect(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        created: list[asyncio.BaseProtocol] = []

        def factory() -> asyncio.BaseProtocol:
            protocol = self._protocol_factory()
            self._track(protocol)
            created.append(protocol)
            return protocol

        try:
            await self._loop.connect_accepted_socket(
                factory, sock, ssl=self._ssl, ssl_handshake_timeout=self._ssl_handshake_timeout
            )
        except BaseException:
            sock.close()
            for protocol in created:
                self._untrack(id(protocol))
            raise

    def _track(self, protocol: asyncio.BaseProtocol) -> None:
        key = id(protocol)
        original = protocol.connection_lost

        def connection_lost(exc: Optional[Exception]) -> None:
            try:
                original(exc)
            finally:
                self._untrack(key)

        try:
            protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        except AttributeError:
            return  # a protocol with __slots__: not counted by wait_closed
        self._live.add(key)
        self._idle.clear()

    def _untrack(self, key: int) -> None:
        self._live.discard(key)
        if not self._live:
            self._idle.set()

    def __repr__(self) -> str:
        host, port = self.address
        return f"<rcluster.aio.Server {host}:{port}{' serving' if self._serving else ''}>"


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: Optional[str] = None,
    port: int = 0,
    *,
    ssl: Any = None,
    ssl_handshake_timeout: Optional[float] = None,
    start_serving: bool = True,
    listen_timeout: Optional[float] = None,
) -> Server:
    """Like ``loop.create_server``, on an address served by the primary.
    ``host`` ``None`` or ``""``: all IPv4 interfaces. The listen request
    runs in the default executor (it waits for the primary's answer)."""
    loop = asyncio.get_running_loop()
    me = worker()
    listener = await loop.run_in_executor(
        None, lambda: me.listen((host or "", port), timeout=listen_timeout)
    )
    server = Server(loop, listener, protocol_factory, ssl, ssl_handshake_timeout)
    if start_serving:
        await server.start_serving()
    return server


async def start_server(
    client_connected_cb: ClientConnected,
    host: Optional[str] = None,
    port: int = 0,
    *,
    limit: int = 2**16,
    **kwds: Any,
) -> Server:
    """Like :func:`asyncio.start_server`: calls
    ``client_connected_cb(reader, writer)`` for every connection the primary
    hands this worker (a coroutine function is run as a task)."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, **kwds)


async def wait_readable(fd: int) -> None:
    """Waits until ``fd`` is readable, watching it with ``loop.add_reader``
    only for the time of the wait: nothing stays registered between waits,
    so an abandoned consumer leaves no reader behind (and no busy loop)."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await readable
    finally:
        loop.remove_reader(fd)


async def events(source: Optional[Union[EventSource, Worker]] = None) -> AsyncIterator[Event]:
    """Yields the events of ``source`` (a :class:`~rcluster.Primary`, or
    this process's worker by default) as they come, until the last one
    (included). Callbacks registered with ``source.on`` run for each.
    Breaking out of the loop is fine; run one consumer per source at a time."""
    source = worker() if source is None else source
    while not source.ended:
        event = source.next_event(0)
        if event is None:
            await wait_readable(source.fileno())
            continue
        yield event


async def run(source: Optional[Union[EventSource, Worker]] = None) -> None:
    """Takes the events of ``source`` (running its callbacks) until the last one."""
    async for _ in events(source):
        pass
