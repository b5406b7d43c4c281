#!/usr/bin/env python3
"""The Python web-server contenders: one FastAPI app and one Flask app, each
served by rcluster (run_asgi / run_wsgi) and by what people run today.

    .venv/bin/python bench/python/servers.py CONTENDER --workers N

CONTENDER:
  rcluster-asgi           rcluster.run_asgi, uvicorn in each worker (policy rr)
  uvicorn                 uvicorn --workers N (its parent binds, the workers share the socket)
  gunicorn-uvicorn        gunicorn -k uvicorn.workers.UvicornWorker -w N
  rcluster-wsgi-sync      rcluster.run_wsgi, gunicorn's sync worker class
  rcluster-wsgi-gthread   rcluster.run_wsgi, gunicorn's gthread worker class (4 threads)
  gunicorn-sync           gunicorn -w N (sync)
  gunicorn-gthread        gunicorn -w N -k gthread --threads 4

Every contender answers `/` with `worker <id> pid <pid>` (id 0 outside
rcluster; bench/wrk/count.lua counts by pid) and prints `ready
http://127.0.0.1:PORT` once it serves. Access logs are off everywhere, the
other settings are the servers' defaults (uvicorn: asyncio loop and h11,
the same for all ASGI rows; uvicorn[standard]'s uvloop/httptools are not
installed). For the non-rcluster rows this script picks a free port, starts
the server as its child, waits until the port answers, prints the ready
line and passes SIGTERM/SIGINT on; the harness counts the child and its
workers as the contender's processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# `servers:asgi_app` / `servers:wsgi_app` must import in every server's workers.
sys.path.insert(0, str(HERE))

import rcluster  # noqa: E402

WORKER_ID = rcluster.worker_id or 0
THREADS = 4


def _body() -> bytes:
    return f"worker {WORKER_ID} pid {os.getpid()}\n".encode()


def make_asgi_app():
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/", response_class=PlainTextResponse)
    async def hello() -> PlainTextResponse:
        return PlainTextResponse(_body())

    return app


def make_wsgi_app():
    from flask import Flask

    app = Flask(__name__)

    @app.get("/")
    def hello():
        return _body(), 200, {"Content-Type": "text/plain"}

    return app


def __getattr__(name: str):  # the apps are made on first import by a server, not by the launcher
    if name == "asgi_app":
        globals()[name] = make_asgi_app()
    elif name == "wsgi_app":
        globals()[name] = make_wsgi_app()
    else:
        raise AttributeError(name)
    return globals()[name]


def ready(host: str, port: int) -> None:
    print(f"ready http://{host}:{port}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(argv: list[str], port: int) -> int:
    """Starts a server, prints the ready line once its port answers, passes
    SIGTERM/SIGINT on, returns its exit code."""
    child = subprocess.Popen(argv, cwd=str(HERE), stdin=subprocess.DEVNULL)

    def forward(signum, frame):  # noqa: ARG001
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    deadline = time.monotonic() + 60
    while True:
        if child.poll() is not None:
            return child.returncode or 1
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                child.kill()
                return 1
            time.sleep(0.1)
    time.sleep(1.0)  # every worker up, not just the first
    ready("127.0.0.1", port)
    try:
        return child.wait(60 * 60)
    except subprocess.TimeoutExpired:
        child.kill()
        return 1


def main() -> int:
    contender = sys.argv[1]
    workers = int(sys.argv[sys.argv.index("--workers") + 1])
    py = sys.executable
    if contender == "rcluster-asgi":
        rcluster.run_asgi("servers:asgi_app", workers=workers, port=0, access_log=False, log_level="warning",
                          on_ready=ready)
        return 0
    if contender.startswith("rcluster-wsgi-"):
        kind = contender.rsplit("-", 1)[1]
        rcluster.run_wsgi("servers:wsgi_app", workers=workers, port=0, worker_class=kind,
                          threads=THREADS if kind == "gthread" else 1, loglevel="warning", on_ready=ready)
        return 0
    port = free_port()
    gunicorn = [py, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning"]
    argv = {
        "uvicorn": [py, "-m", "uvicorn", "servers:asgi_app", "--workers", str(workers), "--port", str(port),
                    "--no-access-log", "--log-level", "warning", "--loop", "asyncio", "--http", "h11"],
        "gunicorn-uvicorn": gunicorn + ["-k", "uvicorn.workers.UvicornWorker", "servers:asgi_app"],
        "gunicorn-sync": gunicorn + ["servers:wsgi_app"],
        "gunicorn-gthread": gunicorn + ["-k", "gthread", "--threads", str(THREADS), "servers:wsgi_app"],
    }[contender]
    return run_child(argv, port)


if __name__ == "__main__":
    sys.exit(main())
