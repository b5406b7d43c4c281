"""A FastAPI app served by rcluster.run_asgi (uvicorn workers):
`fastapi_app.py --workers N --port P [--policy rr|least]`.

Prints `ready http://HOST:PORT` once every worker listens. Routes:
`/` answers `worker <id> pid <pid>`; `/slow?s=0.5` sleeps first; `/lifespan`
says whether the lifespan startup ran in this worker. The lifespan shutdown
writes `lifespan shutdown <pid>` to stderr. TEST_FAIL=import makes the
workers fail to import the app (the primary must not hang).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

import rcluster

started = {"lifespan": False}


@asynccontextmanager
async def lifespan(app: FastAPI):
    started["lifespan"] = True
    yield
    os.write(2, f"lifespan shutdown {os.getpid()}\n".encode())  # one write: workers share the log file


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
async def hello() -> str:
    return f"worker {rcluster.worker_id} pid {os.getpid()}\n"


@app.get("/slow", response_class=PlainTextResponse)
async def slow(s: float = 0.5) -> str:
    await asyncio.sleep(s)
    return f"worker {rcluster.worker_id} pid {os.getpid()}\n"


@app.get("/lifespan")
async def lifespan_ran() -> dict:
    return {"started": started["lifespan"], "pid": os.getpid()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--policy", default="rr")
    args = parser.parse_args()
    target = "fastapi_app:app" if os.environ.get("TEST_FAIL") != "import" else "fastapi_app:no_such_app"
    rcluster.run_asgi(
        target,
        workers=args.workers,
        host="127.0.0.1",
        port=args.port,
        policy=args.policy,
        stop_timeout=10.0,
        access_log=False,
        on_ready=lambda host, port: print(f"ready http://{host}:{port}", flush=True),
    )
