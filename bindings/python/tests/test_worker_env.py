"""A worker's children are ordinary processes: the worker variables are
gone from the environment they inherit (Python keeps its own copy of it,
``os.environ``, which the binding must clear too)."""

from __future__ import annotations

import sys

import rcluster
from conftest import APPS


def test_a_workers_children_do_not_inherit_the_worker_variables():
    argv = [sys.executable, str(APPS / "env_app.py")]
    with rcluster.Primary(workers=1, argv=argv, stop_timeout=5.0) as p:
        event = p.next_event(15)
        while event is not None and event.kind != "message":
            event = p.next_event(15)
        assert event is not None, "the worker reported"
        assert event.json() == {"child": "unset unset", "is_worker": True, "worker_id": 1}
