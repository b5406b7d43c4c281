"""The example servers, run as real clusters and checked with a real client
(the contract of examples/README.md)."""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import EXAMPLES, PYTHON, ROOT, alive, get, pid_of, wait_until, worker_of

SERVERS = ["hello_server.py", "asyncio_server.py", "wsgi_app.py"]


@pytest.mark.parametrize("script", SERVERS)
def test_both_workers_serve_and_shut_down_cleanly(cluster, script):
    c = cluster(EXAMPLES / script, "--workers", "2", "--port", "0")
    assert c.ready_line == f"ready http://127.0.0.1:{c.port} workers=2 policy=rr"
    bodies = [get(c.port) for _ in range(10)]
    assert {worker_of(b) for b in bodies} == {1, 2}, bodies
    assert set(pid_of(b) for b in bodies) == set(c.workers())
    assert c.stop() == 0


@pytest.mark.parametrize("script", ["hello_server.py", "asyncio_server.py"])
def test_keep_alive_and_connection_close(cluster, script):
    c = cluster(EXAMPLES / script, "--workers", "2", "--port", "0")
    conn = http.client.HTTPConnection("127.0.0.1", c.port, timeout=10)
    try:
        served = {worker_of(get(c.port, close=False, conn=conn)) for _ in range(5)}
        assert len(served) == 1, "one keep-alive connection is served by one worker"
    finally:
        conn.close()
    assert worker_of(get(c.port, close=True)) in (1, 2)
    assert c.stop() == 0


def test_distribution_is_fair_under_rr(cluster):
    c = cluster(EXAMPLES / "hello_server.py", "--workers", "2", "--port", "0", "--policy", "rr")
    counts = collections.Counter(worker_of(get(c.port)) for _ in range(100))
    assert set(counts) == {1, 2}
    assert all(40 <= n <= 60 for n in counts.values()), counts


def test_shared_policy_serves(cluster):
    c = cluster(EXAMPLES / "hello_server.py", "--workers", "2", "--port", "0", "--policy", "shared")
    assert c.ready_line.endswith("workers=2 policy=shared")
    for _ in range(10):
        assert worker_of(get(c.port)) in (1, 2)
    assert c.stop() == 0


def test_sigint_shuts_down_gracefully_too(cluster):
    c = cluster(EXAMPLES / "hello_server.py", "--workers", "2", "--port", "0")
    workers = c.workers()
    assert len(workers) == 2
    c.signal(signal.SIGINT)
    assert c.proc.wait(30) == 0
    wait_until(lambda: not any(alive(p) for p in workers), 10, "workers to exit")


def test_killed_worker_is_replaced(cluster):
    c = cluster(EXAMPLES / "hello_server.py", "--workers", "2", "--port", "0")
    victim = wait_until(lambda: len(c.workers()) == 2 and c.workers(), 10, "two workers")[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not alive(victim), 10, "the killed worker to die")
    # The core restarts it (restart is on by default): two workers again, a new one among them.
    pids = wait_until(
        lambda: (lambda w: len(w) == 2 and victim not in w and w)(c.workers()), 15, "a replacement worker"
    )
    served = set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(served) < 2:
        served.add(pid_of(get(c.port)))
    assert served == set(pids), (served, pids)
    assert c.stop() == 0


def test_rolling_reload_under_load_loses_no_request(cluster):
    c = cluster(EXAMPLES / "hello_server.py", "--workers", "2", "--port", "0")
    old = set(c.workers())
    stop = threading.Event()
    failures: list[str] = []
    served: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            try:
                body = get(c.port, timeout=10)
                with lock:
                    served[worker_of(body)] += 1
            except Exception as e:  # any failure is a lost request
                with lock:
                    failures.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(served.values()) >= 50, 20, "load to start")
        c.signal(signal.SIGHUP)
        # Every old worker is replaced: new pids only, and new ids serving.
        wait_until(lambda: not any(alive(p) for p in old), 40, "the old workers to leave")
        wait_until(lambda: served[3] > 0 and served[4] > 0, 20, "the new workers to serve")
        before = sum(served.values())
        wait_until(lambda: sum(served.values()) >= before + 50, 20, "load after the reload")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not failures, failures[:5]
    assert set(c.workers()).isdisjoint(old)
    assert c.stop() == 0


@pytest.mark.parametrize(
    "args",
    [["--workers", "zero"], ["--port", "70000"], ["--policy", "random"], ["--bogus"]],
)
def test_bad_arguments_exit_2_with_one_line(args):
    result = subprocess.run(
        [PYTHON, str(EXAMPLES / "hello_server.py"), *args], capture_output=True, timeout=30, cwd=str(ROOT)
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hello_server: "), lines
    assert result.stdout == b""


def test_wsgi_environ(cluster):
    c = cluster(EXAMPLES / "wsgi_app.py", "--workers", "1", "--port", "0")
    env = json.loads(get(c.port, "/env"))
    assert env["REQUEST_METHOD"] == "GET" and env["PATH_INFO"] == "/env"
    assert env["SERVER_PORT"] == str(c.port)
    assert c.stop() == 0


@pytest.mark.parametrize("script", SERVERS)
def test_request_in_flight_at_sigterm_completes(cluster, script):
    c = cluster(EXAMPLES / script, "--workers", "2", "--port", "0")
    workers = c.workers()
    assert len(workers) == 2
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # half a request: the worker is serving it
        time.sleep(0.3)
        c.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert c.proc.poll() is None, "the primary waits for the request in flight"
        s.sendall(b"Connection: close\r\n\r\n")
        response = b""
        while chunk := s.recv(4096):
            response += chunk
    assert response.split(b"\r\n", 1)[0] in (b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"), response
    assert c.proc.wait(30) == 0
    wait_until(lambda: not any(alive(p) for p in workers), 10, "the workers to exit")
