"""A worker that reports what a program it starts sees of the worker
variables, and whether it is still a worker itself (`env_app.py`)."""

from __future__ import annotations

import subprocess

import rcluster

me = rcluster.worker()
child = subprocess.run(
    ["sh", "-c", 'echo "${RCLUSTER_WORKER_ID:-unset} ${RCLUSTER_CHANNEL_FD:-unset}"'],
    capture_output=True,
    text=True,
    check=True,
)
me.send_json({"child": child.stdout.strip(), "is_worker": rcluster.is_worker, "worker_id": rcluster.worker_id})
for event in me:
    if event.kind == "disconnect":
        break
me.close()
