"""What the primary and the worker have in common: an event queue behind a
pollable fd, read as an iterator, by callbacks, or from an event loop."""

from __future__ import annotations

import abc

from typing import Any, Callable, Iterator, Optional, Union

from ._errors import Closed, last_error
from ._events import Event, EventKind, from_c
from ._ffi import Deadline, ffi, lib, wait_readable

__all__ = ["EventSource", "Callback"]

#: A callback registered with :meth:`EventSource.on`.
Callback = Callable[[Event], Any]


class EventSource(abc.ABC):
    """Base of :class:`~rcluster.Primary` and :class:`~rcluster.Worker`.

    Events are taken in one of three ways, freely mixed:

    - ``next_event(timeout)`` or ``for event in source``;
    - callbacks registered with :meth:`on`, called for every event taken,
      whoever takes it (``run()`` takes events until the end);
    - an event loop watching :meth:`fileno` (readable while events wait)
      and calling :meth:`poll`; :mod:`rcluster.aio` does this for asyncio.
    """

    #: The event after which no other comes (set by subclasses).
    _last_kind: str = ""

    def __init__(self) -> None:
        self._callbacks: list[tuple[Optional[str], Callback]] = []
        self._ended = False

    # ----- to be provided by subclasses ---------------------------------

    @abc.abstractmethod
    def fileno(self) -> int:
        """An fd that is readable while events wait (do not close or read it)."""

    @abc.abstractmethod
    def _next_raw(self, raw: Any) -> int:
        """The non-blocking C call that fills ``raw``; returns its status."""

    def _observe(self, event: Event) -> None:
        """Updates the object's own state from an event (before callbacks)."""

    # ----- callbacks ----------------------------------------------------

    def on(
        self, kind: Union[str, EventKind, None], callback: Optional[Callback] = None
    ) -> Any:
        """Calls ``callback(event)`` for every event of ``kind`` (``None`` or
        ``"*"``: every event) taken from now on. Returns the callback, so it
        works as a decorator: ``@primary.on("exit")``."""
        key = None if kind in (None, "*") else str(kind)

        def register(fn: Callback) -> Callback:
            self._callbacks.append((key, fn))
            return fn

        return register if callback is None else register(callback)

    def off(self, callback: Callback) -> None:
        """Removes ``callback`` from every kind it was registered for."""
        self._callbacks = [(k, fn) for k, fn in self._callbacks if fn is not callback]

    # ----- taking events --------------------------------------------------

    @property
    def ended(self) -> bool:
        """Whether the last event (``shutdown`` / ``primary_gone``) was taken."""
        return self._ended

    def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting up to ``timeout`` seconds (``None``: no
        limit, ``0``: don't wait). ``None`` if none came in time. Callbacks
        run for the event before it is returned. After the last event,
        raises :class:`~rcluster.Closed`."""
        deadline = Deadline(timeout)
        raw = ffi.new("rcluster_event *")
        while True:
            rc = self._next_raw(raw)
            if rc == 0:
                try:
                    event = from_c(raw)
                finally:
                    lib.rcluster_event_release(raw)
                self._take(event)
                return event
            if rc != lib.RCLUSTER_E_AGAIN:
                error = last_error(rc)
                if isinstance(error, Closed):
                    self._ended = True
                raise error
            if deadline.expired() or not wait_readable(self.fileno(), deadline.left()):
                return None

    def poll(self) -> list[Event]:
        """Takes every event waiting now, without blocking (for a loop that
        watches :meth:`fileno`). Callbacks run for each."""
        events = []
        while not self._ended:
            event = self.next_event(0)
            if event is None:
                break
            events.append(event)
        return events

    def __iter__(self) -> Iterator[Event]:
        """Every event until the last one (included), blocking between them."""
        while not self._ended:
            event = self.next_event()
            if event is not None:
                yield event

    def run(self, timeout: Optional[float] = None) -> bool:
        """Takes events (running callbacks) until the last one, or until
        ``timeout`` seconds pass. True if the last event came."""
        deadline = Deadline(timeout)
        while not self._ended:
            if self.next_event(deadline.left()) is None and deadline.expired():
                return False
        return True

    def _take(self, event: Event) -> None:
        if event.kind == self._last_kind:
            self._ended = True
        self._observe(event)
        for key, callback in list(self._callbacks):
            if key is None or key == event.kind:
                callback(event)

