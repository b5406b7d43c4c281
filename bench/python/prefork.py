#!/usr/bin/env python3
"""The Python prefork contender: the gunicorn model, without rcluster.

    .venv/bin/python bench/python/prefork.py --workers 2 --port 0

The parent binds and listens, forks N children with os.fork, and every child
accepts on the one shared socket (non-blocking, as gunicorn's sync workers
do: a child woken for a connection another child took gets EAGAIN and goes
back to select). The server and handler classes are those of
examples/python/hello_server.py, the rcluster contender, so both answer
with the same code; only the listen backlog is raised from socketserver's 5
to 511, rcluster's default. SIGTERM/SIGINT: the children are stopped and
the parent exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "python"))
import hello_server as app  # noqa: E402  (the rcluster example: same Server and Handler)


class PreforkServer(app.Server):
    request_queue_size = 511  # socketserver's default is 5; rcluster's primary binds with 511
    allow_reuse_address = True


def main() -> int:
    args = app.parse_args("prefork")
    server = PreforkServer((args.host, args.port), app.Handler)
    server.socket.setblocking(False)
    port = server.server_address[1]

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    children = []
    for number in range(1, args.workers + 1):
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
            app.Handler.body = f"worker {number} pid {os.getpid()}\n".encode()
            try:
                server.serve_forever()
            finally:
                os._exit(0)
        children.append(pid)

    print(f"ready http://{args.host}:{port} workers={args.workers} policy=prefork", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
