#!/usr/bin/env python3
"""Runs an example server the way a user would and checks the contract of
examples/README.md that matters for an install: it prints its ready
line, answers HTTP requests with `worker <id> pid <pid>`, and exits 0 on
SIGTERM with no process left behind.

usage: serve_check.py [--env K=V ...] -- COMMAND [ARGS...]
(`--workers 2 --port P` are appended, P a free port picked here.)
Every wait is bounded; on any failure the server's process group is killed.
"""
import http.client
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time

READY_TIMEOUT = 60.0
EXIT_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def main() -> int:
    args = sys.argv[1:]
    env = dict(os.environ)
    while args and args[0] == "--env":
        key, _, value = args[1].partition("=")
        env[key] = value
        args = args[2:]
    if args[:1] != ["--"] or len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    port = free_port()
    cmd = args[1:] + ["--workers", "2", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, start_new_session=True)
    try:
        # The ready line, within READY_TIMEOUT.
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + READY_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise SystemExit(f"FAIL: no ready line within {READY_TIMEOUT:.0f}s from {cmd}")
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                raise SystemExit(f"FAIL: {cmd} exited ({proc.wait()}) before its ready line")
            line += chunk
        ready = line.decode().strip()
        expected = f"ready http://127.0.0.1:{port} workers=2 policy=rr"
        if ready != expected:
            raise SystemExit(f"FAIL: ready line {ready!r}, expected {expected!r}")
        # Real HTTP requests, each on a new connection.
        worker_pids = set()
        for _ in range(4):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/", headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read().decode()
            conn.close()
            if resp.status != 200 or not re.fullmatch(r"worker \d+ pid \d+\n", body):
                raise SystemExit(f"FAIL: HTTP {resp.status} {body!r}")
            worker_pids.add(int(body.split()[3]))
        # Graceful stop.
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"FAIL: still running {EXIT_TIMEOUT:.0f}s after SIGTERM")
        if code != 0:
            raise SystemExit(f"FAIL: exit code {code} after SIGTERM")
        # No worker that served us is left behind.
        left = [pid for pid in worker_pids if os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"]
        if left:
            raise SystemExit(f"FAIL: workers left behind: {left}")
        print(f"ok: {ready}; {body.strip()}; exit 0 on SIGTERM")
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


if __name__ == "__main__":
    sys.exit(main())
