"""A Flask app served by rcluster.run_wsgi (gunicorn workers):
`flask_app.py --workers N --port P [--policy rr|least]`; the worker class
is $TEST_WORKER_CLASS (default gthread, 4 threads), gunicorn's timeout
$TEST_TIMEOUT (default 30 s).

Prints `ready http://HOST:PORT` once every worker listens. Routes: `/`
answers `worker <id> pid <pid>`; `/slow?s=0.5` sleeps first. TEST_FAIL=import
makes the workers fail to import the app (the primary must not hang).
"""

from __future__ import annotations

import argparse
import os
import time

from flask import Flask, request

import rcluster

app = Flask(__name__)


@app.get("/")
def hello():
    return f"worker {rcluster.worker_id} pid {os.getpid()}\n", 200, {"Content-Type": "text/plain"}


@app.get("/slow")
def slow():
    time.sleep(float(request.args.get("s", "0.5")))
    return hello()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--policy", default="rr")
    args = parser.parse_args()
    target = "flask_app:app" if os.environ.get("TEST_FAIL") != "import" else "flask_app:no_such_app"
    rcluster.run_wsgi(
        target,
        workers=args.workers,
        host="127.0.0.1",
        port=args.port,
        policy=args.policy,
        stop_timeout=10.0,
        worker_class=os.environ.get("TEST_WORKER_CLASS", "gthread"),
        threads=4 if os.environ.get("TEST_WORKER_CLASS", "gthread") == "gthread" else 1,
        timeout=int(os.environ.get("TEST_TIMEOUT", "30")),
        on_ready=lambda host, port: print(f"ready http://{host}:{port}", flush=True),
    )
