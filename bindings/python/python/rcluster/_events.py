"""Events, as plain Python values copied out of ``rcluster_event``."""

from __future__ import annotations

import enum
import json
import socket
from dataclasses import dataclass
from typing import Any, Optional, Union

from ._ffi import ffi, lib

__all__ = ["EventKind", "Event", "from_c", "fd_numbers"]


class _Kind(str, enum.Enum):
    """Members are strings, so ``event.kind == "exit"`` works as well as
    ``event.kind is EventKind.EXIT``."""

    def __str__(self) -> str:
        return str(self.value)


def _kinds_from_header() -> dict[str, int]:
    """Kind name -> ``RCLUSTER_EVENT_*`` number, from the header itself (the
    library's one table of kinds generates it): the name is the constant's
    suffix in lower case, as ``rcluster_event_name`` returns it, so every
    layer spells a kind the same way and a kind added to the library shows
    up here without a change."""
    return {
        name[len("RCLUSTER_EVENT_"):].lower(): getattr(lib, name)
        for name in dir(lib)
        if name.startswith("RCLUSTER_EVENT_") and name != "RCLUSTER_EVENT_NONE"
    }


_NUMBERS = _kinds_from_header()

#: What an :class:`Event` reports: ``EventKind.CRASH_LOOP == "crash_loop"``
#: (``RCLUSTER_EVENT_CRASH_LOOP``; the header documents each kind).
EventKind = _Kind("EventKind", {name.upper(): name for name in _NUMBERS}, module=__name__)  # type: ignore[misc]

_KINDS = {number: EventKind(name) for name, number in _NUMBERS.items()}


@dataclass(frozen=True)
class Event:
    """Something that happened in the cluster.

    Fields that do not apply to ``kind`` are zero, ``None`` or empty.
    """

    #: What happened (an :class:`EventKind`, or a plain string for a kind
    #: newer than this package).
    kind: str
    #: The worker concerned (primary side), or this worker's id (worker side).
    worker_id: int = 0
    #: The worker's pid.
    pid: int = 0
    #: Exit events: the exit code, or ``None`` if a signal ended the worker
    #: (or its status was lost).
    exit_code: Optional[int] = None
    #: Exit events: the signal that ended the worker, or 0.
    signal: int = 0
    #: Exit events: the worker had been asked to leave, or left on purpose
    #: (Node's ``exitedAfterDisconnect``).
    after_disconnect: bool = False
    #: Listening events: ``(host, port)`` actually bound.
    address: Optional[tuple[str, int]] = None
    #: Message events: the bytes; worker errors: the reason, UTF-8.
    data: bytes = b""
    #: The raw ``flags`` field, for flags newer than this package.
    flags: int = 0
    #: Fork and crash-loop events: the worker's slot (``None``: not one of
    #: the supervised slots, or another kind of event).
    slot: Optional[int] = None
    #: Fork events: the worker's reload generation; reload events: the reload's.
    generation: int = 0
    #: Message events: the file descriptors that came with the message, in
    #: the order sent, owned by the caller (close them when done): a
    #: ``socket.socket`` for each socket, a plain ``int`` for any other kind.
    fds: tuple[Union[socket.socket, int], ...] = ()

    def text(self, encoding: str = "utf-8") -> str:
        """``data`` decoded as text."""
        return self.data.decode(encoding)

    def json(self) -> Any:
        """``data`` parsed as JSON (what ``send_json`` sent)."""
        return json.loads(self.data)

    @property
    def port(self) -> Optional[int]:
        """Listening events: the bound port."""
        return None if self.address is None else self.address[1]


def from_c(raw: Any) -> Event:
    """Copies an ``rcluster_event`` into an :class:`Event`. The caller still
    releases ``raw`` with ``rcluster_event_release``."""
    kind: Any = _KINDS.get(raw.kind, f"unknown({raw.kind})")
    data = bytes(ffi.buffer(raw.data, raw.len)) if raw.len else b""
    address = None
    if kind == EventKind.LISTENING:
        address = (ffi.string(raw.address).decode("ascii", "replace"), int(raw.port))
    exit_code: Optional[int] = None
    if kind == EventKind.EXIT:
        exit_code = None if raw.exit_code < 0 else int(raw.exit_code)
    return Event(
        kind=kind,
        worker_id=int(raw.worker_id),
        pid=int(raw.pid),
        exit_code=exit_code,
        signal=int(raw.signal),
        after_disconnect=bool(raw.flags & lib.RCLUSTER_EXIT_AFTER_DISCONNECT),
        address=address,
        data=data,
        flags=int(raw.flags),
        slot=_field(raw, "slot", None, int) if kind in _SLOT_KINDS and raw.slot >= 0 else None,
        generation=_field(raw, "generation", 0, int),
        fds=_take_fds(raw) if kind == EventKind.MESSAGE else (),
    )


def _take_fds(raw: Any) -> tuple[Union[socket.socket, int], ...]:
    """Takes every fd of a message event (the caller owns them from here)."""
    if not hasattr(lib, "rcluster_event_fd_count"):
        return ()
    count = ffi.new("size_t *")
    lib.rcluster_event_fd_count(raw, count)
    taken: list[Union[socket.socket, int]] = []
    fd = ffi.new("int *")
    for index in range(count[0]):
        if lib.rcluster_event_take_fd(raw, index, fd) == 0:
            taken.append(_wrap(fd[0]))
    return tuple(taken)


def _wrap(fd: int) -> Union[socket.socket, int]:
    """A socket.socket for a socket fd (its family and type read from the
    fd), else the fd itself."""
    try:
        return socket.socket(fileno=fd)
    except OSError:
        return fd  # not a socket: the caller closes it with os.close


def fd_numbers(fds: Any) -> list[int]:
    """The fds of a send call: ``socket.socket`` objects or ints (the
    caller keeps them; the library sends duplicates)."""
    numbers: list[int] = []
    for item in fds or ():
        if isinstance(item, socket.socket):
            numbers.append(item.fileno())  # -1 once closed: the library refuses it
        elif isinstance(item, int) and not isinstance(item, bool):
            numbers.append(item)
        else:
            raise TypeError(f"fds takes socket.socket objects or ints, not {type(item).__name__}")
    return numbers



def _field(raw: Any, name: str, default: Any, convert: Any) -> Any:
    """An event field that older builds of the C library may lack."""
    return convert(getattr(raw, name)) if name in _EVENT_FIELDS else default


_SLOT_KINDS = (EventKind.FORK, EventKind.CRASH_LOOP, EventKind.SPAWN_FAILED)
_EVENT_FIELDS = {name for name, _ in ffi.typeof("rcluster_event").fields}
