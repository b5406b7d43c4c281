"""WSGI apps (Flask, Django, ...) on rcluster, with gunicorn's workers.

::

    # main.py
    import rcluster
    from flask import Flask

    app = Flask(__name__)

    @app.get("/")
    def hello():
        return "hello"

    if __name__ == "__main__":
        rcluster.run_wsgi("main:app", workers=4, host="0.0.0.0", port=8000,
                          worker_class="gthread", threads=8)

or ``python -m rcluster.wsgi main:app --workers 4 --threads 8 --host 0.0.0.0
--port 8000`` (gunicorn's spelling). A Django project: ``"mysite.wsgi:application"``.

**Why gunicorn's worker classes.** They are the WSGI server most Python
deployments already run, with the settings people know (``worker_class``
``sync``/``gthread``, ``threads``, ``keepalive``, ``timeout``,
``max_requests``, ``accesslog``, ``limit_request_*``...), and their main
loops only ask of a listening socket what a :class:`rcluster.Listener`
gives (``fileno``, non-blocking ``accept``, ``getsockname``). rcluster
replaces gunicorn's *arbiter* only: the primary owns the socket and hands
each connection to a worker (even under ``rr``, where gunicorn leaves it to
the kernel), restarts crashed workers with backoff, reloads them one by one
without refusing a connection. waitress can take a socket too, but has no
graceful stop (in-flight requests are dropped on shutdown); cheroot takes
none without reaching into its internals. gunicorn's worker classes stop
gracefully: the one in flight (``sync``) or every one (``gthread``, within
``graceful_timeout``) is answered.

- **SIGTERM/SIGINT** to the primary: graceful stop (as gunicorn's SIGTERM):
  each worker accepts what was already handed to it, stops, answers the
  requests in flight; after ``stop_timeout`` it gets SIGTERM, then SIGKILL.
- **SIGHUP**: rolling reload: a new worker (importing the new code) starts
  and is serving before each old one is stopped, one at a time.
- **A worker that cannot start** (import error, address in use) exits as a
  crash: restarted with backoff; if it keeps failing the cluster does not
  start and says why.
- gunicorn's ``timeout`` (a worker silent that long is killed and
  replaced) is rcluster's heartbeat: ``heartbeat_timeout=timeout``.
- gunicorn's arbiter hooks (``on_starting``, ``pre_fork``, ``post_fork``,
  ``when_ready``...) do not run: there is no arbiter. ``post_worker_init``,
  ``pre_request``, ``post_request``, ``worker_exit`` do.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
from typing import Any, Callable, Mapping, Optional, Union

from ._errors import Closed
from ._serve import app_name, cluster_arguments, fail_startup, refuse_options, run_primary

__all__ = ["run_wsgi", "main"]

log = logging.getLogger("gunicorn.error")

#: gunicorn settings that belong to its arbiter, or that rcluster decides.
_REFUSED = {
    "workers": "pass workers= to run_wsgi",
    "bind": "pass host= and port=",
    "reload": "send SIGHUP to the primary for a rolling reload",
    "daemon": "run the primary in the foreground (systemd, a container) or under `rcluster start`",
    "preload_app": "workers are spawned, not forked: each imports the app",
    "reuse_port": "the primary owns the listening socket",
}


def run_wsgi(
    app: Union[str, Callable[..., Any]],
    *,
    workers: Optional[int] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    policy: str = "rr",
    stop_timeout: float = 30.0,
    primary_options: Optional[Mapping[str, Any]] = None,
    on_ready: Optional[Callable[[str, int], Any]] = None,
    **gunicorn_settings: Any,
) -> None:
    """Serves the WSGI ``app`` (an import string such as ``"main:app"``, or
    the app itself) on ``host:port`` with ``workers`` gunicorn workers
    (default: one per CPU), until SIGTERM/SIGINT. Returns after the graceful
    stop; raises :class:`SystemExit` (1) if the cluster cannot start.

    Every other keyword is a gunicorn setting, by its Python name
    (``worker_class="gthread"``, ``threads=8``, ``keepalive=5``,
    ``timeout=30``, ``graceful_timeout=30``, ``accesslog="-"``...). With the
    ``sync`` worker (gunicorn's default: one request at a time) prefer
    ``policy="least"``: the primary then sends each connection to the worker
    holding the fewest, so none waits behind a slow request while another
    worker is idle. ``port``, ``policy``, ``stop_timeout``,
    ``primary_options`` and ``on_ready`` are as for :func:`rcluster.run_asgi`."""
    refuse_options("run_wsgi", gunicorn_settings, _REFUSED)
    import rcluster

    application = _application(app, gunicorn_settings)  # validates the settings in both roles
    if rcluster.is_worker:
        _serve_worker(application, host, port)
        return
    application.cfg.logger_class(application.cfg)  # gunicorn's logging, for the primary's lines too
    worker_class = application.cfg.worker_class_str
    timeout = application.cfg.timeout
    if timeout > 0:
        # gunicorn's timeout: its arbiter kills a worker whose main loop has
        # not checked in for that long (a request stuck in a sync worker).
        # rcluster's heartbeat does the same: the worker's loop answers it
        # whenever it polls its listener.
        primary_options = {
            "heartbeat_interval": max(0.5, timeout / 4),
            "heartbeat_timeout": timeout,
            **(primary_options or {}),
        }
    run_primary(
        f"WSGI app {app_name(app)} "
        f"(gunicorn {worker_class} workers)",
        host,
        workers=workers,
        policy=policy,
        stop_timeout=stop_timeout,
        primary_options=primary_options,
        on_ready=on_ready,
        log=log,
    )


def _application(app: Any, settings: Mapping[str, Any]) -> Any:
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):  # gunicorn's documented embedding API
        def __init__(self) -> None:
            self.application = app
            super().__init__()

        def load_config(self) -> None:
            for name, value in settings.items():
                if name.lower() not in self.cfg.settings:
                    raise TypeError(f"run_wsgi: unknown gunicorn setting {name!r}")
                self.cfg.set(name.lower(), value)

        def load(self) -> Any:
            if isinstance(self.application, str):
                from gunicorn import util

                return util.import_app(self.application)
            return self.application

    return Application()


def _serve_worker(application: Any, host: str, port: int) -> None:
    import rcluster

    cfg = application.cfg
    logger = cfg.logger_class(cfg)
    try:
        # Import the app before listening: a worker that cannot load it fails
        # before it is counted as serving.
        application.wsgi()
    except BaseException as e:  # noqa: BLE001 - SystemExit too: gunicorn's import_app exits on some errors
        logger.error("rcluster: cannot load the WSGI app %r: %s", application.application, e)
        fail_startup(f"cannot load the WSGI app {application.application!r}: {type(e).__name__}: {e}")
    try:
        listener = rcluster.listen((host, port))
    except rcluster.Error as e:
        logger.error("rcluster: %s", e.message)
        fail_startup(e.message)
    sock = _GunicornListener(listener)
    worker = _worker_class(cfg.worker_class)(1, os.getppid(), [sock], application, cfg.timeout / 2.0, cfg, logger)
    sock.worker = worker
    worker.pid = os.getpid()  # gunicorn's arbiter sets it in the child
    try:
        worker.init_process()  # the worker's own main loop; returns once it stops
    finally:
        try:
            cfg.worker_exit(None, worker)
        except Exception:  # noqa: BLE001
            logger.exception("rcluster: worker_exit hook failed")
        worker.tmp.close()
    rcluster.worker().close()


def _worker_class(base: type) -> type:
    import rcluster

    class Worker(base):  # type: ignore[misc, valid-type]
        def init_signals(self) -> None:
            super().init_signals()
            # Ctrl-C reaches the primary too, which stops every worker gracefully.
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        def run(self) -> None:
            rcluster.worker().ready()  # the app is loaded, the listener ours: count us in
            super().run()

    Worker.__name__ = Worker.__qualname__ = f"Rcluster{base.__name__}"
    return Worker


class _GunicornListener:
    """A :class:`rcluster.Listener` as gunicorn's workers use a listening
    socket. When the listener reports the end (this worker was asked to
    leave and has accepted everything handed to it, or the primary is
    gone), the worker is told to stop (``alive = False``, as gunicorn's
    SIGTERM does) and ``accept`` says "nothing now" (``EAGAIN``), so its
    loop stops, then answers what is in flight."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.worker: Any = None
        self.family = listener.family
        self.type = listener.type
        self.proto = listener.proto

    def accept(self) -> Any:
        try:
            sock, address = self.listener.accept()
        except Closed as e:
            if self.worker is not None and self.worker.alive:
                self.worker.alive = False
            raise BlockingIOError(errno.EAGAIN, f"rcluster: {e.message}") from None
        # gunicorn sets TCP_NODELAY on its listening socket, which accepted
        # sockets inherit; the primary's socket is not gunicorn's, so set it
        # here. Without it a kept-alive response written in two parts
        # (headers, body) waits for the client's delayed ACK (40 ms).
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # reset meanwhile: the worker finds out when it reads
        return sock, address

    def fileno(self) -> int:
        return int(self.listener.fileno())

    def setblocking(self, flag: bool) -> None:
        self.listener.setblocking(flag)

    def getsockname(self) -> Any:
        return self.listener.getsockname()

    def close(self) -> None:
        self.listener.close()

    def __str__(self) -> str:
        host, port = self.listener.address
        return f"rcluster http://{host}:{port}"


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m rcluster.wsgi APP [--workers N] [--threads T] [--host H] [--port P] ...``"""
    parser = argparse.ArgumentParser(
        prog="python -m rcluster.wsgi",
        description="Serve a WSGI app with gunicorn workers behind an rcluster primary.",
    )
    cluster_arguments(parser, "the app as module:attribute, e.g. main:app or mysite.wsgi:application")
    parser.add_argument("-k", "--worker-class", default="sync", help="gunicorn worker class: sync, gthread...")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep-alive", type=int, default=2)
    parser.add_argument("-t", "--timeout", type=int, default=30)
    parser.add_argument("--graceful-timeout", type=int, default=30)
    parser.add_argument("--stop-timeout", type=float, default=None, help="seconds a stopping worker has (default: graceful timeout + 5)")
    parser.add_argument("--access-logfile", default=None)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    run_wsgi(
        args.app,
        workers=args.workers,
        host=args.host,
        port=args.port,
        policy=args.policy,
        stop_timeout=args.stop_timeout if args.stop_timeout is not None else args.graceful_timeout + 5,
        worker_class=args.worker_class,
        threads=args.threads,
        keepalive=args.keep_alive,
        timeout=args.timeout,
        graceful_timeout=args.graceful_timeout,
        accesslog=args.access_logfile,
        loglevel=args.log_level,
    )


if __name__ == "__main__":
    main()
