"""The queue-worker example (examples/queue), Python and Node versions, run
against a real redis-server and a real MariaDB (see servers.py).

Every scenario ends with the count check: every job id pushed is in the
table exactly once and nothing else is; the queue is empty (or holds what
a stopped run left); no processing list is left; the dead-letter list holds
exactly the malformed jobs, each with its reason. Processes are started as
subprocesses, killed by pid in cleanup, and every wait is bounded.

    make test-queue      # or: .venv/bin/python -m pytest examples/queue/tests -q
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import pymysql
import pytest

from servers import MariaDB, RedisServer, missing_binaries

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = {
    "python": [sys.executable, str(ROOT / "examples/queue/python/queue_worker.py")],
    "node": [os.environ.get("NODE", "node"), str(ROOT / "examples/queue/node/queue_worker.js")],
}
JOBS = 10_000
WORKERS = 4

if missing_binaries():
    pytest.skip(f"missing {', '.join(missing_binaries())}: run `make test-queue`, which installs them",
                allow_module_level=True)


# ----- servers (one of each for the session) ------------------------------------


@pytest.fixture(scope="session")
def tmpdir_session() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rcluster-queue-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmpdir_session: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmpdir_session / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb(tmpdir_session: Path) -> Iterator[MariaDB]:
    server = MariaDB(tmpdir_session / "mariadb").install().start()
    yield server
    server.stop()


@pytest.fixture(params=["python", "node"])
def lang(request) -> str:
    if request.param == "node" and not (ROOT / "examples/queue/node/node_modules/ioredis").is_dir():
        pytest.fail("examples/queue/node has no node_modules: run `make test-queue`")
    return request.param


# ----- the example as a subprocess ------------------------------------------------


def proc_stat(pid: int) -> Optional[tuple[str, int]]:
    """``(state, start time in clock ticks)`` of a process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def alive(pid: int, started: Optional[int] = None) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone), and, given its start
    time, is still the same process: pids wrap at 32,768 here, and other
    tenants of the machine start many processes."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z" and (started is None or stat[1] == started)


def wait_until(predicate: Callable[[], object], timeout: float, what: "str | Callable[[], str]",
               interval: float = 0.02) -> object:
    """``what`` may be a function: then it describes the state at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


STARTED = re.compile(r"^worker (\d+) started pid (\d+) slot (\d+)$")
EXITED = re.compile(r"^worker (\d+) exited (code|signal) (\d+) (asked|unasked) recovered (\d+)$")


class QueueCluster:
    """The example's primary (and through it its workers), with its output
    collected line by line."""

    def __init__(self, lang: str, redis_url: str, mysql_url: str, queue: str, *extra: str) -> None:
        self.argv = [*SCRIPTS[lang], "--workers", str(WORKERS), "--redis", redis_url, "--mysql", mysql_url,
                     "--queue", queue, "--report-every", "0.5", *extra]
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.start_times: dict[int, int] = {}  # worker pid -> its start time (-1: gone before we looked)
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, cwd=str(ROOT))
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, into: list[str]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            started = STARTED.match(line)
            if started:  # note when it started, so that a reused pid is not taken for it
                stat = proc_stat(int(started[2]))
                self.start_times[int(started[2])] = stat[1] if stat else -1
            with self.changed:
                into.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def output(self) -> str:
        with self.changed:
            return "\n".join(self.lines[-40:]) + "\n--- stderr ---\n" + "\n".join(self.errors[-20:])

    def wait_line(self, pattern: str, timeout: float, start: int = 0) -> tuple[int, re.Match]:
        """The first line from index ``start`` on matching ``pattern``: (index, match)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for index in range(start, len(self.lines)):
                    match = regex.search(self.lines[index])
                    if match:
                        return index, match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and all(not r.is_alive() for r in self.readers)):
                    raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.output()}")
                self.changed.wait(min(left, 0.2))

    def matching(self, regex: re.Pattern) -> list[re.Match]:
        with self.changed:
            return [m for m in (regex.match(line) for line in self.lines) if m]

    def worker_pids(self) -> dict[int, int]:
        """Workers started and not reported exited: id -> pid."""
        exited = {int(m[1]) for m in self.matching(EXITED)}
        return {int(m[1]): int(m[2]) for m in self.matching(STARTED) if int(m[1]) not in exited}

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_line(r"^ready queue=\S+ workers=\d+$", timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful stop); waits for the primary to exit; returns its code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the primary did not exit within {timeout} s of SIGTERM:\n{self.output()}")
        for reader in self.readers:
            reader.join(5)
        return code

    def running_workers(self) -> list[int]:
        """Pids of the workers it reported that still run (checked by start time)."""
        return [pid for m in self.matching(STARTED)
                if alive(pid := int(m[2]), self.start_times.get(pid, -1))]

    def kill_all(self) -> None:
        """Cleanup: SIGKILL the primary and every worker it reported, by pid."""
        pids = self.running_workers()
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for pid in pids:  # the workers are the primary's children: its exit lets init reap them
            wait_until(lambda pid=pid: not alive(pid, self.start_times[pid]), 10, f"worker pid {pid} to go")


class Run:
    """One scenario: a fresh database and queue, the cluster, and the checks."""

    def __init__(self, lang: str, name: str, redis_server: RedisServer, mariadb: MariaDB) -> None:
        self.lang = lang
        self.queue = f"q:{lang}:{name}:{os.getpid()}"
        self.database = f"queue_{lang}_{name}"
        self.redis = redis_server.client()
        self.mariadb = mariadb
        mariadb.create_database(self.database)
        self.mysql_url = mariadb.url(self.database)
        self.redis_url = redis_server.url
        self._db: Optional[pymysql.connections.Connection] = None
        self.pushed_ids: list[str] = []
        self.cluster: Optional[QueueCluster] = None

    def start(self, *extra: str) -> QueueCluster:
        self.cluster = QueueCluster(self.lang, self.redis_url, self.mysql_url, self.queue, *extra)
        self.cluster.wait_ready()
        return self.cluster

    # -- jobs ------------------------------------------------------------------

    def push(self, count: int, malformed: Optional[list[bytes]] = None) -> None:
        """Pushes ``count`` valid jobs (ids continue from the last push),
        with ``malformed`` mixed in at random places."""
        first = len(self.pushed_ids)
        ids = [f"{self.lang}-{i}" for i in range(first, first + count)]
        jobs: list[bytes] = [json.dumps({"id": i, "payload": {"n": n, "text": "é€"}}).encode()
                             for n, i in enumerate(ids, start=first)]
        for bad in malformed or []:
            jobs.insert(random.Random(len(jobs)).randrange(len(jobs) + 1), bad)
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(jobs), 1000):
            pipe.lpush(self.queue, *jobs[start:start + 1000])
        pipe.execute()
        self.pushed_ids.extend(ids)

    # -- the table, read whatever state the server is in ----------------------

    def db(self) -> pymysql.connections.Connection:
        if self._db is None:
            self._db = self.mariadb.connect(self.database)
        return self._db

    def query(self, sql: str) -> list[tuple]:
        """Runs a read; a connection the server dropped (it was restarted) is
        made again once."""
        for attempt in (1, 2):
            try:
                with self.db().cursor() as cursor:
                    cursor.execute(sql)
                    return list(cursor.fetchall())
            except pymysql.MySQLError:
                self._db = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def rows(self) -> int:
        """Rows in the table; -1 while the database cannot answer."""
        try:
            return int(self.query("SELECT COUNT(*) FROM jobs")[0][0])
        except pymysql.MySQLError:
            return -1

    def wait_rows(self, at_least: int, timeout: float = 60.0) -> None:
        wait_until(lambda: self.rows() >= at_least, timeout,
                   lambda: f"{at_least} rows in {self.database} (have {self.rows()})\n{self.output()}", interval=0.01)

    def output(self) -> str:
        return self.cluster.output() if self.cluster else ""

    def wait_drained(self, dead: int = 0, timeout: float = 90.0) -> None:
        """Until every pushed job is a row or a dead letter and no job is held."""
        def drained() -> bool:
            return (self.rows() == len(self.pushed_ids) and self.redis.llen(self.queue) == 0
                    and self.redis.llen(f"{self.queue}:dead") == dead and not self.processing_lists())
        wait_until(drained, timeout, lambda: (
            f"the queue to drain: rows={self.rows()} of {len(self.pushed_ids)}, queue={self.redis.llen(self.queue)}, "
            f"dead={self.redis.llen(f'{self.queue}:dead')}, processing={self.processing_lists()}\n{self.output()}"
        ), interval=0.05)

    def processing_lists(self) -> dict[str, int]:
        """Processing lists that hold something (an empty Redis list does not exist)."""
        keys = self.redis.scan_iter(match=f"{self.queue}:processing:*".replace("[", "\\["), count=1000)
        return {k.decode(): self.redis.llen(k) for k in keys}

    # -- the count check -------------------------------------------------------

    def check_counts(self, queued: Optional[set[str]] = None, dead: Optional[dict[str, str]] = None,
                     done_and_queued: Optional[set[str]] = None) -> None:
        """Every id pushed is a row exactly once, or (``queued``) still in the
        queue; nothing else is anywhere; no processing list holds anything;
        the dead-letter list holds exactly ``dead`` (job text -> reason).
        Only the ids in ``done_and_queued`` may be both a row and queued."""
        rows = [r[0].decode() for r in self.query("SELECT job_id FROM jobs")]
        assert len(rows) == len(set(rows)), "a job id is in the table twice"
        in_queue = [json.loads(raw)["id"] for raw in self.redis.lrange(self.queue, 0, -1)]
        assert len(in_queue) == len(set(in_queue)), "a job is in the queue twice"
        both = set(rows) & set(in_queue)
        assert both <= (done_and_queued or set()), f"jobs both done and still queued: {sorted(both)[:10]}"
        assert set(rows) | set(in_queue) == set(self.pushed_ids), (
            f"lost: {sorted(set(self.pushed_ids) - set(rows) - set(in_queue))[:10]}, "
            f"unknown: {sorted((set(rows) | set(in_queue)) - set(self.pushed_ids))[:10]}"
        )
        assert set(in_queue) == (queued or set()), f"{len(in_queue)} jobs left in the queue"
        assert self.processing_lists() == {}, f"processing lists left: {self.processing_lists()}"
        entries = [json.loads(e) for e in self.redis.lrange(f"{self.queue}:dead", 0, -1)]
        got = {e["job"]: e["reason"] for e in entries}
        assert len(got) == len(entries), "a dead letter is there twice"
        want = dead or {}
        assert got == want, (
            f"dead letters differ: missing {sorted(set(want) - set(got))[:5]}, unexpected {sorted(set(got) - set(want))[:5]}, "
            f"wrong reason {[(k, got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k]][:5]}"
        )
        for entry in entries:
            assert entry["worker"] >= 1 and entry["at"], entry
        # Every payload made it intact (and is JSON in the database).
        sample = self.query("SELECT job_id, payload FROM jobs ORDER BY RAND() LIMIT 50")
        for job_id, payload in sample:
            assert json.loads(payload) == {"n": int(job_id.decode().rsplit("-", 1)[1]), "text": "é€"}

    def stop_and_check_exit(self) -> QueueCluster:
        cluster = self.cluster
        assert cluster is not None
        assert cluster.stop() == 0, cluster.output()
        cluster.wait_line(r"^stopped ", 5)
        for worker_id, pid in cluster.worker_pids().items():
            raise AssertionError(f"worker {worker_id} (pid {pid}) never reported its exit:\n{cluster.output()}")
        assert cluster.running_workers() == [], "workers outlived the primary"
        return cluster

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.kill_all()
        if self._db is not None:
            try:
                self._db.close()
            except Exception:
                pass
        keys = list(self.redis.scan_iter(match=f"{self.queue}*".replace("[", "\\["), count=1000))
        if keys:
            self.redis.delete(*keys)
        self.redis.close()


@pytest.fixture
def run_factory(redis_server, mariadb, lang, request) -> Iterator[Callable[[str], Run]]:
    runs: list[Run] = []

    def make(name: str) -> Run:
        if not mariadb.running:  # a test that killed it failed before starting it again
            mariadb.start(same_port=True)
        run = Run(lang, name, redis_server, mariadb)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def final_counts(cluster: QueueCluster) -> dict[str, int]:
    """done, dup, rejected, db_retries from the primary's last line."""
    _, m = cluster.wait_line(r"^stopped done=(\d+) dup=(\d+) .* rejected=(\d+) db_retries=(\d+) ", 5)
    return {"done": int(m[1]), "dup": int(m[2]), "rejected": int(m[3]), "db_retries": int(m[4])}


# ----- the scenarios ------------------------------------------------------------


def test_jobs_go_through_four_workers_exactly_once(run_factory) -> None:
    run = run_factory("plain")
    cluster = run.start()
    run.push(JOBS)
    run.wait_drained()
    run.stop_and_check_exit()
    run.check_counts()
    counts = final_counts(cluster)
    # Progress: the workers' reports add up, and a line showed each worker's count.
    assert counts["done"] + counts["dup"] == JOBS and counts["rejected"] == 0, counts
    per_worker = [m for m in cluster.matching(re.compile(r"^progress .* rate=(\d+)/s .* workers=(\d+:\d+(,\d+:\d+)*)$"))]
    assert any(len(m[2].split(",")) == WORKERS and int(m[1]) > 0 for m in per_worker), cluster.output()


def kill_while_holding_a_job(run: "Run", pid: int, started: int, its_list: str) -> None:
    """SIGKILLs the worker at a moment its processing list holds a job: it
    is stopped (SIGSTOP) and its list looked at; if empty, it goes on
    (SIGCONT) and we look again. 10 ms after the stop lets a command it
    had already sent (an LREM) land before we look."""
    deadline = time.monotonic() + 30
    while True:
        assert alive(pid, started), f"worker pid {pid} died on its own"
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: (proc_stat(pid) or ("T", 0))[0] in ("T", "t"), 5, f"pid {pid} to stop")
        time.sleep(0.01)
        if run.redis.llen(its_list) > 0:
            os.kill(pid, signal.SIGKILL)
            return
        os.kill(pid, signal.SIGCONT)
        if run.redis.llen(run.queue) == 0:
            run.push(50)  # the others drained the batch before we caught it busy
        assert time.monotonic() < deadline, f"worker pid {pid} never seen holding a job"
        time.sleep(0.002)


def test_worker_killed_every_500_jobs_loses_nothing(run_factory) -> None:
    run = run_factory("sigkill")
    # 20 kills over 4 slots is 5 unexpected exits per slot within 30 s: the
    # default crash-loop limit (5) would stop restarting them, rightly.
    cluster = run.start("--crash-loop-count", "10")
    kills = 0
    for batch in range(JOBS // 500):
        base = len(run.pushed_ids)
        victims = cluster.worker_pids()
        victim_id = min(victims)  # the oldest: every slot in turn
        victim_list = f"{run.queue}:processing:{victim_id}"
        run.push(500)
        seen = len(cluster.lines)
        kill_while_holding_a_job(run, victims[victim_id], cluster.start_times[victims[victim_id]], victim_list)
        kills += 1
        cluster.wait_line(rf"^worker {victim_id} exited signal 9 unasked recovered \d+$", 20, seen)
        cluster.wait_line(r"^worker \d+ ready$", 30, seen)  # its replacement
        run.wait_rows(base + 500)
    run.wait_drained()
    run.stop_and_check_exit()
    run.check_counts()
    recovered = sum(int(m[5]) for m in cluster.matching(EXITED) if m[4] == "unasked")
    assert kills == 20 and len(run.pushed_ids) >= JOBS
    # Every victim held a job when it was killed, and the primary gave it back.
    assert recovered == kills, f"{recovered} jobs recovered from {kills} killed workers that each held one"
    assert not any("crash-looping" in line for line in cluster.lines)


def test_five_rolling_reloads_during_the_run(run_factory) -> None:
    run = run_factory("reload")
    cluster = run.start()
    reloads_done = threading.Event()
    failed = threading.Event()

    def feed() -> None:
        # About 400 jobs/s while the reloads run (so each happens under
        # load), the rest of the 10,000 at once when they are done.
        while not reloads_done.is_set() and not failed.is_set():
            run.push(min(40, JOBS - len(run.pushed_ids)))
            time.sleep(0.1)
        if reloads_done.is_set():
            run.push(JOBS - len(run.pushed_ids))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    during: list[tuple[int, int]] = []  # rows at each SIGHUP and at its reload's end
    try:
        for generation in range(1, 6):
            seen = len(cluster.lines)
            before = run.rows()
            cluster.proc.send_signal(signal.SIGHUP)
            cluster.wait_line(rf"^reload done generation {generation}$", 60, seen)
            # Every worker of the generation before left (after finishing its job).
            wait_until(lambda: len(cluster.matching(EXITED)) >= 4 * generation, 30,
                       f"the old workers of generation {generation - 1} to exit\n{cluster.output()}")
            during.append((before, run.rows()))
        reloads_done.set()
    except BaseException:
        failed.set()
        raise
    finally:
        feeder.join(60)
    assert len(run.pushed_ids) == JOBS
    run.wait_drained()
    run.stop_and_check_exit()
    run.check_counts()
    exits = cluster.matching(EXITED)
    assert len(exits) == 4 * 6  # 5 reloads replaced 4 workers each, then the stop
    for m in exits:
        # A worker asked to leave finished its job and took no other: it
        # exited on its own (code 0) with an empty processing list.
        assert (m[2], m[3], m[4], m[5]) == ("code", "0", "asked", "0"), m[0]
    # Jobs were done during every reload: no stop in service.
    assert all(after > before for before, after in during), during


MALFORMED_KINDS: list[tuple[Callable[[int], bytes], str]] = [
    (lambda i: f"not json {i}".encode(), "invalid JSON"),
    (lambda i: b'{"id": "x' + str(i).encode() + b'", "payload": \xff}', "invalid JSON"),  # not UTF-8
    (lambda i: f'{{"id": "trunc-{i}", "payload": '.encode(), "invalid JSON"),
    (lambda i: f'["array", {i}]'.encode(), "not an object"),
    (lambda i: f'"just a string {i}"'.encode(), "not an object"),
    (lambda i: f'{{"payload": {i}}}'.encode(), "missing field: id"),
    (lambda i: f'{{"id": "no-payload-{i}"}}'.encode(), "missing field: payload"),
    (lambda i: f'{{"id": "", "payload": {i}}}'.encode(), "bad field: id"),
    (lambda i: f'{{"id": {{"nested": {i}}}, "payload": 1}}'.encode(), "bad field: id"),
    (lambda i: f'{{"id": "{"x" * 65}", "payload": {i}}}'.encode(), "bad field: id"),
    (lambda i: f'{{"id": -{i + 1}, "payload": 1}}'.encode(), "bad field: id"),
    (lambda i: f'{{"id": true, "payload": {i}}}'.encode(), "bad field: id"),
    (lambda i: f'{{"id": "big-{i}", "payload": "{"x" * (1 << 20)}"}}'.encode(), "too large"),
]


def test_malformed_jobs_go_to_the_dead_letter_list(run_factory) -> None:
    run = run_factory("malformed")
    malformed = [MALFORMED_KINDS[i % len(MALFORMED_KINDS)][0](i) for i in range(100)]
    expected = {raw.decode("utf-8", "replace"): MALFORMED_KINDS[i % len(MALFORMED_KINDS)][1]
                for i, raw in enumerate(malformed)}
    assert len(expected) == 100
    cluster = run.start()
    run.push(JOBS, malformed=malformed)
    run.wait_drained(dead=100)
    run.stop_and_check_exit()
    run.check_counts(dead=expected)
    counts = final_counts(cluster)
    assert counts["rejected"] == 100, counts
    # No worker crashed on them.
    assert not [m for m in cluster.matching(EXITED) if m[4] == "unasked"], cluster.output()
    details = [json.loads(e)["detail"] for e in run.redis.lrange(f"{run.queue}:dead", 0, -1)]
    assert sum(1 for d in details if d) >= 40  # parse errors say where


def test_database_down_for_three_seconds_loses_and_doubles_nothing(run_factory, mariadb) -> None:
    run = run_factory("dbdown")
    cluster = run.start()
    run.push(JOBS)
    run.wait_rows(3000)
    mariadb.kill()
    try:
        time.sleep(3)
        assert run.rows() == -1
    finally:
        mariadb.start(same_port=True)
    run.wait_drained()
    run.stop_and_check_exit()
    run.check_counts()
    counts = final_counts(cluster)
    # Each worker noticed and backed off (0.1 s doubling to 2 s): a handful
    # of retries each over the outage and the restart, not a spin.
    assert WORKERS <= counts["db_retries"] <= WORKERS * 15, counts
    assert counts["done"] + counts["dup"] == JOBS, counts
    assert not [m for m in cluster.matching(EXITED) if m[4] == "unasked"], cluster.output()


def test_graceful_stop_mid_run_leaves_the_rest_queued(run_factory) -> None:
    run = run_factory("stop")
    cluster = run.start()
    run.push(JOBS)
    run.wait_rows(2000)
    run.stop_and_check_exit()
    remaining = {json.loads(raw)["id"] for raw in run.redis.lrange(run.queue, 0, -1)}
    assert remaining, "every job was done before the stop: the test did not stop mid-run"
    run.check_counts(queued=remaining)
    for m in cluster.matching(EXITED):
        assert (m[2], m[3], m[4], m[5]) == ("code", "0", "asked", "0"), m[0]


def test_stop_while_the_database_is_down_gives_the_jobs_back(run_factory, mariadb) -> None:
    run = run_factory("stopdbdown")
    cluster = run.start()
    run.push(2000)
    run.wait_rows(500)
    mariadb.kill()
    try:
        # Each worker now holds a job it cannot insert, and backs off.
        wait_until(lambda: len(run.processing_lists()) == WORKERS, 10,
                   lambda: f"every worker to hold a job: {run.processing_lists()}")
        # The insert of a job in hand when the database died may have been
        # committed with its answer lost: that job is given back and is then
        # both a row and queued (at least once; its next insert is a no-op).
        held = {json.loads(raw)["id"] for key in run.processing_lists() for raw in run.redis.lrange(key, 0, -1)}
        asked_at = time.monotonic()
        assert cluster.stop() == 0, cluster.output()
        # They gave their jobs back and left; nobody waited for the stop timeout (10 s).
        assert time.monotonic() - asked_at < 5, cluster.output()
    finally:
        mariadb.start(same_port=True)
    remaining = {json.loads(raw)["id"] for raw in run.redis.lrange(run.queue, 0, -1)}
    run.check_counts(queued=remaining, done_and_queued=held)
    exits = cluster.matching(EXITED)
    assert len(exits) == WORKERS
    for m in exits:
        assert (m[2], m[3], m[4], m[5]) == ("code", "0", "asked", "0"), m[0]


def test_a_job_that_kills_its_workers_goes_to_the_dead_letter_list(run_factory, mariadb) -> None:
    run = run_factory("poison")
    cluster = run.start("--crash-loop-count", "10")
    run.push(1000)
    run.wait_drained()
    # A job whose handling kills the worker: here the test does the killing.
    # It holds the row's lock, so a worker that takes the job waits in its
    # INSERT (with the job in its processing list) until it is killed.
    locker = mariadb.connect(run.database)
    poison = json.dumps({"id": "poison", "payload": {"n": -1}}).encode()
    try:
        with locker.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("INSERT INTO jobs (job_id, payload, worker) VALUES ('poison', '{}', 0)")
        run.redis.lpush(run.queue, poison)
        run.push(1000)  # the others keep working meanwhile
        for death in range(1, 4):
            def holder() -> Optional[int]:
                for key in run.processing_lists():
                    if poison in run.redis.lrange(key, 0, -1):
                        return int(key.rsplit(":", 1)[1])
                return None

            worker_id = wait_until(holder, 30, f"a worker to take the poison job (death {death})")
            pid = cluster.worker_pids()[worker_id]
            seen = len(cluster.lines)
            assert alive(pid, cluster.start_times[pid])
            os.kill(pid, signal.SIGKILL)
            cluster.wait_line(rf"^worker {worker_id} exited signal 9 unasked recovered 1$", 20, seen)
        wait_until(lambda: run.redis.llen(f"{run.queue}:dead") == 1, 10, "the poison job to be dead-lettered")
        # Let the killed workers' abandoned INSERTs (still waiting on the lock
        # in the server) finish as no-ops, then take the test's row away.
        locker.commit()
        wait_until(lambda: not run.query(
            f"SELECT id FROM information_schema.PROCESSLIST WHERE DB = '{run.database}' AND INFO LIKE 'INSERT%'"),
            30, "the abandoned inserts to finish")
        with locker.cursor() as cursor:
            cursor.execute("DELETE FROM jobs WHERE job_id = 'poison'")
    finally:
        locker.close()
    run.wait_drained(dead=1)
    run.stop_and_check_exit()
    run.check_counts(dead={poison.decode(): "worker died holding it"})
    entry = json.loads(run.redis.lindex(f"{run.queue}:dead", 0))
    assert entry["detail"].startswith("3 workers died"), entry
    assert run.redis.hlen(f"{run.queue}:deaths") == 0  # its count went with it


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers"),
    (["--workers", "two"], "--workers"),
    (["--mysql", "http://x/db"], "--mysql"),
    (["--mysql", "mysql://root@127.0.0.1:3306"], "--mysql"),
    (["--redis", "nonsense"], "--redis"),
    (["--bogus", "1"], "--bogus"),
])
def test_bad_arguments_exit_2_with_one_line(lang, args, message) -> None:
    proc = subprocess.run([*SCRIPTS[lang], *args], capture_output=True, timeout=30, cwd=str(ROOT))
    assert proc.returncode == 2, proc
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("queue_worker: ") and message in lines[0], lines
    assert proc.stdout == b""


@pytest.mark.parametrize("down", ["redis", "mysql"])
def test_unreachable_server_at_start_exits_1_with_one_line(lang, down, redis_server, mariadb) -> None:
    from servers import free_port

    closed = free_port()  # nothing listens there
    redis_url = f"redis://127.0.0.1:{closed}/0" if down == "redis" else redis_server.url
    mysql_url = f"mysql://root@127.0.0.1:{closed}/x" if down == "mysql" else mariadb.url("x")
    proc = subprocess.run([*SCRIPTS[lang], "--workers", "1", "--redis", redis_url, "--mysql", mysql_url],
                          capture_output=True, timeout=60, cwd=str(ROOT))
    assert proc.returncode == 1, proc
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"queue_worker: cannot ") and str(closed) in lines[0], lines
    assert proc.stdout == b""  # no worker was started
