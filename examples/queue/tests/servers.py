"""Real Redis and MariaDB servers for the queue example's tests and bench.

Each server runs from a temporary directory on a port the OS picked (a
port bound to 0, read, closed and passed on: another process could take it
in between, so a server that fails to start is retried on a fresh port),
is stopped by its pid, and leaves nothing behind but its directory, which
the caller removes. Every wait is bounded.

The binaries come from the Debian packages ``redis-server`` and
``mariadb-server`` (``make test-queue`` installs them when missing).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import pymysql
import redis


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_binaries() -> list[str]:
    return [b for b in ("redis-server", "mariadb-install-db", "mariadbd") if shutil.which(b) is None]


def _stop_pid(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Sends ``sig`` to the process (by pid) and reaps it; SIGKILL if it
    outlives ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        proc.wait(10)


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    def start(self, timeout: float = 20.0) -> "RedisServer":
        for _ in range(5):
            self.port = free_port()
            log = open(self.dir / "redis.log", "ab")
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.client().ping():
                        return self
                except redis.RedisError:
                    time.sleep(0.05)
            self.stop()  # did not come up (port taken?): try another port
        raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=2, socket_timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc, signal.SIGTERM, 10)
            self.proc = None


class MariaDB:
    """A MariaDB server of its own: ``mariadb-install-db`` into a temporary
    data directory, then ``mariadbd`` without grant tables (no passwords),
    on 127.0.0.1 only. ``innodb_flush_log_at_trx_commit=2`` writes every
    commit to the OS at once (a killed mariadbd loses no committed row; only
    a crash of the machine could) but syncs once a second: the tests insert
    tens of thousands of rows on a shared 2-CPU VM."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.data = directory / "data"
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    def install(self) -> "MariaDB":
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "install.log", "wb") as log:
            subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=root",
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True, timeout=120,
            )
        return self

    def start(self, timeout: float = 60.0, same_port: bool = False) -> "MariaDB":
        """Starts mariadbd (on the port it had, with ``same_port``: a restart)."""
        for _ in range(1 if same_port else 5):
            if not same_port or not self.port:
                self.port = free_port()
            log = open(self.dir / "mariadbd.log", "ab")
            self.proc = subprocess.Popen(
                ["mariadbd", "--no-defaults", f"--datadir={self.data}", f"--socket={self.dir / 'mysqld.sock'}",
                 f"--pid-file={self.dir / 'mysqld.pid'}", f"--port={self.port}", "--bind-address=127.0.0.1",
                 "--user=root", "--skip-grant-tables", "--skip-name-resolve", "--skip-log-bin",
                 "--performance-schema=OFF", "--innodb-buffer-pool-size=128M",
                 "--innodb-flush-log-at-trx-commit=2", "--max-connections=500"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    self.connect().close()
                    return self
                except pymysql.MySQLError:
                    time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"mariadbd did not start; see {self.dir / 'mariadbd.log'}")

    def kill(self) -> None:
        """Kills mariadbd outright (SIGKILL), as a crash or an OOM kill would."""
        if self.proc is not None:
            _stop_pid(self.proc, signal.SIGKILL, 10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc, signal.SIGTERM, 30)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def connect(self, database: Optional[str] = None) -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", database=database,
                               autocommit=True, connect_timeout=2, read_timeout=30)

    def create_database(self, name: str) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cursor.execute(f"CREATE DATABASE `{name}`")
        finally:
            conn.close()
