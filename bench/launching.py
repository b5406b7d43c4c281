"""What the bench's launchers (bench/cmd/launch.py, bench/nginx/launch.py)
share: a free port, and the wait until a contender serves with every worker
before they print the ready line bench/run.py waits for."""

import socket
import time
import urllib.request
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(port: int, workers: int, alive: Callable[[], bool], within: float = 60.0) -> bool:
    """True once `workers` distinct worker pids have answered on `port` (the
    body is `worker <id> pid <pid>`); False if `alive()` turns false or
    `within` seconds pass first."""
    pids, deadline = set(), time.monotonic() + within
    while len(pids) < workers:
        if not alive() or time.monotonic() > deadline:
            return False
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
            pids.add(body.split()[3])
        except OSError:
            time.sleep(0.1)
    return True
