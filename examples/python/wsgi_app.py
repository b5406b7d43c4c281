#!/usr/bin/env python3
"""A WSGI application served by the standard library's wsgiref, in a cluster.

    .venv/bin/python examples/python/wsgi_app.py --workers 2 --port 8080

Any WSGI app works the same way: each worker builds an unmodified
`wsgiref.simple_server.WSGIServer` (threaded here) with
`rcluster.make_server`, so it serves the connections the primary hands it.
Same arguments, ready line and signals as hello_server.py. (wsgiref speaks
HTTP/1.0: one request per connection.)
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import rcluster

from hello_server import parse_args


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The application: `/` says who served it, `/env` shows a few WSGI keys."""
    if environ["PATH_INFO"] == "/env":
        keys = ("REQUEST_METHOD", "PATH_INFO", "SERVER_NAME", "SERVER_PORT", "wsgi.multithread")
        body = json.dumps({k: environ.get(k) for k in keys}).encode() + b"\n"
        content_type = "application/json"
    else:
        body = f"worker {rcluster.worker_id} pid {os.getpid()}\n".encode()
        content_type = "text/plain"
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


class Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = False  # server_close() waits for requests in flight
    block_on_close = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_worker(host: str, port: int) -> int:
    server = rcluster.make_server(Server, (host, port), QuietHandler)
    server.set_app(app)
    server.serve_forever()  # returns once the primary asked us to leave
    server.server_close()
    rcluster.worker().close()
    return 0


def run_primary(args) -> int:
    with rcluster.Primary(workers=args.workers, policy=args.policy, handle_signals=True) as primary:
        try:
            _, port = primary.wait_listening()
        except rcluster.Error as e:
            print(f"wsgi_app: {e}", file=sys.stderr)
            return 1  # leaving the with block shuts the cluster down
        print(f"ready http://{args.host}:{port} workers={args.workers} policy={args.policy}", flush=True)
        primary.run()  # until SIGTERM/SIGINT
    return 0


def main() -> int:
    args = parse_args("wsgi_app")
    return run_worker(args.host, args.port) if rcluster.is_worker else run_primary(args)


if __name__ == "__main__":
    sys.exit(main())
