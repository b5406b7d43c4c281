#!/usr/bin/env python3
"""rcluster's side-by-side benchmark (`make bench`, `make bench-quick`).

    python3 bench/run.py            # full run, about 17 minutes: bench/results/latest.{json,md,png}
    python3 bench/run.py --quick    # about 3 minutes: bench/tmp/quick/latest.{json,md,png}
    python3 bench/run.py --only c,ipc --workers 2
    python3 bench/run.py --only asgi,wsgi --out bench/tmp/servers   # the Python web servers only

Contenders are started side by side (each group's servers all run at once,
idle but one), loaded one after another over loopback by wrk, in rounds
whose order alternates, so that every ratio compares runs taken minutes
apart at most on the same machine. See bench/README.md for what is measured
and how. Standard library only; the chart needs matplotlib (bench/report.py).

Every process started here is stopped by pid (SIGTERM, then SIGKILL after a
timeout, for the primary and every descendant it had), even when a run fails
or the harness is interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TMP = BENCH / "tmp"
WRK_SCRIPT = BENCH / "wrk" / "count.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The uneven test: time each request takes (see bench/c/bench_server.c), and
# the open-loop offered load: 1,500 new connections/s per worker, more than
# the slow worker's 1,000/s, less than a normal worker's ~7,000/s.
UNEVEN_WORK_US = 100
UNEVEN_SLOW_WORK_US = 1000  # 10x, on worker 1
UNEVEN_RATE_PER_WORKER = 1500
# The pinned C group: the servers on this CPU, wrk on the other.
PINNED_SERVER_CPU, PINNED_CLIENT_CPU = "1", "0"

PROFILES = {
    "full": dict(
        workers=[2, 4], seconds=2, warmup=1, rounds=5, ka_rounds=1,
        uneven_seconds=5, uneven_rounds=2, ipc_seconds=1.0, ipc_rounds=2,
        connections=32, low_connections=4, one_connections=1, low_rounds=3, full=True, queue_jobs=5000, queue_rounds=2,
    ),
    "quick": dict(
        workers=[2], seconds=2, warmup=1, rounds=1, ka_rounds=0,
        uneven_seconds=3, uneven_rounds=1, ipc_seconds=0.5, ipc_rounds=1,
        connections=32, low_connections=4, one_connections=1, low_rounds=1, full=False, queue_jobs=2000, queue_rounds=1,
    ),
}
IPC_WINDOWS = [16, 256, 1024, 4096]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# /proc readings


def proc_start_time(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/pid/stat), to tell a pid from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """Direct children of every thread of the process (a thread that spawned owns its children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def system_cpu() -> tuple[float, float]:
    """(busy, all) CPU-seconds over all CPUs, from /proc/stat. Busy is user+nice+system+irq+softirq
    (this kernel counts a task's softirq work in the task's own stime as well as in softirq, so the
    sum is compared with the processes' utime+stime); idle, iowait and steal are left out."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / CLK_TCK, sum(fields[:8]) / CLK_TCK


def children_cpu() -> float:
    """CPU-seconds of this harness's reaped children (wrk, openloop)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------
# Processes: every one is tracked and stopped by pid


class Tracked:
    """Processes this harness started, with their descendants, stopped by pid on exit."""

    def __init__(self) -> None:
        self.procs: list[Server] = []
        self.lock = threading.Lock()

    def add(self, server: "Server") -> None:
        with self.lock:
            self.procs.append(server)

    def stop_all(self) -> None:
        with self.lock:
            procs, self.procs = self.procs, []
        for server in procs:
            server.stop()


TRACKED = Tracked()
atexit.register(TRACKED.stop_all)


def _on_signal(signum, frame):  # noqa: ARG001
    TRACKED.stop_all()
    sys.exit(128 + signum)


@dataclass
class Contender:
    key: str  # unique within a group, e.g. "rr"
    label: str  # what the tables say
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    missing: str | None = None  # "not run: <why>"


class Server:
    """One started contender: its primary's pid and the URL it serves."""

    def __init__(self, contender: Contender, workers: int, logdir: Path) -> None:
        self.contender = contender
        self.workers = workers
        self.url = ""
        self.pid = 0
        self.start_time: int | None = None
        self.known: dict[int, int | None] = {}  # descendant pid -> start time
        env = dict(os.environ)
        env.update(contender.env)
        self.logpath = logdir / f"{contender.key}-w{workers}.log"
        self.logfile = open(self.logpath, "wb")
        self.proc = subprocess.Popen(
            contender.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.logfile,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self.pid = self.proc.pid
        self.start_time = proc_start_time(self.pid)
        TRACKED.add(self)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no ready line within {timeout:.0f} s")
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"exited before ready (code {self.proc.wait()})")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith("ready http://"):
            raise RuntimeError(f"unexpected first line {line!r}")
        self.url = line.split()[1] + "/"
        # Keep draining stdout so a chatty server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        self.refresh_descendants()

    def _drain(self) -> None:
        try:
            while os.read(self.proc.stdout.fileno(), 65536):
                pass
        except OSError:
            pass

    def refresh_descendants(self) -> list[int]:
        pids = descendants(self.pid)
        for pid in pids:
            self.known.setdefault(pid, proc_start_time(pid))
        return pids

    def workers_cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.refresh_descendants())

    def primary_cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.returncode is None:
            self.refresh_descendants()
            if proc_start_time(self.pid) == self.start_time:
                try:
                    os.kill(self.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"  {self.contender.label}: no exit {timeout:.0f} s after SIGTERM; SIGKILL")
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        # Whatever the primary left behind (it should be nothing), by pid.
        deadline = time.monotonic() + 3.0
        for pid, started in self.known.items():
            while proc_start_time(pid) == started and started is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc_start_time(pid) == started and started is not None:
                log(f"  {self.contender.label}: pid {pid} left behind; SIGKILL")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.logfile.close()


# --------------------------------------------------------------------------
# Contenders


def node_rcluster_missing() -> str | None:
    addon = ROOT / "bindings" / "node"
    if not (addon / "index.js").exists():
        return "not run: binding missing (bindings/node is not in this checkout)"
    probe = subprocess.run(["node", "-e", "require(process.argv[1])", str(addon)], cwd=ROOT,
                           capture_output=True, text=True, env={**os.environ, "RCLUSTER_WORKER_ID": ""})
    if probe.returncode != 0:
        return "not run: binding not built (make node): " + (probe.stderr.strip().splitlines() or ["?"])[-1]
    return None


def python_missing() -> str | None:
    py = ROOT / ".venv" / "bin" / "python"
    if not py.exists():
        return "not run: .venv missing (make python)"
    if subprocess.run([str(py), "-c", "import rcluster"], capture_output=True).returncode != 0:
        return "not run: rcluster not installed in .venv (make python)"
    return None


def c_missing() -> str | None:
    for exe in ("bench_rcluster", "prefork", "openloop"):
        if not (TMP / exe).exists():
            return f"not run: bench/tmp/{exe} not built (make bench-build)"
    return None


def c_contenders(n: int, full: bool) -> list[Contender]:
    miss = c_missing()
    args = ["--workers", str(n), "--port", "0"]
    server = str(TMP / "bench_rcluster")
    out = [Contender("rr", "rcluster rr", [server, *args, "--policy", "rr"], missing=miss),
           Contender("least", "rcluster least", [server, *args, "--policy", "least"], missing=miss),
           Contender("shared", "rcluster shared", [server, *args, "--policy", "shared"], missing=miss),
           Contender("hybrid", "rcluster hybrid", [server, *args, "--policy", "hybrid"], missing=miss)]
    if full:
        out.append(Contender("reuseport", "rcluster reuseport", [server, *args, "--policy", "reuseport"], missing=miss))
    out.append(Contender("prefork", "C prefork, shared socket", [str(TMP / "prefork"), *args], missing=miss))
    return out


def c_pinned_contenders(n: int, full: bool) -> list[Contender]:  # noqa: ARG001
    """rr, shared and prefork with every server process on one CPU (the client gets the other)."""
    out = [c for c in c_contenders(n, True) if c.key in ("rr", "shared", "prefork")]
    for c in out:
        c.argv = ["taskset", "-c", PINNED_SERVER_CPU, *c.argv]
    return out


def node_contenders(n: int, full: bool) -> list[Contender]:
    app = str(BENCH / "node" / "app.js")
    args = ["--workers", str(n), "--port", "0"]
    miss = node_rcluster_missing()
    out = [
        Contender("node-rr", "Node cluster SCHED_RR", ["node", app, *args, "--policy", "rr"], {"BENCH_CLUSTER": "node"}),
        Contender("node-none", "Node cluster SCHED_NONE", ["node", app, *args, "--policy", "shared"],
                  {"BENCH_CLUSTER": "node"}),
        Contender("rcluster-rr", "rcluster rr (Node addon)", ["node", app, *args, "--policy", "rr"],
                  {"BENCH_CLUSTER": "rcluster"}, missing=miss),
        Contender("rcluster-hybrid", "rcluster hybrid (Node addon)", ["node", app, *args, "--policy", "hybrid"],
                  {"BENCH_CLUSTER": "rcluster"}, missing=miss),
    ]
    if full:
        out.append(Contender("rcluster-shared", "rcluster shared (Node addon)", ["node", app, *args, "--policy", "shared"],
                             {"BENCH_CLUSTER": "rcluster"}, missing=miss))
        out.append(Contender("rcluster-least", "rcluster least (Node addon)", ["node", app, *args, "--policy", "least"],
                             {"BENCH_CLUSTER": "rcluster"}, missing=miss))
    return out


RUNTIMES = ROOT / "bindings" / "node" / ".runtimes" / "node_modules"
# name -> (as `make test-node` installs it, how it runs a script)
OTHER_RUNTIMES = {
    "bun": (RUNTIMES / "@oven" / "bun-linux-x64" / "bin" / "bun", []),
    "deno": (RUNTIMES / "@deno" / "linux-x64-glibc" / "deno", ["run", "-A"]),
}


def runtime_path(name: str) -> str | None:
    """Bun or Deno as `make test-node` installs it (bindings/node/.runtimes), else the one on PATH."""
    installed = OTHER_RUNTIMES[name][0]
    return str(installed) if installed.exists() else shutil.which(name)


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS's pick, released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runtime_contenders(name: str, n: int) -> list[Contender]:
    """The Node app under Bun or Deno: the runtime's own node:cluster against rcluster's addon under it
    (rr, shared, reuseport), and the addon under Node."""
    app = str(BENCH / "node" / "app.js")
    args = ["--workers", str(n), "--port", "0"]
    exe = runtime_path(name)
    miss = None if exe else f"not run: {name} missing (make test-node installs it into bindings/node/.runtimes)"
    run = [exe or name, *OTHER_RUNTIMES[name][1]]
    addon_miss = miss or node_rcluster_missing()
    title = name.capitalize()
    # Bun's own cluster gives each worker its own OS-picked port when asked
    # for port 0 (each binds with SO_REUSEPORT itself): the runtimes' own
    # clusters get a fixed free port.
    own_args = ["--workers", str(n), "--port", str(free_port())]
    out = [Contender(f"{name}-cluster", f"{title} node:cluster", [*run, app, *own_args, "--policy", "rr"],
                     {"BENCH_CLUSTER": "node"}, missing=miss)]
    for policy in ("rr", "shared", "reuseport"):
        out.append(Contender(f"rcluster-{policy}", f"rcluster {policy} (addon under {title})",
                             [*run, app, *args, "--policy", policy], {"BENCH_CLUSTER": "rcluster"}, missing=addon_miss))
    out.append(Contender("node-rcluster-rr", "rcluster rr (addon under Node)", ["node", app, *args, "--policy", "rr"],
                         {"BENCH_CLUSTER": "rcluster"}, missing=node_rcluster_missing()))
    return out


def bun_contenders(n: int, full: bool) -> list[Contender]:  # noqa: ARG001
    return runtime_contenders("bun", n)


def deno_contenders(n: int, full: bool) -> list[Contender]:  # noqa: ARG001
    return runtime_contenders("deno", n)


def low_contenders(kind: str, n: int) -> list[Contender]:
    """Low concurrency: rcluster's policies and what each is compared with (the shared-socket server Node or C users run)."""
    if kind == "c":
        return [c for c in c_contenders(n, False) if c.key in ("prefork", "rr", "least", "shared", "hybrid")]
    return [c for c in node_contenders(n, True)
            if c.key in ("node-none", "rcluster-rr", "rcluster-least", "rcluster-shared", "rcluster-hybrid")]


def python_contenders(n: int, full: bool) -> list[Contender]:  # noqa: ARG001
    py = str(ROOT / ".venv" / "bin" / "python")
    args = ["--workers", str(n), "--port", "0"]
    miss = python_missing()
    return [
        Contender("rr", "rcluster rr (Python)", [py, "examples/python/hello_server.py", *args, "--policy", "rr"],
                  missing=miss),
        Contender("prefork", "Python prefork, shared socket", [py, "bench/python/prefork.py", *args], missing=miss),
    ]


def servers_missing(modules: str) -> str | None:
    """Why the web-server rows cannot run (the servers come with `make python`), or None."""
    miss = python_missing()
    if miss:
        return miss
    py = ROOT / ".venv" / "bin" / "python"
    if subprocess.run([str(py), "-c", f"import {modules}"], capture_output=True).returncode != 0:
        return f"not run: {modules} not installed in .venv (make python)"
    return None


def server_contender(key: str, label: str, n: int, miss: str | None) -> Contender:
    py = str(ROOT / ".venv" / "bin" / "python")
    return Contender(key, label, [py, "bench/python/servers.py", key, "--workers", str(n)], missing=miss)


def asgi_contenders(n: int, full: bool) -> list[Contender]:  # noqa: ARG001
    """A FastAPI app on uvicorn workers: rcluster.run_asgi against uvicorn's and gunicorn's own process managers."""
    miss = servers_missing("fastapi, uvicorn, gunicorn")
    out = [server_contender("rcluster-asgi", "rcluster run_asgi (uvicorn)", n, miss),
           server_contender("uvicorn", "uvicorn --workers", n, miss)]
    if full:
        out.append(server_contender("gunicorn-uvicorn", "gunicorn + UvicornWorker", n, miss))
    return out


def wsgi_contenders(n: int, full: bool) -> list[Contender]:  # noqa: ARG001
    """A Flask app on gunicorn's sync and gthread workers: under rcluster.run_wsgi and under gunicorn's arbiter."""
    miss = servers_missing("flask, gunicorn")
    out = [server_contender("rcluster-wsgi-gthread", "rcluster run_wsgi (gthread, 4 threads)", n, miss),
           server_contender("gunicorn-gthread", "gunicorn -w -k gthread (4 threads)", n, miss)]
    if full:
        out += [server_contender("rcluster-wsgi-sync", "rcluster run_wsgi (sync)", n, miss),
                server_contender("gunicorn-sync", "gunicorn -w (sync)", n, miss)]
    return out


def cmd_missing(need: list[Path]) -> str | None:
    for path in need:
        if not path.exists():
            return f"not run: {path.relative_to(ROOT)} missing (make bench-build)"
    return None


def cmd_contenders(kind: str, n: int) -> list[Contender]:
    """The `rcluster` command against what users run today, the same unmodified app on both sides:
    uvicorn under `rcluster run -i N --listen` (socket at fd 3) vs `uvicorn --workers N`; a Node app
    under `rcluster run` vs `pm2 start -i N` (bench/cmd/launch.py starts each)."""
    launch = [sys.executable, str(BENCH / "cmd" / "launch.py")]
    rcluster = ROOT / "target" / "release" / "rcluster"
    deps = ROOT / "target" / "cli-deps"
    if kind == "python":
        miss = cmd_missing([rcluster, deps / "venv" / "bin" / "uvicorn"])
        return [Contender("rcluster-uvicorn", f"rcluster run -i {n} -- uvicorn --fd 3", [*launch, "rcluster-uvicorn", str(n)],
                          missing=miss),
                Contender("uvicorn", f"uvicorn --workers {n}", [*launch, "uvicorn", str(n)], missing=miss)]
    miss = cmd_missing([rcluster, deps / "npm" / "node_modules" / ".bin" / "pm2"])
    return [Contender("rcluster-node", f"rcluster run -i {n} -- node app.js", [*launch, "rcluster-node", str(n)],
                      missing=miss),
            Contender("pm2", f"pm2 start app.js -i {n}", [*launch, "pm2", str(n)], missing=miss)]


def nginx_contenders(n: int) -> list[Contender]:
    """The seed's alternative to a cluster, side by side (bench/nginx/launch.py starts each): nginx in front
    of N single-process Node servers, one rcluster Node cluster of N workers, and nginx in front of that."""
    launch = [sys.executable, str(BENCH / "nginx" / "launch.py")]
    miss = node_rcluster_missing() or cmd_missing([Path("/usr/sbin/nginx")])
    return [Contender("nginx-singles", f"nginx -> {n} single Node servers", [*launch, "nginx-singles", str(n)],
                      missing=miss),
            Contender("rcluster", f"rcluster Node cluster, {n} workers", [*launch, "rcluster", str(n)], missing=miss),
            Contender("nginx-rcluster", f"nginx -> rcluster cluster of {n}", [*launch, "nginx-rcluster", str(n)],
                      missing=miss)]


def uneven_contenders(n: int, full: bool) -> list[Contender]:  # noqa: ARG001
    env = {"BENCH_WORK_US": str(UNEVEN_WORK_US), "BENCH_SLOW_WORK_US": str(UNEVEN_SLOW_WORK_US),
           "BENCH_SLOW_WORKER": "1"}
    server = str(TMP / "bench_rcluster")
    args = ["--workers", str(n), "--port", "0"]
    miss = c_missing()
    return [Contender(p, f"rcluster {p}", [server, *args, "--policy", p], env, missing=miss)
            for p in ("rr", "least", "shared", "hybrid")]


# --------------------------------------------------------------------------
# Load


def run_wrk(url: str, seconds: int, connections: int, close: bool, cpu: str | None = None) -> dict:
    argv = (["taskset", "-c", cpu] if cpu else []) + ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(WRK_SCRIPT)]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError(f"wrk printed no result: {out.stdout[-300:]} {out.stderr[-300:]}")


def run_openloop(url: str, seconds: int, rate: float) -> dict:
    port = url.rstrip("/").rsplit(":", 1)[1]
    argv = [str(TMP / "openloop"), "--port", port, "--rate", str(rate), "--seconds", str(seconds)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError(f"openloop printed no result: {out.stdout[-300:]} {out.stderr[-300:]}")


def measure(server: Server, cfg: dict, seconds: int, close: bool, warmup: bool, rate: float | None,
            client_cpu: str | None, connections: int) -> dict:
    """One measured run: wrk (closed loop, `connections` at a time), or openloop at `rate` connections/s."""
    if rate:
        load = lambda secs: run_openloop(server.url, secs, rate)  # noqa: E731
    else:
        load = lambda secs: run_wrk(server.url, secs, connections, close, client_cpu)  # noqa: E731
    if warmup:  # the first run of each contender and mode: a short one, not counted
        load(cfg["warmup"])
    p0, w0, c0, s0 = server.primary_cpu(), server.workers_cpu(), children_cpu(), system_cpu()
    result = load(seconds)
    s1, c1 = system_cpu(), children_cpu()
    result["primary_cpu_s"] = server.primary_cpu() - p0
    result["workers_cpu_s"] = server.workers_cpu() - w0
    result["client_cpu_s"] = c1 - c0
    # What every process on the machine ran, less ours (server, client): the other tenants' share
    # of the machine during the run (ticks are 10 ms, so a few % either way is noise).
    ours = result["primary_cpu_s"] + result["workers_cpu_s"] + result["client_cpu_s"]
    result["system_busy"] = (s1[0] - s0[0]) / max(1e-9, s1[1] - s0[1])
    result["others_busy"] = max(0.0, (s1[0] - s0[0]) - ours) / max(1e-9, s1[1] - s0[1])
    return result


def summarize(runs: list[dict], workers: int) -> dict:
    """Median throughput/latency over rounds; distribution and CPU over all of them."""
    rates = [r["requests"] / (r["duration_us"] / 1e6) for r in runs]
    requests = sum(r["requests"] for r in runs)
    counts: dict[str, int] = {}
    for r in runs:
        for k, v in r["workers"].items():
            counts[k] = counts.get(k, 0) + v
    per_worker = sorted((v for k, v in counts.items() if k != "other"), reverse=True)
    per_worker += [0] * max(0, workers - len(per_worker))
    total = sum(per_worker)
    jain = total * total / (len(per_worker) * sum(x * x for x in per_worker)) if total else None
    errors = {k: sum(r["errors"][k] for r in runs) for k in runs[0]["errors"]}
    return {
        "rate": statistics.median(rates),
        "rates": rates,
        "p50_us": statistics.median(r["latency_us"]["p50"] for r in runs),
        "p99_us": statistics.median(r["latency_us"]["p99"] for r in runs),
        "p999_us": statistics.median(r["latency_us"]["p999"] for r in runs),
        "requests": requests,
        "per_worker": per_worker,
        "max_min": (per_worker[0] / per_worker[-1]) if per_worker and per_worker[-1] else None,
        "jain": jain,
        "primary_us_per_conn": 1e6 * sum(r["primary_cpu_s"] for r in runs) / requests if requests else None,
        "workers_us_per_conn": 1e6 * sum(r["workers_cpu_s"] for r in runs) / requests if requests else None,
        "errors": errors,
        "system_busy": statistics.median(r["system_busy"] for r in runs),
        "others_busy": statistics.median(r["others_busy"] for r in runs),
        "others_busy_max": max(r["others_busy"] for r in runs),
    }


def run_group(name: str, workers: int, contenders: list[Contender], cfg: dict, logdir: Path,
              close_rounds: int, ka_rounds: int, seconds: int, rate: float | None = None,
              client_cpu: str | None = None, connections: int | None = None) -> dict:
    """Starts the contenders side by side, then loads each in turn, in rounds of alternating order."""
    connections = connections or cfg["connections"]
    how = f"openloop {rate:.0f} conn/s" if rate else f"wrk -t1 -c{connections}"
    if client_cpu:
        how += f" on CPU {client_cpu}, every server process on CPU {PINNED_SERVER_CPU}"
    log(f"group {name}, {workers} workers ({how}): " + ", ".join(c.label for c in contenders))
    group = {"name": name, "workers": workers, "load": how, "rate": rate, "load_before": loadavg(),
             "contenders": []}
    servers: dict[str, Server] = {}
    entries: dict[str, dict] = {}
    for c in contenders:
        entry = {"key": c.key, "label": c.label, "argv": c.argv, "env": c.env}
        entries[c.key] = entry
        group["contenders"].append(entry)
        if c.missing:
            entry["not_run"] = c.missing
            log(f"  {c.label}: {c.missing}")
            continue
        try:
            server = Server(c, workers, logdir)
        except OSError as e:
            entry["not_run"] = f"not run: cannot start: {e}"
            log(f"  {c.label}: {entry['not_run']}")
            continue
        try:
            server.wait_ready()
            servers[c.key] = server
            entry["url"] = server.url
        except Exception as e:  # noqa: BLE001
            entry["not_run"] = f"not run: failed to start: {e} (log: {server.logpath.relative_to(ROOT)})"
            log(f"  {c.label}: {entry['not_run']}")
            server.stop()
    try:
        for mode, rounds in (("close", close_rounds), ("keepalive", ka_rounds)):
            runs: dict[str, list[dict]] = {k: [] for k in servers}
            for r in range(rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for key in order:
                    try:
                        res = measure(servers[key], cfg, seconds, close=(mode == "close"), warmup=(r == 0),
                                      rate=rate, client_cpu=client_cpu, connections=connections)
                        runs[key].append(res)
                        served = res["requests"] / (res["duration_us"] / 1e6)
                        log(f"  {mode:9} round {r + 1}/{rounds} {servers[key].contender.label:32} "
                            f"{served:9.0f}/s  p99 {res['latency_us']['p99'] / 1000:7.2f} ms  "
                            f"primary {res['primary_cpu_s']:.2f} s")
                    except Exception as e:  # noqa: BLE001
                        log(f"  {mode} {servers[key].contender.label}: run failed: {e}")
                        entries[key].setdefault("failures", []).append(f"{mode}: {e}")
            for key, rs in runs.items():
                if rs:
                    entries[key][mode] = summarize(rs, workers)
                    entries[key][mode]["runs"] = rs
        for key, server in servers.items():
            entries[key]["primary_peak_rss_kib"] = peak_rss_kib(server.pid)
    finally:
        for server in servers.values():
            server.stop()
    group["load_after"] = loadavg()
    return group


def run_ipc(cfg: dict) -> dict:
    log("group ipc: rcluster messages (C ABI) vs Node process.send, 64-byte messages")
    result: dict = {"load_before": loadavg(), "windows": IPC_WINDOWS, "runs": []}
    windows = ",".join(map(str, IPC_WINDOWS))
    secs = str(cfg["ipc_seconds"])
    impls = {
        "rcluster": [str(TMP / "ipc_bench"), "--seconds", secs, "--windows", windows],
        "rcluster-batched": [str(TMP / "ipc_bench"), "--batched", "--seconds", secs, "--windows", windows],
        "node": ["node", str(BENCH / "node" / "ipc_bench.js"), "--seconds", secs, "--windows", windows],
    }
    if not (TMP / "ipc_bench").exists():
        result["not_run"] = {"rcluster": "not run: bench/tmp/ipc_bench not built (make bench-build)"}
        impls.pop("rcluster")
        impls.pop("rcluster-batched")
    for cpus in ("all", "1"):
        for r in range(cfg["ipc_rounds"]):
            order = list(impls) if r % 2 == 0 else list(reversed(impls))
            for impl in order:
                argv = impls[impl] if cpus == "all" else ["taskset", "-c", "1", *impls[impl]]
                c0, s0 = children_cpu(), system_cpu()
                proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
                try:
                    out, err = proc.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    out, err = proc.communicate()
                s1, c1 = system_cpu(), children_cpu()
                others = max(0.0, (s1[0] - s0[0]) - (c1 - c0)) / max(1e-9, s1[1] - s0[1])
                line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
                if line is None:
                    log(f"  {impl} ({cpus} cpus): failed: {err[-300:]}")
                    continue
                res = json.loads(line[len("BENCH_JSON "):])
                res["cpus"] = cpus
                res["others_busy"] = others
                result["runs"].append(res)
                pl = ", ".join(f"w{p['window']} {p['per_s'] / 1000:.0f}k/s" for p in res["pipelined"])
                log(f"  {impl:16} cpus={cpus:3} round {r + 1}: round trip p50 {res['rt_p50_us']:.1f} us "
                    f"({res['rt_per_s'] / 1000:.1f}k/s); pipelined {pl}")
    result["load_after"] = loadavg()
    return result


def run_queue(cfg: dict) -> dict:
    """The queue-worker example (examples/queue): jobs/s with 1, 2 and 4
    workers, Python and Node, against a throwaway redis-server and MariaDB
    (bench/queue_bench.py, run with the .venv that has the clients)."""
    log(f"group queue: examples/queue, {cfg['queue_jobs']} jobs per run, workers 1, 2, 4, Python and Node")
    result: dict = {"load_before": loadavg(), "jobs": cfg["queue_jobs"], "runs": []}
    venv_py = ROOT / ".venv" / "bin" / "python"
    argv = [str(venv_py), str(BENCH / "queue_bench.py"), "--jobs", str(cfg["queue_jobs"]),
            "--rounds", str(cfg["queue_rounds"]), "--workers", "1,2,4"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = "", "timed out after 600 s"
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:  # timed out, or this harness is stopping: SIGTERM stops its servers too
            proc.terminate()
            proc.wait(60)
    for line in err.splitlines():
        if line.startswith("queue_bench: "):
            log("  " + line[len("queue_bench: "):])
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        result["not_run"] = f"failed: {err[-300:]}"
        log(f"  queue: failed: {err[-300:]}")
    else:
        result["runs"] = json.loads(line[len("BENCH_JSON "):])["runs"]
    result["load_after"] = loadavg()
    return result


# --------------------------------------------------------------------------


def machine_info() -> dict:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001
            return "?"

    def sys_value(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return ""

    cpu, virtual = "?", False
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu == "?":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            virtual = "hypervisor" in line.split(":", 1)[1].split()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    commit = cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
    dirty = cmd("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", "src", "include",
                "examples", "bindings")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_gib": round(int(mem) / 1024 / 1024, 1),
        "kernel": platform.release(),
        # How an idle CPU waits matters to every cross-CPU wake-up (docs/performance.md).
        "virtual": virtual,
        "cpuidle_driver": sys_value("/sys/devices/system/cpu/cpuidle/current_driver"),
        "guest_halt_poll_ns": sys_value("/sys/module/haltpoll/parameters/guest_halt_poll_ns"),
        "commit": commit + (" (+ uncommitted changes)" if dirty else ""),
        "wrk": cmd("wrk", "--version").splitlines()[0] if shutil.which("wrk") else "missing",
        "node": cmd("node", "--version"),
        "bun": cmd(runtime_path("bun"), "--version") if runtime_path("bun") else "missing",
        "deno": cmd(runtime_path("deno"), "--version").splitlines()[0] if runtime_path("deno") else "missing",
        "python": cmd(str(ROOT / ".venv" / "bin" / "python"), "--version"),
        "gcc": cmd("gcc", "-dumpfullversion"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer contenders, shorter runs (bench-quick)")
    parser.add_argument("--only", default="c,node,bun,deno,python,asgi,wsgi,low,uneven,cmd,nginx,ipc,queue",
                        help="groups to run (comma-separated)")
    parser.add_argument("--workers", default=None, help="worker counts, e.g. 2,4 (default: the profile's)")
    parser.add_argument("--out", default=None, help="output directory (default: bench/results, quick: bench/tmp/quick)")
    parser.add_argument("--no-report", action="store_true", help="write latest.json only")
    args = parser.parse_args()

    if not shutil.which("wrk") and set(args.only.split(",")) - {"ipc", "queue"}:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    profile = "quick" if args.quick else "full"
    cfg = dict(PROFILES[profile])
    if args.workers:
        cfg["workers"] = [int(x) for x in args.workers.split(",")]
    only = set(args.only.split(","))
    out = Path(args.out) if args.out else (TMP / "quick" if args.quick else BENCH / "results")
    out = out if out.is_absolute() else ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    logdir = TMP / "logs"
    logdir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    results = {"profile": profile, "config": cfg, "machine": machine_info(), "load_start": loadavg(),
               "uneven": {"work_us": UNEVEN_WORK_US, "slow_work_us": UNEVEN_SLOW_WORK_US, "slow_worker": 1,
                          "rate_per_worker": UNEVEN_RATE_PER_WORKER},
               "groups": []}
    log(f"bench ({profile}), load average {results['load_start']}")
    full = cfg["full"]
    kinds = [("c", c_contenders), ("node", node_contenders), ("bun", bun_contenders), ("deno", deno_contenders),
             ("python", python_contenders),
             ("asgi", asgi_contenders), ("wsgi", wsgi_contenders)]
    for n in cfg["workers"]:
        for name, make in kinds:
            if name in ("bun", "deno") and n != cfg["workers"][0]:
                continue  # the other runtimes: the first worker count only (2), as the issue compares them
            if name in only:
                results["groups"].append(run_group(name, n, make(n, full), cfg, logdir,
                                                   cfg["rounds"], cfg["ka_rounds"], cfg["seconds"]))
            if name == "c" and "c" in only and full and (os.cpu_count() or 1) >= 2:
                # The same with the client and the servers each on a CPU of their own.
                results["groups"].append(run_group("c-pinned", n, c_pinned_contenders(n, full), cfg, logdir,
                                                   2, 0, cfg["seconds"], client_cpu=PINNED_CLIENT_CPU))
    if "low" in only:
        # A few connections at a time, and one: where a hop through the primary shows most.
        for n in cfg["workers"]:
            for kind in ("c", "node"):
                for suffix, key in (("low", "low_connections"), ("one", "one_connections")):
                    results["groups"].append(run_group(f"{kind}-{suffix}", n, low_contenders(kind, n), cfg, logdir,
                                                       cfg["low_rounds"], 0, cfg["seconds"],
                                                       connections=cfg[key]))
    if "uneven" in only:
        for n in cfg["workers"]:
            results["groups"].append(run_group("uneven", n, uneven_contenders(n, full), cfg, logdir,
                                               cfg["uneven_rounds"], 0, cfg["uneven_seconds"],
                                               rate=UNEVEN_RATE_PER_WORKER * n))
        if full:  # the same under wrk's closed loop, to show why the open loop is needed
            n = cfg["workers"][0]
            results["groups"].append(run_group("uneven-closed", n, uneven_contenders(n, full), cfg, logdir,
                                               1, 0, cfg["seconds"]))
    if "cmd" in only:
        # The rcluster command, 2 workers (the comparison): unmodified uvicorn and Node apps.
        for kind in ("python", "node"):
            results["groups"].append(run_group(f"cmd-{kind}", 2, cmd_contenders(kind, 2), cfg, logdir,
                                               cfg["rounds"], 0, cfg["seconds"]))
    if "nginx" in only:
        # nginx in front of single servers against one cluster, 2 workers (the seed's comparison).
        results["groups"].append(run_group("nginx", 2, nginx_contenders(2), cfg, logdir,
                                           cfg["rounds"], 0, cfg["seconds"]))
    if "ipc" in only:
        results["ipc"] = run_ipc(cfg)
    if "queue" in only:
        results["queue"] = run_queue(cfg)
    results["load_end"] = loadavg()
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    path = out / "latest.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    log(f"done in {results['elapsed_s']:.0f} s, load average {results['load_end']}; wrote {path}")

    if not args.no_report:
        report = [sys.executable, str(BENCH / "report.py"), str(path)]
        venv_py = TMP / "venv" / "bin" / "python"
        if venv_py.exists():
            report[0] = str(venv_py)
        return subprocess.run(report, cwd=ROOT).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
