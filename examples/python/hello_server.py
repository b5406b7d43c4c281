#!/usr/bin/env python3
"""The hello server of ../examples/README.md, in Python, on http.server.

    .venv/bin/python examples/python/hello_server.py --workers 2 --port 8080

The primary (this program) starts N workers (this program again, with the
same arguments); each worker serves HTTP/1.1 from `rcluster.make_server`,
a stock `http.server` served through the primary's listener. Every request
gets `worker <id> pid <pid>`. SIGTERM/SIGINT: graceful shutdown, exit 0.
SIGHUP: rolling reload. A worker killed from outside is replaced.
"""

from __future__ import annotations

import argparse
import http.server
import os
import socketserver
import sys

import rcluster


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, exit 2
        self.exit(2, f"{self.prog}: {message}\n")


def parse_args(prog: str = "hello_server") -> argparse.Namespace:
    """The arguments every example server takes (../examples/README.md)."""
    parser = ArgumentParser(prog=prog, description="rcluster hello server (Python)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--policy", default="rr", choices=sorted(k for k in rcluster.POLICIES if "_" not in k))
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, not {args.port}")
    return args


# ----- worker ------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says close
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
    # algorithm holds the body for the client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    timeout = 5  # an idle keep-alive connection is closed after 5 s
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_POST = do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    # Non-daemon threads joined by server_close(): in-flight requests finish.
    daemon_threads = False
    block_on_close = True


def run_worker(args: argparse.Namespace) -> int:
    Handler.body = f"worker {rcluster.worker_id} pid {os.getpid()}\n".encode()
    server = rcluster.make_server(Server, (args.host, args.port), Handler)
    server.serve_forever()  # returns once the primary asked us to leave and the queue is drained
    server.server_close()  # waits for in-flight requests
    rcluster.worker().close()
    return 0


# ----- primary -----------------------------------------------------------


def run_primary(args: argparse.Namespace) -> int:
    primary = rcluster.Primary(workers=args.workers, policy=args.policy, handle_signals=True)
    with primary:
        try:
            _, port = primary.wait_listening()
        except rcluster.Error as e:
            print(f"hello_server: {e}", file=sys.stderr)
            return 1  # leaving the with block shuts the cluster down
        print(f"ready http://{args.host}:{port} workers={args.workers} policy={args.policy}", flush=True)
        # The library handles the signals (handle_signals=True): SIGTERM/SIGINT
        # shut down gracefully, SIGHUP reloads, and workers that die are
        # replaced (restart is on by default). run() returns after the shutdown.
        primary.run()
    return 0


def main() -> int:
    args = parse_args()
    return run_worker(args) if rcluster.is_worker else run_primary(args)


if __name__ == "__main__":
    sys.exit(main())
