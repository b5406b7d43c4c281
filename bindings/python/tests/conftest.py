"""Helpers for the binding's tests: real clusters in subprocesses, a real
HTTP client, and cleanup of every process started, by pid.

Every wait is bounded; a test that cannot finish fails with what it saw.
"""

from __future__ import annotations

import http.client
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "python"
APPS = Path(__file__).resolve().parent / "apps"
PYTHON = sys.executable


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(p) for p in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return False


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _stop_with_parent() -> None:
    """In the cluster's primary, before exec: SIGTERM it (a graceful stop;
    its workers follow it) if this test process dies without cleaning up,
    killed from outside. Seen once on this shared machine: a pytest run
    vanished mid-test and left a cluster running."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Cluster:
    """An example server (primary + workers) started as a subprocess."""

    def __init__(self, script: Path, *args: str, ready_timeout: float = 30.0, log: Optional[Path] = None,
                 env: Optional[dict] = None) -> None:
        self.argv = [PYTHON, str(script), *args]
        # A chatty cluster (uvicorn, gunicorn) logs to a file: a pipe nobody
        # reads until the end would fill up and stall it.
        self.log = log
        err = open(log, "wb") if log else subprocess.PIPE
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT), env={**os.environ, **(env or {})},
                preexec_fn=_stop_with_parent,
            )
        finally:
            if log:
                err.close()
        self.seen_workers: set[int] = set()
        self.ready_line = self._read_line(ready_timeout)
        assert self.ready_line.startswith("ready http://"), self.ready_line
        self.port = int(self.ready_line.split()[1].rsplit(":", 1)[1])

    def _read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        line = b""
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                raise AssertionError(f"no ready line within {timeout} s; stderr: {self.stderr()}")
            chunk = os.read(fd, 1)
            if not chunk:
                raise AssertionError(f"exited before ready ({self.proc.wait()}); stderr: {self.stderr()}")
            line += chunk
        return line.decode().strip()

    def stderr(self) -> str:
        if self.log is not None:
            return self.log.read_text(errors="replace")
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def workers(self) -> list[int]:
        """The pids of the live worker processes."""
        pids = [p for p in children(self.proc.pid) if alive(p)]
        self.seen_workers.update(pids)
        return pids

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then waits for the primary; returns its exit code. Every
        worker must be gone by then."""
        self.workers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"primary did not exit within {timeout} s after SIGTERM") from None
        left = [p for p in self.seen_workers if alive(p)]
        assert not left, f"workers left behind: {left}"
        return code

    def kill(self) -> None:
        """Last resort: SIGKILL the primary and every worker we saw, by pid."""
        pids = self.workers()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in pids + list(self.seen_workers):
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.stop()
            finally:
                self.kill()
        else:
            self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def cluster() -> Iterator:
    """``cluster(script, *args)`` starts an example cluster, stopped at teardown."""
    started: list[Cluster] = []

    def start(script: Path, *args: str, **kw) -> Cluster:
        c = Cluster(script, *args, **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


def get(port: int, path: str = "/", *, close: bool = True, timeout: float = 10.0,
        conn: Optional[http.client.HTTPConnection] = None) -> str:
    """One GET on 127.0.0.1:``port``; returns the body (asserts 200)."""
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"} if close else {})
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, (response.status, body)
        return body
    finally:
        if own:
            conn.close()


def worker_of(body: str) -> int:
    """The worker id in a ``worker <id> pid <pid>`` body."""
    words = body.split()
    assert words[0] == "worker" and words[2] == "pid", body
    return int(words[1])


def pid_of(body: str) -> int:
    return int(body.split()[3])
