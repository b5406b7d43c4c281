"""ASGI apps (FastAPI, Starlette, ...) on rcluster, with uvicorn in every worker.

::

    # main.py
    import rcluster
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/")
    def hello():
        return {"hello": "world"}

    if __name__ == "__main__":
        rcluster.run_asgi("main:app", workers=4, host="0.0.0.0", port=8000)

or, without a line of code, ``python -m rcluster.asgi main:app --workers 4
--host 0.0.0.0 --port 8000`` (uvicorn's spelling of those options).

The primary owns the listening socket and hands each connection to a worker
(``policy="rr"``, or ``"least"``: to the worker holding the fewest); each
worker runs an unmodified ``uvicorn.Server`` on the connections it is handed
(uvicorn's ``sockets=`` route, the one its gunicorn worker uses). Every
other keyword argument of :func:`run_asgi` is a ``uvicorn.Config`` option.

- **Lifespan**: each worker runs the app's lifespan startup before it is
  counted ready and shutdown after its last request.
- **SIGTERM/SIGINT** to the primary: graceful stop. Each worker stops
  taking connections once those already handed to it are accepted, answers
  the requests in flight (idle keep-alive connections are closed), runs the
  lifespan shutdown and exits; after ``stop_timeout`` it gets SIGTERM (and
  stops waiting), then SIGKILL.
- **SIGHUP**: rolling reload. One by one, a new worker starts, imports the
  app (the new code), runs its lifespan startup; only then is the old one
  stopped as above. Nothing is refused meanwhile.
- **A worker that cannot start** (import error, address in use, lifespan
  startup failed) exits as a crash: it is restarted with backoff, and if it
  keeps failing the cluster does not start and says why.
- Workers ignore SIGINT: a Ctrl-C in the terminal reaches the primary too,
  which stops them gracefully.

uvicorn runs on asyncio's own event loop here (``loop="asyncio"``): uvloop
cannot serve a socket it did not create. ``--reload`` (uvicorn's file
watcher) is not offered; send SIGHUP for a rolling reload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import sys
import threading
from typing import Any, Callable, Iterator, Mapping, Optional, Union

from ._serve import app_name, cluster_arguments, fail_startup, refuse_options, run_primary

__all__ = ["run_asgi", "main"]

log = logging.getLogger("uvicorn.error")

#: uvicorn.Config options that make no sense per worker here.
_REFUSED = {
    "reload": "use SIGHUP (a rolling reload) instead of uvicorn's reload",
    "workers": "pass workers= to run_asgi (uvicorn's own --workers would start its own processes)",
    "fd": "the primary listens; give host and port",
    "uds": "the primary listens on TCP; give host and port",
}


def run_asgi(
    app: Union[str, Callable[..., Any]],
    *,
    workers: Optional[int] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    policy: str = "rr",
    stop_timeout: float = 30.0,
    primary_options: Optional[Mapping[str, Any]] = None,
    on_ready: Optional[Callable[[str, int], Any]] = None,
    **uvicorn_options: Any,
) -> None:
    """Serves the ASGI ``app`` (an import string such as ``"main:app"``, or
    the app itself) on ``host:port`` with ``workers`` uvicorn workers
    (default: one per CPU), until SIGTERM/SIGINT. Returns after the graceful
    stop; raises :class:`SystemExit` (1) if the cluster cannot start.

    In the primary this starts the workers, which run this same program and
    serve when they reach this call. ``port=0`` picks a free port (logged,
    and passed to ``on_ready(host, port)``, called once every worker
    listens). ``policy``: ``"rr"`` (default) or ``"least"`` (the worker
    holding the fewest connections gets the next). ``stop_timeout``: seconds
    a stopping worker has before SIGTERM. ``primary_options``: more
    :class:`rcluster.Primary` options (``restart_delay``,
    ``crash_loop_count``, ``recycle_after``, ...). Every other keyword is a
    ``uvicorn.Config`` option (``log_level``, ``access_log``,
    ``proxy_headers``, ``timeout_keep_alive``, ``limit_max_requests``...)."""
    refuse_options("run_asgi", uvicorn_options, _REFUSED)
    loop = uvicorn_options.setdefault("loop", "asyncio")
    if loop != "asyncio":
        raise ValueError(
            f"run_asgi: loop={loop!r} is not supported: uvicorn serves rcluster's connections on "
            "asyncio's own event loop (uvloop can serve only a socket it created); use loop='asyncio'"
        )
    import rcluster

    if rcluster.is_worker:
        _serve_worker(app, host, port, uvicorn_options)
        return
    import uvicorn

    # Validates the options here, once, and sets up uvicorn's logging (the primary logs like uvicorn).
    uvicorn.Config(app, host=host, port=port, **uvicorn_options)
    run_primary(
        f"ASGI app {app_name(app)} (uvicorn)",
        host,
        workers=workers,
        policy=policy,
        stop_timeout=stop_timeout,
        primary_options=primary_options,
        on_ready=on_ready,
        log=log,
    )


def _serve_worker(app: Any, host: str, port: int, options: dict[str, Any]) -> None:
    import uvicorn

    import rcluster

    errors = _LastError()
    try:
        config = uvicorn.Config(app, host=host, port=port, **options)  # sets up logging: handler after
        log.addHandler(errors)
        # Import the app before listening: a worker that cannot load it fails
        # before it is counted as serving (uvicorn logs the error and exits).
        config.load()
    except SystemExit:
        fail_startup(errors.message or f"cannot load the ASGI app {app!r} (the worker's log has the error)")
    except Exception as e:  # noqa: BLE001
        log.error("rcluster: cannot load the ASGI app %r: %s", app, e)
        fail_startup(f"cannot load the ASGI app {app!r}: {e}")
    finally:
        log.removeHandler(errors)
    try:
        listener = rcluster.listen((host, port))
    except rcluster.Error as e:
        log.error("rcluster: %s", e.message)
        fail_startup(e.message)
    config.http_protocol_class = _noting_first_request(config.http_protocol_class)
    server = _server_class()(config, listener)
    try:
        server.run(sockets=[listener])  # type: ignore[list-item]  # a Listener is socket-shaped
    except SystemExit as e:
        if not server.started:  # the lifespan startup failed (uvicorn said why)
            fail_startup("the application's lifespan startup failed (the worker's log has the error)", 3)
        raise e
    rcluster.worker().close()


class _LastError(logging.Handler):
    """Keeps the last error uvicorn logs, to tell the primary why we failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage().splitlines()[0][:500]


_CLOSE_HEADER = (b"connection", b"close")


def _close_after(cycle: Any) -> None:
    """Makes a request whose response has not started yet the connection's
    last, and says so in the response ("Connection: close"): httptools adds
    the header when ``keep_alive`` is off, h11 when the request carried it."""
    if getattr(cycle, "response_started", True) or getattr(cycle, "response_complete", True):
        return
    cycle.keep_alive = False
    headers = getattr(cycle, "scope", {}).get("headers")
    if isinstance(headers, list) and _CLOSE_HEADER not in headers:
        headers.append(_CLOSE_HEADER)


def _idle_or_waiting(connection: Any) -> bool:
    """A connection uvicorn's shutdown would close under a client: it has no
    request in progress (none yet, or kept alive after a response)."""
    cycle = getattr(connection, "cycle", None)
    return cycle is None or bool(getattr(cycle, "response_complete", True))


def _noting_first_request(base: type) -> type:
    """uvicorn's HTTP protocol class (h11 or httptools), making every request
    that starts once the worker is leaving its connection's last (see
    ``WorkerServer.shutdown``): both keep the request in progress in
    ``self.cycle``."""

    class Protocol(base):  # type: ignore[misc, valid-type]
        @property
        def cycle(self) -> Any:
            return self.__dict__.get("cycle")

        @cycle.setter
        def cycle(self, value: Any) -> None:
            self.__dict__["cycle"] = value
            if value is not None:
                if getattr(self.server_state, "rcluster_leaving", False):
                    _close_after(value)

    Protocol.__name__ = Protocol.__qualname__ = base.__name__
    return Protocol


@functools.lru_cache(maxsize=None)
def _server_class() -> type:
    """``uvicorn.Server`` as a worker runs it (made on first use: uvicorn is
    imported only where it serves)."""
    import uvicorn

    import rcluster

    class WorkerServer(uvicorn.Server):
        """uvicorn's Server, told when to leave by the listener's end (the
        primary asked this worker to leave and its queue is drained, or the
        primary is gone), ready once its lifespan startup is done."""

        def __init__(self, config: Any, listener: Any) -> None:
            super().__init__(config)
            listener.on_done(self._leave)

        def _leave(self) -> None:
            self.should_exit = True

        async def shutdown(self, sockets: Any = None) -> None:
            # uvicorn's shutdown closes every connection without a request in
            # progress, and lets a response in progress end without saying
            # "Connection: close". Either way a client may send a request on
            # a connection that is being closed, and lose it: no HTTP client
            # retries a request it has sent. So, accepting nothing more:
            # - a connection the primary handed us that has not sent its
            #   request yet (a slow or descheduled client) is waited for, as
            #   long as uvicorn would keep an idle one (timeout_keep_alive);
            # - from now on every request is its connection's last and its
            #   response says "Connection: close", so clients stop reusing
            #   them; an idle kept-alive connection is left to uvicorn's own
            #   keep-alive timer, which closes it after timeout_keep_alive
            #   as it always does: a stop adds no close of its own, so no
            #   race with a request on its way that uvicorn did not have;
            # then (timeout_keep_alive + 1 s at most) uvicorn's shutdown
            # closes what is left and waits for the requests in flight.
            for server in getattr(self, "servers", []):
                server.close()
            self.server_state.rcluster_leaving = True  # read by the protocols' cycle setter
            for connection in list(self.server_state.connections):
                cycle = getattr(connection, "cycle", None)
                if cycle is not None:
                    _close_after(cycle)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.timeout_keep_alive + 1.0
            while not self.force_exit and loop.time() < deadline and any(
                _idle_or_waiting(c) for c in self.server_state.connections
            ):
                await asyncio.sleep(0.01)
            await super().shutdown(sockets=sockets)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                rcluster.worker().ready()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn's own re-raises a caught signal after the shutdown (the
            # worker would then die of it rather than leave); here SIGTERM
            # (the primary's, once the stop timeout has passed) stops
            # gracefully, or at once if already stopping, and SIGINT is
            # ignored: a Ctrl-C reaches the primary too (same terminal),
            # which asks every worker to leave in order.
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def on_sigterm(sig: int, frame: Any) -> None:
                if self.should_exit:
                    self.force_exit = True
                self.should_exit = True

            previous = {
                signal.SIGTERM: signal.signal(signal.SIGTERM, on_sigterm),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return WorkerServer


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m rcluster.asgi APP [--workers N] [--host H] [--port P] ...``"""
    parser = argparse.ArgumentParser(
        prog="python -m rcluster.asgi",
        description="Serve an ASGI app with uvicorn workers behind an rcluster primary.",
    )
    cluster_arguments(parser, "the app as module:attribute, e.g. main:app")
    parser.add_argument("--stop-timeout", type=float, default=30.0, help="seconds a stopping worker has")
    parser.add_argument("--log-level", default=None)
    parser.add_argument("--no-access-log", dest="access_log", action="store_false")
    parser.add_argument("--timeout-keep-alive", type=int, default=5)
    parser.add_argument("--no-proxy-headers", dest="proxy_headers", action="store_false")
    parser.add_argument("--root-path", default="")
    args = parser.parse_args(argv)
    run_asgi(
        args.app,
        workers=args.workers,
        host=args.host,
        port=args.port,
        policy=args.policy,
        stop_timeout=args.stop_timeout,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_keep_alive=args.timeout_keep_alive,
        proxy_headers=args.proxy_headers,
        root_path=args.root_path,
    )


if __name__ == "__main__":
    main()
