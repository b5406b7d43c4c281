"""rcluster: Node's ``cluster`` module for Python, over the rcluster C library.

One *primary* process owns the listening sockets and starts *worker*
processes (this same program, by default); the primary accepts connections
and hands each to a worker in turn (policy ``"rr"``), or lets the workers
accept on a shared socket (``"shared"``). Workers and primary exchange
messages.

::

    import http.server, rcluster

    if rcluster.is_primary:
        with rcluster.Primary(workers=4) as primary:
            print("listening on", primary.wait_listening())
            primary.run()                       # until SIGTERM/shutdown
    else:
        server = rcluster.make_server(http.server.ThreadingHTTPServer,
                                      ("127.0.0.1", 8080), Handler)
        server.serve_forever()                  # returns when asked to leave
        server.server_close()
        rcluster.worker().close()

Module attributes: ``is_primary``, ``is_worker`` (which role this process
has) and ``worker_id`` (this worker's id, ``None`` in the primary).
asyncio lives in :mod:`rcluster.aio`.
"""

from __future__ import annotations

from ._errors import (
    AddressError,
    BadHandle,
    Closed,
    Leaving,
    Code,
    Error,
    InvalidArgument,
    StateError,
    Timeout,
    WouldBlock,
)
from ._events import Event, EventKind
from ._ffi import ffi as _ffi
from ._ffi import lib as _lib
from ._primary import POLICIES, Primary, WorkerInfo, WorkerStats, default_argv
from ._source import EventSource
from ._worker import Listener, Worker, listen, make_server, send, send_json, worker
from ._worker import is_worker as _is_worker
from ._worker import worker_id as _worker_id



def run_asgi(app, **options):  # type: ignore[no-untyped-def]
    """Serves an ASGI app (FastAPI, Starlette...) with uvicorn workers; see
    :func:`rcluster.asgi.run_asgi`. Needs uvicorn (``pip install uvicorn``)."""
    from .asgi import run_asgi as run

    return run(app, **options)


def run_wsgi(app, **options):  # type: ignore[no-untyped-def]
    """Serves a WSGI app (Flask, Django...) with gunicorn workers; see
    :func:`rcluster.wsgi.run_wsgi`. Needs gunicorn (``pip install gunicorn``)."""
    from .wsgi import run_wsgi as run

    return run(app, **options)


#: The bundled C library's version.
__version__: str = _ffi.string(_lib.rcluster_version()).decode()

#: True in a worker process (started by a primary).
is_worker: bool = _is_worker()
#: True in any process that is not a worker.
is_primary: bool = not is_worker
#: This worker's id (>= 1), or ``None`` in the primary.
worker_id: int | None = _worker_id()

#: Largest message, in bytes, that ``send`` carries.
MAX_MESSAGE: int = _lib.RCLUSTER_MAX_MESSAGE
#: Most file descriptors one message may carry (``send(..., fds=[...])``).
MAX_FDS: int = _lib.RCLUSTER_MAX_FDS

__all__ = [
    "AddressError",
    "BadHandle",
    "Closed",
    "Leaving",
    "Code",
    "Error",
    "Event",
    "EventKind",
    "EventSource",
    "InvalidArgument",
    "Listener",
    "MAX_FDS",
    "MAX_MESSAGE",
    "POLICIES",
    "Primary",
    "StateError",
    "Timeout",
    "Worker",
    "WorkerInfo",
    "WorkerStats",
    "WouldBlock",
    "default_argv",
    "is_primary",
    "is_worker",
    "listen",
    "make_server",
    "run_asgi",
    "run_wsgi",
    "send",
    "send_json",
    "worker",
    "worker_id",
]
