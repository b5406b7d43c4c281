#!/usr/bin/env python3
"""The queue-worker example (issue 23), in Python: jobs from a Redis list
into MariaDB/MySQL, with no job lost. See ../README.md for the guarantees.

    .venv/bin/python examples/queue/python/queue_worker.py --workers 4 \
        --redis redis://127.0.0.1:6379/0 --mysql mysql://root@127.0.0.1:3306/app --queue jobs

The primary (this program) checks both servers, creates the table, returns
processing lists left by an earlier primary to the queue, then starts N
workers (this program again) and supervises them: restarts with backoff,
SIGHUP rolling reload, SIGTERM/SIGINT graceful stop (exit 0). When a worker
exits, the primary moves what its processing list still holds back to the
queue. Every --report-every seconds it prints a progress line.

A worker takes one job at a time with BLMOVE from the queue to its own
processing list (`<queue>:processing:<worker id>`), inserts the row (the
job id is the primary key: a job delivered twice is one row), then removes
the job from its list. Bad jobs go to `<queue>:dead` with the reason.
The Node version (../node/queue_worker.js) behaves the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any, Optional, Union
from urllib.parse import unquote, urlsplit

import pymysql
import redis

from redis.backoff import NoBackoff
from redis.retry import Retry

import rcluster

PROG = "queue_worker"
# A blocking take waits at most this long, so a worker asked to leave while
# the queue is empty notices within that time (the take never loses a job:
# a BLMOVE that times out moved nothing).
TAKE_TIMEOUT_S = 1.0
REPORT_TO_PRIMARY_S = 0.2
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
ID_MAX_CHARS = 64
# A job larger than this is rejected: a row far beyond it would be refused
# by the server's max_allowed_packet as a connection error, retried forever.
JOB_MAX_BYTES = 1 << 20
# The third worker to die holding a job sends it to the dead-letter list.
MAX_DEATHS = 3
DEATHS_TTL_S = 86400  # the death counts expire a day after the last death
TABLE = "jobs"
CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
  job_id  VARBINARY(256) NOT NULL PRIMARY KEY,
  payload JSON NOT NULL,
  worker  INT UNSIGNED NOT NULL,
  done_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""
# A duplicate id is a no-op (0 rows affected): the job was done before, by a
# worker that died before it could remove it from its processing list.
INSERT = f"INSERT INTO {TABLE} (job_id, payload, worker) VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE job_id = job_id"


# ----- command line ------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line on stderr, exit 2
        self.exit(2, f"{PROG}: {message}\n")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description="rcluster queue worker: Redis list -> MariaDB (Python)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/rcluster")
    parser.add_argument("--queue", default="jobs")
    parser.add_argument("--report-every", type=float, default=5.0, help="seconds between progress lines (0: none)")
    parser.add_argument(
        "--crash-loop-count", type=int, default=5,
        help="unexpected exits of one slot within 30 s that stop its restarts (0: never stop)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    if not args.queue:
        parser.error("--queue must not be empty")
    if args.report_every < 0:
        parser.error(f"--report-every must be >= 0, not {args.report_every}")
    if args.crash_loop_count < 0:
        parser.error(f"--crash-loop-count must be >= 0, not {args.crash_loop_count}")
    if urlsplit(args.redis).scheme not in ("redis", "rediss"):
        parser.error(f"--redis must be a redis:// URL, not {args.redis!r}")
    try:
        args.mysql_params = mysql_params(args.mysql)
    except ValueError as e:
        parser.error(f"--mysql: {e}")
    return args


def mysql_params(url: str) -> dict[str, Any]:
    """``mysql://user:password@host:port/database`` -> PyMySQL's connect()."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError(f"must be a mysql:// URL, not {url!r}")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError(f"must name one database (mysql://user@host:port/DATABASE), not {url!r}")
    try:
        port = parts.port or 3306
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": port,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": database,
    }


def processing_list(queue: str, worker_id: Union[int, str]) -> str:
    """The worker's own list of jobs taken and not finished. Named by the
    worker's id, which the primary never reuses: a dead worker's list has
    no other writer, so the primary can empty it whenever it likes."""
    return f"{queue}:processing:{worker_id}"


def dead_list(queue: str) -> str:
    return f"{queue}:dead"


def redis_client(url: str, **options: Any) -> redis.Redis:
    # No retries inside the client: a command that fails, fails, and we back
    # off and resynchronise ourselves. Resending a BLMOVE whose reply was
    # lost would take a second job while the first sits unseen in our list.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_keepalive=True,
                                retry=Retry(NoBackoff(), 0), **options)


def mysql_connect(params: dict[str, Any]) -> pymysql.connections.Connection:
    return pymysql.connect(
        **params, autocommit=True, charset="utf8mb4", connect_timeout=2, read_timeout=10, write_timeout=10
    )


def deaths_key(queue: str) -> str:
    """Hash: SHA-1 of a job -> how many workers died holding it."""
    return f"{queue}:deaths"


def give_back_after_crash(r: redis.Redis, queue: str, worker_id: int) -> int:
    """Empties the processing list of a worker that died unasked: each job
    goes back to the queue, unless this is the MAX_DEATHS-th worker that
    died holding it: then it goes to the dead-letter list, so a job that
    kills its workers cannot crash-loop them all and stop the queue.
    Returns how many jobs left the list."""
    source = processing_list(queue, worker_id)
    moved = 0
    while (raw := r.lindex(source, -1)) is not None:
        digest = hashlib.sha1(raw).hexdigest()
        pipe = r.pipeline(transaction=True)
        pipe.hincrby(deaths_key(queue), digest, 1)
        pipe.expire(deaths_key(queue), DEATHS_TTL_S)
        deaths = pipe.execute()[0]
        if deaths >= MAX_DEATHS:
            entry = dead_entry(raw, "worker died holding it",
                               f"{deaths} workers died while they held this job", worker_id)
            pipe = r.pipeline(transaction=True)
            pipe.lpush(dead_list(queue), entry)
            pipe.lrem(source, -1, raw)
            pipe.hdel(deaths_key(queue), digest)
            pipe.execute()
        else:
            r.lmove(source, queue, "RIGHT", "RIGHT")  # the one we looked at: the list has no other writer
        moved += 1
    return moved


def dead_entry(raw: bytes, reason: str, detail: str, worker_id: int) -> str:
    return json.dumps({
        "reason": reason,
        "detail": detail,
        "job": raw.decode("utf-8", "replace"),
        "worker": worker_id,
        "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }, ensure_ascii=False)


def return_to_queue(r: redis.Redis, queue: str, source: str) -> int:
    """Moves every job of ``source`` back to the consuming end of the queue,
    one atomic LMOVE at a time; returns how many."""
    moved = 0
    while r.lmove(source, queue, "RIGHT", "RIGHT") is not None:
        moved += 1
    return moved


# ----- the worker ----------------------------------------------------------


class Reject(Exception):
    """A job that can never be done: it goes to the dead-letter list."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_job(raw: bytes) -> tuple[str, str]:
    """A job's id and its payload as JSON text, or :class:`Reject`.
    A job is a JSON object with ``id`` (a string of 1 to 64 characters, or
    a non-negative integer below 2**53) and ``payload`` (any JSON value)."""
    if len(raw) > JOB_MAX_BYTES:
        raise Reject("too large", f"{len(raw)} bytes; the limit is {JOB_MAX_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Reject("invalid JSON", f"not UTF-8: {e}") from None
    try:
        job = json.loads(text, parse_constant=_no_constants)
    except ValueError as e:
        raise Reject("invalid JSON", str(e)) from None
    if not isinstance(job, dict):
        raise Reject("not an object", f"a JSON {type(job).__name__}")
    if "id" not in job:
        raise Reject("missing field: id")
    job_id = job["id"]
    if isinstance(job_id, int) and not isinstance(job_id, bool) and 0 <= job_id < 2**53:
        job_id = str(job_id)
    elif not (isinstance(job_id, str) and 1 <= len(job_id) <= ID_MAX_CHARS and _well_formed(job_id)):
        raise Reject("bad field: id", f"must be a string of 1 to {ID_MAX_CHARS} characters or an integer, not {job_id!r}")
    if "payload" not in job:
        raise Reject("missing field: payload")
    payload = json.dumps(job["payload"], separators=(",", ":"), ensure_ascii=False)
    if not _well_formed(payload):
        payload = json.dumps(job["payload"], separators=(",", ":"))  # lone surrogates as \u escapes
    return job_id, payload


def _well_formed(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class Leaving(Exception):
    """The primary asked this worker to leave while it waited for a server."""


class Consumer:
    """One worker's loop: take a job, do it, remove it; report to the primary."""

    def __init__(self, args: argparse.Namespace, worker: rcluster.Worker) -> None:
        self.args = args
        self.worker = worker
        self.queue: str = args.queue
        self.mine = processing_list(args.queue, worker.id)
        self.dead = dead_list(args.queue)
        self.redis = redis_client(args.redis)
        self.db: Optional[pymysql.connections.Connection] = None
        self.counts = {"done": 0, "dup": 0, "dead": 0, "db_retries": 0, "redis_retries": 0}
        self.reported_at = 0.0
        self.reported: dict[str, int] = {}

    # -- the primary's side ---------------------------------------------

    def leaving(self) -> bool:
        """Takes the worker's events; true once the primary asked us to leave
        (or is gone)."""
        if not self.worker.ended:
            self.worker.poll()
        return self.worker.disconnecting or self.worker.ended

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.reported_at < REPORT_TO_PRIMARY_S:
            return
        self.reported_at = now
        self.reported = dict(self.counts)
        try:
            self.worker.send_json(self.counts)
        except rcluster.Error:
            pass  # the primary is gone; it counts nothing any more

    def backoff(self, attempt: int, what: str, error: BaseException) -> None:
        """Sleeps before retry ``attempt`` (0.1 s doubling up to 2 s),
        watching for a request to leave (then raises :class:`Leaving`)."""
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt)
        if attempt == 0 or delay == BACKOFF_MAX_S:
            print(f"{PROG}: worker {self.worker.id}: {what}: {error}; retrying in {delay:.1f} s", file=sys.stderr, flush=True)
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if self.leaving():
                raise Leaving()
            time.sleep(min(left, 0.1))

    # -- servers ---------------------------------------------------------

    def connect(self) -> None:
        """Waits (backing off) until both servers answer."""
        attempt = 0
        while True:
            try:
                self.redis.ping()
                self.db_connection()
                return
            except (redis.RedisError, pymysql.MySQLError) as e:
                self.backoff(attempt, "cannot reach the servers", e)
                attempt += 1

    def db_connection(self) -> pymysql.connections.Connection:
        if self.db is None:
            self.db = mysql_connect(self.args.mysql_params)
        return self.db

    def drop_db(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            try:
                db.close()
            except Exception:
                pass

    # -- the loop --------------------------------------------------------

    def run(self) -> None:
        attempt = 0
        while not self.leaving():
            try:
                raw = self.redis.lmove(self.queue, self.mine, "RIGHT", "LEFT")
                if raw is None:
                    # The queue is empty: tell the primary what we did before
                    # we block (we may be asked to leave while blocked).
                    self.report(force=self.counts != self.reported)
                    raw = self.redis.blmove(self.queue, self.mine, TAKE_TIMEOUT_S, "RIGHT", "LEFT")
                if raw is not None:
                    self.handle(raw)
                attempt = 0
            except Leaving:
                break
            except redis.RedisError as e:
                # We may hold a job we never saw (a BLMOVE whose reply was
                # lost) or one whose LREM failed: give back whatever our list
                # holds once Redis answers; the insert is idempotent.
                self.counts["redis_retries"] += 1
                try:
                    self.backoff(attempt, "redis", e)
                except Leaving:
                    break
                attempt += 1
                try:
                    return_to_queue(self.redis, self.queue, self.mine)
                except redis.RedisError:
                    pass  # next turn fails again and backs off longer
            self.report()
        self.report(force=True)

    def handle(self, raw: bytes) -> None:
        try:
            job_id, payload = parse_job(raw)
        except Reject as e:
            self.dead_letter(raw, e.reason, e.detail)
            return
        except Exception as e:  # a bug of ours must not stop the queue either
            self.dead_letter(raw, "worker error", repr(e))
            return
        try:
            inserted = self.insert(job_id, payload)
        except Reject as e:
            self.dead_letter(raw, e.reason, e.detail)
            return
        except Leaving:
            # Asked to leave while the database is away: give the job back
            # rather than hold it until the stop timeout kills us.
            self.redis.lmove(self.mine, self.queue, "RIGHT", "RIGHT")
            raise
        # Done: only now does the job leave our processing list. Dying
        # before this line leaves it there; it comes back and the second
        # insert is a no-op.
        self.redis.lrem(self.mine, 1, raw)
        self.counts["done" if inserted else "dup"] += 1

    def insert(self, job_id: str, payload: str) -> bool:
        """Inserts the row, retrying with backoff while the database is away;
        true if inserted, false if the id was there already."""
        attempt = 0
        while True:
            try:
                with self.db_connection().cursor() as cursor:
                    return cursor.execute(INSERT, (job_id.encode(), payload, self.worker.id)) == 1
            except (pymysql.err.DataError, pymysql.err.IntegrityError) as e:
                raise Reject("rejected by database", str(e)) from None
            except pymysql.MySQLError as e:
                # Connection lost or refused, server restarting, lock
                # timeout, a missing table: none of it is the job's fault.
                self.drop_db()
                self.counts["db_retries"] += 1
                self.backoff(attempt, "database", e)
                attempt += 1

    def dead_letter(self, raw: bytes, reason: str, detail: str) -> None:
        # One transaction: the job is in the dead-letter list or in our
        # processing list, never both, never neither.
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.dead, dead_entry(raw, reason, detail, self.worker.id))
        pipe.lrem(self.mine, 1, raw)
        pipe.execute()
        self.counts["dead"] += 1


def run_worker(args: argparse.Namespace) -> int:
    worker = rcluster.worker()
    consumer = Consumer(args, worker)
    try:
        consumer.connect()
    except Leaving:
        worker.close()
        return 0
    worker.ready()  # a reload stops the worker we replace only now
    worker.send_json({"ready": True})
    consumer.run()
    consumer.drop_db()
    worker.close()
    return 0


# ----- the primary -----------------------------------------------------------


class Progress:
    """What the workers reported, and the line printed every few seconds."""

    def __init__(self) -> None:
        self.live: dict[int, dict[str, int]] = {}  # worker id -> its counts
        self.gone: dict[str, int] = {}  # summed counts of exited workers
        self.last_done = 0
        self.last_at = time.monotonic()

    def update(self, worker_id: int, counts: dict[str, int]) -> None:
        self.live[worker_id] = counts

    def exited(self, worker_id: int) -> None:
        for key, value in self.live.pop(worker_id, {}).items():
            self.gone[key] = self.gone.get(key, 0) + value

    def total(self, key: str) -> int:
        return self.gone.get(key, 0) + sum(c.get(key, 0) for c in self.live.values())

    def line(self, r: redis.Redis, queue: str) -> str:
        now = time.monotonic()
        done = self.total("done") + self.total("dup")
        rate = (done - self.last_done) / max(now - self.last_at, 1e-9)
        self.last_done, self.last_at = done, now
        try:
            pipe = r.pipeline(transaction=False)
            pipe.llen(queue)
            pipe.llen(dead_list(queue))
            for worker_id in sorted(self.live):
                pipe.llen(processing_list(queue, worker_id))
            depth, dead, *held = pipe.execute()
            lists = f"queue={depth} processing={sum(held)} dead={dead}"
        except redis.RedisError as e:
            lists = f"queue=? (redis: {e})"
        per_worker = ",".join(f"{i}:{c.get('done', 0) + c.get('dup', 0)}" for i, c in sorted(self.live.items()))
        return (
            f"progress done={self.total('done')} dup={self.total('dup')} rate={rate:.0f}/s {lists} "
            f"rejected={self.total('dead')} db_retries={self.total('db_retries')} workers={per_worker or '-'}"
        )


def check_servers(args: argparse.Namespace) -> redis.Redis:
    """Both servers answer and the table exists, or a one-line error (exit 1)."""
    r = redis_client(args.redis, socket_timeout=10)
    try:
        r.ping()
    except redis.RedisError as e:
        raise SystemExit(f"{PROG}: cannot reach redis at {args.redis}: {e}") from None
    try:
        db = mysql_connect(args.mysql_params)
        with db.cursor() as cursor:
            cursor.execute(CREATE_TABLE)
        db.close()
    except pymysql.MySQLError as e:
        raise SystemExit(f"{PROG}: cannot use the database at {args.mysql}: {e}") from None
    return r


def recover_all(r: redis.Redis, queue: str) -> int:
    """Moves every processing list of this queue back to it. Run before any
    worker starts (lists an earlier primary's workers left: a primary killed
    outright takes its workers with it) and after the last one exits."""
    moved = 0
    pattern = "".join("\\" + c if c in "\\*?[]" else c for c in processing_list(queue, "")) + "*"
    for key in r.scan_iter(match=pattern, count=1000):
        moved += return_to_queue(r, queue, key.decode())
    return moved


def run_primary(args: argparse.Namespace) -> int:
    r = check_servers(args)
    stale = recover_all(r, args.queue)
    if stale:
        print(f"recovered {stale} jobs left in processing lists", flush=True)
    progress = Progress()
    ready: set[int] = set()
    unrecovered: dict[int, bool] = {}  # exited workers whose list Redis did not let us empty yet -> crashed
    announced = False

    def recover(worker_id: int, crashed: bool) -> Optional[int]:
        try:
            if crashed:
                moved = give_back_after_crash(r, args.queue, worker_id)
            else:  # it left when asked (a list it left is the stop timeout's doing, not the job's)
                moved = return_to_queue(r, args.queue, processing_list(args.queue, worker_id))
            unrecovered.pop(worker_id, None)
            return moved
        except redis.RedisError as e:
            print(f"{PROG}: cannot recover worker {worker_id}'s jobs yet: {e}", file=sys.stderr, flush=True)
            unrecovered[worker_id] = crashed
            return None

    primary = rcluster.Primary(
        workers=args.workers,
        handle_signals=True,  # SIGTERM/SIGINT: graceful stop; SIGHUP: rolling reload
        wait_ready=True,  # a worker is ready once connected (it listens on nothing)
        crash_loop_count=args.crash_loop_count,
        stop_timeout=10.0,
    )
    with primary:
        next_report = time.monotonic() + args.report_every
        while not primary.ended:
            wait = max(0.0, next_report - time.monotonic()) if args.report_every else None
            if unrecovered:  # retry those every second
                wait = 1.0 if wait is None else min(wait, 1.0)
            event = primary.next_event(wait)
            if event is None:
                pass
            elif event.kind == "fork":
                print(f"worker {event.worker_id} started pid {event.pid} slot {event.slot}", flush=True)
            elif event.kind == "message":
                message = event.json()
                if message.get("ready"):
                    ready.add(event.worker_id)
                    print(f"worker {event.worker_id} ready", flush=True)
                    if not announced and len(ready) >= args.workers:
                        announced = True
                        print(f"ready queue={args.queue} workers={args.workers}", flush=True)
                else:
                    progress.update(event.worker_id, message)
            elif event.kind == "exit":
                # Its processing list has no writer any more: give back what
                # it holds. (The replacement has a list of its own, so the
                # order against its start does not matter.)
                moved = recover(event.worker_id, crashed=not event.after_disconnect)
                progress.exited(event.worker_id)
                ready.discard(event.worker_id)
                how = f"code {event.exit_code}" if event.exit_code is not None else f"signal {event.signal}"
                asked = "asked" if event.after_disconnect else "unasked"
                print(f"worker {event.worker_id} exited {how} {asked} recovered {moved if moved is not None else '?'}", flush=True)
            elif event.kind == "reload_done":
                print(f"reload done generation {event.generation}", flush=True)
            elif event.kind == "reload_failed":
                print(f"reload failed generation {event.generation}: {event.text()}", flush=True)
            elif event.kind == "crash_loop":
                print(f"slot {event.slot} is crash-looping; not restarted", flush=True)
            for worker_id, crashed in list(unrecovered.items()):
                recover(worker_id, crashed)
            if args.report_every and time.monotonic() >= next_report:
                print(progress.line(r, args.queue), flush=True)
                next_report = time.monotonic() + args.report_every
    # Every worker is gone: nothing can hold a job now.
    try:
        leftover = recover_all(r, args.queue)
        print(progress.line(r, args.queue).replace("progress", "stopped", 1) + f" recovered={leftover}", flush=True)
    except redis.RedisError as e:
        print(f"{PROG}: at exit, cannot check the processing lists: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def main() -> int:
    args = parse_args()
    return run_worker(args) if rcluster.is_worker else run_primary(args)


if __name__ == "__main__":
    sys.exit(main())
