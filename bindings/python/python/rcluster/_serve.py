"""What :func:`rcluster.run_asgi` and :func:`rcluster.run_wsgi` share: the
primary's side (start the workers, wait until they listen, run until a
signal shuts the cluster down) and the worker's way of failing at startup.

The program runs twice over, as with Node's cluster: the primary process
calls ``run_asgi``/``run_wsgi`` and starts the workers, which run the same
program (``sys.executable`` with the same arguments), reach the same call
and serve. So the call must be reached the same way in both, normally from
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, Mapping, MutableMapping, NoReturn, Optional

from ._errors import Error
from ._primary import Primary

__all__ = ["run_primary", "fail_startup", "refuse_options", "app_name", "cluster_arguments", "READY_TIMEOUT"]

#: Seconds a replacement has to become ready (app imported, listening,
#: lifespan started) during a reload before the reload is abandoned.
READY_TIMEOUT = 60.0

#: Message a worker sends the primary when it cannot start, so that the
#: primary's error says why (the worker's own log has the details).
_FAILED = b"rcluster-startup-failed:"


def refuse_options(caller: str, options: MutableMapping[str, Any], refused: Mapping[str, str]) -> None:
    """Raises :class:`TypeError` for an option of ``refused`` that is set
    (its value says why), and drops the ones given as false or None."""
    for name, why in refused.items():
        if options.get(name):
            raise TypeError(f"{caller}: {name}= is not supported: {why}")
        options.pop(name, None)


def app_name(app: Any) -> str:
    """The app as the primary's log names it: its import string, or its name."""
    return repr(app if isinstance(app, str) else getattr(app, "__name__", type(app).__name__))


def cluster_arguments(parser: argparse.ArgumentParser, app_help: str) -> None:
    """The arguments ``python -m rcluster.asgi`` and ``-m rcluster.wsgi`` share."""
    parser.add_argument("app", help=app_help)
    parser.add_argument("-w", "--workers", type=int, default=None, help="worker processes (default: one per CPU)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: a free port")
    parser.add_argument("--policy", default="rr", choices=["rr", "least"])


def fail_startup(reason: str, code: int = 1) -> NoReturn:
    """In a worker that cannot start (app import error, address in use,
    lifespan startup failed): tells the primary why, then exits with
    ``code`` *without* the graceful goodbye, so that the primary counts a
    crash (restart with backoff, crash-loop detection) rather than a worker
    that left on purpose and is replaced at once."""
    from ._worker import _abandon_current, worker

    try:
        worker().send(_FAILED + reason.encode("utf-8", "replace")[:4000])
    except Exception:  # noqa: BLE001 - the primary may be gone; the exit still says enough
        pass
    _abandon_current()
    raise SystemExit(code)


def run_primary(
    what: str,
    host: str,
    *,
    workers: Optional[int],
    policy: str,
    stop_timeout: float,
    primary_options: Optional[Mapping[str, Any]],
    on_ready: Optional[Callable[[str, int], Any]],
    log: logging.Logger,
) -> None:
    """Starts ``workers`` workers (this program again), waits until they all
    listen, logs where the cluster serves, then runs until SIGTERM/SIGINT
    (graceful shutdown: in-flight requests finish) while SIGHUP does a rolling
    reload. Raises :class:`SystemExit` (1) if the cluster cannot start."""
    options = {"wait_ready": True, "ready_timeout": READY_TIMEOUT}
    options.update(primary_options or {})
    reasons: list[str] = []
    with Primary(workers=workers, policy=policy, handle_signals=True, stop_timeout=stop_timeout, **options) as primary:

        @primary.on("message")
        def startup_failed(event: Any) -> None:
            if event.data.startswith(_FAILED):
                reasons.append(event.data[len(_FAILED):].decode("utf-8", "replace"))

        try:
            bound_host, port = primary.wait_listening()
        except Error as e:
            why = f"; the last worker said: {reasons[-1]}" if reasons else ""
            log.error("rcluster: %s did not start: %s%s", what, e.message, why)
            raise SystemExit(1) from None  # leaving the with block shuts the cluster down
        shown = host if host not in ("", "0.0.0.0") else bound_host
        log.info(
            "rcluster: %s on http://%s:%d with %d workers (policy %s, primary pid %d; "
            "SIGHUP: rolling reload, SIGTERM/SIGINT: graceful stop)",
            what, _bracket(shown), port, len(primary.workers), primary.policy, os.getpid(),
        )
        _log_supervision(primary, log)
        if on_ready is not None:
            on_ready(shown, port)
        primary.run()


def _log_supervision(primary: Primary, log: logging.Logger) -> None:
    """What an operator wants in the primary's log: reloads, workers that
    died unasked (and were restarted), crash loops, hung workers."""

    @primary.on("reload_done")
    def reload_done(event: Any) -> None:
        log.info("rcluster: rolling reload done: every worker runs generation %d", event.generation)

    @primary.on("reload_failed")
    def reload_failed(event: Any) -> None:
        log.error("rcluster: rolling reload stopped (%s); the workers not yet replaced keep serving",
                  event.text() or "a replacement did not become ready")

    @primary.on("exit")
    def exited(event: Any) -> None:
        if not event.after_disconnect:
            how = f"exit code {event.exit_code}" if event.exit_code is not None else f"signal {event.signal}"
            log.warning("rcluster: worker %d (pid %d) died (%s); it is restarted", event.worker_id, event.pid, how)

    @primary.on("crash_loop")
    def crash_loop(event: Any) -> None:
        log.error("rcluster: worker slot %s crash-loops; it is not restarted until a reload (SIGHUP)", event.slot)

    @primary.on("unresponsive")
    def unresponsive(event: Any) -> None:
        log.error("rcluster: worker %d (pid %d) stopped answering; it is killed and replaced",
                  event.worker_id, event.pid)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
