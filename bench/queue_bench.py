#!/usr/bin/env python3
"""Jobs/s of the queue-worker example (examples/queue) with 1, 2 and 4
workers, Python and Node, against a throwaway redis-server and MariaDB.

    .venv/bin/python bench/queue_bench.py --jobs 5000 --rounds 2 --workers 1,2,4

Run by bench/run.py (group "queue"), with the .venv interpreter (it needs
the redis and PyMySQL clients; `make bench-build` installs them). For each
round, language (alternating order) and worker count: a fresh database and
queue, the example started and ready, then the clock runs from the first
LPUSH of JOBS jobs (pipelined, 1,000 per command) until the table holds
JOBS rows (polled every 10 ms). Prints one line `BENCH_JSON {...}`.
Every process started is stopped by pid, servers included.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "queue" / "tests"))

from servers import MariaDB, RedisServer, missing_binaries  # noqa: E402

SCRIPTS = {
    "python": [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "examples/queue/python/queue_worker.py")],
    "node": ["node", str(ROOT / "examples/queue/node/queue_worker.js")],
}


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks), None if it is gone: pids wrap
    around, so a pid is only ours while its start time is the one we saw."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def read_until(proc: subprocess.Popen, prefix: str, timeout: float, seen: list[str],
               workers: dict[int, int | None]) -> None:
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            seen.append(line.decode(errors="replace"))
            if seen[-1].startswith("worker ") and " started pid " in seen[-1]:
                pid = int(seen[-1].split()[4])
                workers[pid] = start_time(pid)
            if seen[-1].startswith(prefix):
                return
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError(f"no {prefix!r} line within {timeout} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError(f"the example exited before printing {prefix!r}")
        buf += chunk


def stop(proc: subprocess.Popen, workers: dict[int, int | None]) -> None:
    """SIGTERM (graceful), then SIGKILL for the primary and every worker it
    named that still runs (the same process: same start time)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid, started in workers.items():
        if started is not None and start_time(pid) == started:  # gone already, normally
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def one_run(lang: str, workers: int, jobs: int, tag: str, redis_server: RedisServer, mariadb: MariaDB) -> dict:
    database = f"bench_{lang}_{workers}_{tag}"
    queue = f"bench:{lang}:{workers}:{tag}"
    mariadb.create_database(database)
    argv = [*SCRIPTS[lang], "--workers", str(workers), "--redis", redis_server.url,
            "--mysql", mariadb.url(database), "--queue", queue, "--report-every", "0"]
    seen: list[str] = []
    workers_seen: dict[int, int | None] = {}
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    r = redis_server.client()
    db = mariadb.connect(database)
    try:
        read_until(proc, "ready ", 60, seen, workers_seen)
        payloads = [json.dumps({"id": f"{tag}-{i}", "payload": {"n": i}}).encode() for i in range(jobs)]
        started = time.monotonic()
        pipe = r.pipeline(transaction=False)
        for first in range(0, jobs, 1000):
            pipe.lpush(queue, *payloads[first:first + 1000])
        pipe.execute()
        deadline = started + 120
        while True:
            with db.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM jobs")
                if cursor.fetchone()[0] >= jobs:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{lang} with {workers} workers: {jobs} jobs not done in 120 s")
            time.sleep(0.01)
        seconds = time.monotonic() - started
    finally:
        stop(proc, workers_seen)
        db.close()
        keys = list(r.scan_iter(match=f"{queue}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
    return {"lang": lang, "workers": workers, "seconds": round(seconds, 3), "jobs_per_s": round(jobs / seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--langs", default="python,node")
    args = parser.parse_args()
    missing = missing_binaries()
    if missing:
        print(f"queue_bench: missing {', '.join(missing)} (make bench-build installs them)", file=sys.stderr)
        return 2
    # SIGTERM (from bench/run.py) unwinds like Ctrl-C: the finally below stops the servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    counts = [int(x) for x in args.workers.split(",")]
    langs = args.langs.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="rcluster-queue-bench-"))
    redis_server = mariadb = None
    runs = []
    try:
        redis_server = RedisServer(tmp / "redis").start()
        mariadb = MariaDB(tmp / "mariadb").install().start()
        for rnd in range(args.rounds):
            for lang in (langs if rnd % 2 == 0 else list(reversed(langs))):
                for workers in counts:
                    res = one_run(lang, workers, args.jobs, f"r{rnd}", redis_server, mariadb)
                    res["round"] = rnd + 1
                    runs.append(res)
                    print(f"queue_bench: {lang} {workers} workers round {rnd + 1}: "
                          f"{res['jobs_per_s']:.0f} jobs/s ({res['seconds']:.2f} s)", file=sys.stderr, flush=True)
    finally:
        if mariadb is not None:
            mariadb.stop()
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("BENCH_JSON " + json.dumps({"jobs": args.jobs, "rounds": args.rounds, "runs": runs}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
