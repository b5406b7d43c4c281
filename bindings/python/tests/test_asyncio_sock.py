"""A Listener handed to asyncio itself (``loop.create_server(sock=...)``,
uvicorn's ``sockets=``), through a worker's shutdown.

Before the fix, once the worker was asked to leave, asyncio called
``Listener.accept()`` again and again (the listener's fd stays readable so
that pollers see the end), logging a traceback each time: 18,000 in 1.5 s,
20 MB of log, the worker at 100% CPU until the primary's SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import sys
import time

import pytest

import rcluster
from conftest import APPS, alive

APP = str(APPS / "worker_app.py")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (every thread), in seconds."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.settimeout(10)
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    return answer


def exit_of(p: rcluster.Primary, timeout: float) -> rcluster.Event:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = p.next_event(max(0.0, deadline - time.monotonic()))
        if event is not None and event.kind == "exit":
            return event
    raise AssertionError(f"no exit event within {timeout} s")


@pytest.mark.parametrize("stopped_by", ["on_done", "nothing", "uvicorn"])
def test_asyncio_server_on_a_listener_goes_quiet_at_shutdown(tmp_path, stopped_by):
    """on_done: loop.create_server(sock=listener), stopped by listener.on_done;
    nothing: the same, nothing stops it; uvicorn: uvicorn.Server.run(sockets=[listener]),
    nothing stops it (its SIGTERM handling stops it gracefully)."""
    if stopped_by == "uvicorn":
        pytest.importorskip("uvicorn", reason="uvicorn is not installed (make python installs it)")
    log = tmp_path / "worker.log"
    env = {"TEST_LOG": str(log), "TEST_ON_DONE": "1" if stopped_by == "on_done" else "0"}
    mode = "uvicorn_sock" if stopped_by == "uvicorn" else "aio_sock"
    p = rcluster.Primary(workers=1, argv=[sys.executable, APP, mode], env=env, stop_timeout=3.0)
    with p:
        _, port = p.wait_listening(timeout=15)
        assert http_get(port).endswith(b"\r\n\r\nok")
        pid = p.workers[1].pid
        before = cpu_seconds(pid)
        p.shutdown()
        if stopped_by == "on_done":
            # listener.on_done(server.close): serve_forever returns, the worker leaves at once.
            exit_event = exit_of(p, 2.5)
            assert exit_event.exit_code == 0 and exit_event.signal == 0
        else:
            # Nothing stops this server: it must sit idle (not spin) until the
            # primary's SIGTERM, 3 s (stop_timeout) after it was asked to leave.
            time.sleep(1.5)
            assert alive(pid)
            spent = cpu_seconds(pid) - before
            assert spent < 0.3, f"the worker spun after it was asked to leave: {spent:.2f} s CPU in 1.5 s"
            exit_event = exit_of(p, 10)
            # asyncio dies of it; uvicorn stops gracefully, then re-raises it to die of it too.
            assert exit_event.signal == signal.SIGTERM, exit_event
        p.run(15)
    text = log.read_text()
    assert "Traceback" not in text, text[:3000]
    warnings = [line for line in text.splitlines() if "rcluster" in line]
    if stopped_by == "on_done":
        assert warnings == [], text[:3000]
    else:
        # One line that says what happened and points to the supported routes.
        assert len(warnings) == 1, text[:3000]
        assert "rcluster.aio.create_server" in warnings[0] and "on_done" in warnings[0], warnings[0]
