"""``rcluster.Error``: the C layer's status codes as Python exceptions.

Every C call returns 0 or a negative ``RCLUSTER_E_*`` code and leaves a
message (and, where the OS was involved, an errno) in thread-local storage.
:func:`check` turns a failing call into an :class:`Error` carrying all three.
Codes that have a natural Python counterpart get a subclass that is also
that builtin, so ordinary ``except`` clauses work: ``E_AGAIN`` is a
:class:`BlockingIOError`, ``E_TIMEOUT`` a :class:`TimeoutError`, and so on.
"""

from __future__ import annotations

import enum
from typing import Any, NoReturn, Optional

from ._ffi import ffi, lib

__all__ = [
    "Code",
    "Error",
    "InvalidArgument",
    "BadHandle",
    "WouldBlock",
    "Timeout",
    "Closed",
    "Leaving",
    "AddressError",
    "StateError",
    "check",
    "raise_error",
]


def _codes() -> dict[str, int]:
    """``RCLUSTER_E_*`` suffix -> value, read from the header (which the
    library's one table of codes generates), so no code is listed here."""
    found = {"OK": lib.RCLUSTER_OK}
    for name in dir(lib):
        if name.startswith("RCLUSTER_E_"):
            found[name[len("RCLUSTER_E_"):]] = getattr(lib, name)
    return found


#: The C layer's status codes (``RCLUSTER_E_*`` in ``rcluster.h``): ``Code.AGAIN``
#: is ``RCLUSTER_E_AGAIN``; ``rcluster_strerror`` has each one's message.
Code = enum.IntEnum("Code", _codes(), module=__name__)  # type: ignore[misc]


class Error(OSError):
    """An error reported by the rcluster C library.

    ``code`` is the ``RCLUSTER_E_*`` status (a :class:`Code` when known),
    ``errno`` the OS error behind it or ``None``, ``strerror`` and
    ``message`` the library's message. It is an :class:`OSError`, so code
    that handles socket errors handles these too.
    """

    code: int
    message: str

    def __init__(self, code: int, message: str, errno: Optional[int] = None) -> None:
        if errno:
            super().__init__(errno, message)
        else:
            super().__init__(message)
            self.strerror = message
        try:
            self.code = Code(code)
        except ValueError:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        name = self.code.name if isinstance(self.code, Code) else str(self.code)
        text = f"[rcluster E_{name}] {self.message}"
        if self.errno:
            text += f" (errno {self.errno})"
        return text

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes, like OSError
        return (type(self), (int(self.code), self.message, self.errno))


class InvalidArgument(Error, ValueError):
    """``E_INVAL``: a bad argument."""


class BadHandle(Error):
    """``E_HANDLE``: the object was closed or freed."""


class WouldBlock(Error, BlockingIOError):
    """``E_AGAIN``: nothing is ready yet (non-blocking call); poll ``fileno()``."""


class Timeout(Error, TimeoutError):
    """``E_TIMEOUT``: the wait ran out of time."""


class Closed(Error, ConnectionAbortedError):
    """``E_CLOSED``: the peer hung up, the primary is gone, the worker was
    asked to leave (after its queued connections), or the object is closed.

    It is also a :class:`ConnectionAbortedError`: accept loops written for
    sockets treat that as "nothing to accept now" rather than a crash, so a
    :class:`~rcluster.Listener` handed to asyncio (``loop.create_server(sock=...)``)
    ends without a traceback (the listener stops that loop watching it)."""


class Leaving(Closed):
    """``E_LEAVING``: this worker is leaving. ``accept`` says so once the
    primary asked it to disconnect and what was queued for it is taken;
    ``listen`` when the cluster is shutting down. Not a failure: finish what
    you hold and exit. A :class:`Closed` too, so code written for earlier
    versions, which said ``E_CLOSED`` here, still ends its accept loop."""


class AddressError(Error):
    """``E_ADDR``: an address could not be parsed, bound or listened on
    (``errno`` says why: ``EADDRINUSE``, ``EACCES``...)."""


class StateError(Error):
    """``E_STATE``: not valid now (not a worker, shut down, ...)."""


_SUBCLASSES: dict[int, type[Error]] = {
    Code.INVAL: InvalidArgument,
    Code.HANDLE: BadHandle,
    Code.AGAIN: WouldBlock,
    Code.TIMEOUT: Timeout,
    Code.CLOSED: Closed,
    Code.LEAVING: Leaving,
    Code.ADDR: AddressError,
    Code.STATE: StateError,
}


def raise_error(code: int, message: Optional[str] = None, errno: Optional[int] = None) -> NoReturn:
    """Raises the :class:`Error` subclass for ``code``."""
    raise make_error(code, message, errno)


def make_error(code: int, message: Optional[str] = None, errno: Optional[int] = None) -> Error:
    if message is None:
        message = ffi.string(lib.rcluster_strerror(code)).decode("utf-8", "replace")
    return _SUBCLASSES.get(code, Error)(code, message, errno)


def last_error(code: int) -> Error:
    """The :class:`Error` for a call that just returned ``code`` on this thread."""
    message = ffi.string(lib.rcluster_last_error()).decode("utf-8", "replace")
    if not message:
        message = ffi.string(lib.rcluster_strerror(code)).decode("utf-8", "replace")
    return make_error(code, message, lib.rcluster_last_errno() or None)


def check(rc: int) -> int:
    """Returns ``rc`` if it is 0 (success), else raises the matching :class:`Error`."""
    if rc != 0:
        raise last_error(rc)
    return rc
