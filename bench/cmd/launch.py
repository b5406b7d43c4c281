#!/usr/bin/env python3
"""Starts one contender of the `rcluster` command group for bench/run.py and
speaks its protocol: prints `ready http://127.0.0.1:PORT` once every worker
answers, stops what it started on SIGTERM.

    launch.py rcluster-uvicorn N   # rcluster run -i N --listen 127.0.0.1:PORT -- uvicorn app:app --fd 3
    launch.py uvicorn N            # uvicorn app:app --workers N --port PORT
    launch.py rcluster-node N      # rcluster run -i N --listen 127.0.0.1:PORT -- node app.js
    launch.py pm2 N                # pm2 start app.js -i N --no-daemon (PORT in the environment)

uvicorn and pm2 come from target/cli-deps (make cli-test-deps), rcluster from
target/release (make lib). Both sides serve the same unmodified app
(bench/cmd/app.py, bench/cmd/app.js) with access logs off.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from launching import free_port, wait_serving  # noqa: E402
DEPS = ROOT / "target" / "cli-deps"
RCLUSTER = ROOT / "target" / "release" / "rcluster"
UVICORN = DEPS / "venv" / "bin" / "uvicorn"
PM2 = DEPS / "npm" / "node_modules" / ".bin" / "pm2"


def main() -> int:
    kind, workers = sys.argv[1], sys.argv[2]
    port = free_port()
    env = dict(os.environ)
    uvicorn_args = ["app:app", "--no-access-log", "--log-level", "warning"]
    if kind == "rcluster-uvicorn":
        argv = [str(RCLUSTER), "run", "-i", workers, "--listen", f"127.0.0.1:{port}", "--",
                str(UVICORN), *uvicorn_args, "--fd", "3"]
    elif kind == "uvicorn":
        argv = [str(UVICORN), *uvicorn_args, "--host", "127.0.0.1", "--port", str(port), "--workers", workers]
    elif kind == "rcluster-node":
        argv = [str(RCLUSTER), "run", "-i", workers, "--listen", f"127.0.0.1:{port}", "--", "node", "app.js"]
    elif kind == "pm2":
        home = ROOT / "bench" / "tmp" / f"pm2-home-{os.getpid()}"
        env.update(PM2_HOME=str(home), PORT=str(port))
        argv = [str(PM2), "start", "app.js", "-i", workers, "--no-daemon", "--silent", "--no-autorestart"]
    else:
        sys.exit(f"launch.py: unknown contender {kind}")
    child = subprocess.Popen(argv, cwd=HERE, env=env, stdout=sys.stderr, stdin=subprocess.DEVNULL)

    def stop(signum=None, frame=None):  # noqa: ARG001
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not wait_serving(port, int(workers), lambda: child.poll() is None):
        sys.exit(f"launch.py: {kind} did not serve with {workers} workers (exit {child.poll()})")
    print(f"ready http://127.0.0.1:{port} workers={workers}", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
