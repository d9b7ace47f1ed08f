"""Response bodies as the upstream client hands them out: iterables of bytes with a
``close()`` that every WSGI server calls, and a ``complete`` flag for the access log.

A :class:`ResponseBody` owns the connection its bytes come on: whoever holds it decides,
through its methods, whether the connection goes back to the pool (read to the end,
:meth:`~ResponseBody.drain`), is closed (:meth:`~ResponseBody.discard`, or
:meth:`~ResponseBody.close` before the end) or leaves HTTP for good
(:meth:`~ResponseBody.upgraded`). No caller sees urllib3's response.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Protocol

from ..limits import IO_CHUNK_BYTES
from .failures import TRANSPORT_ERRORS
from .upgraded import UpgradedConnection

if TYPE_CHECKING:
    from collections.abc import Iterator

    from urllib3.response import BaseHTTPResponse

    from ..cache import BodyCapture

__all__ = ["Body", "ResponseBody", "StoredBody"]


class Body(Protocol):
    """A response body: its bytes, once; ``complete`` after the last of them."""

    complete: bool

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class StoredBody:
    """A body already in memory (from the cache)."""

    __slots__ = ("_data", "complete")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.complete = False

    def __iter__(self) -> Iterator[bytes]:
        if self._data:
            yield self._data
        self.complete = True

    def close(self) -> None:
        pass


class ResponseBody:
    """A host's body, undecoded, passed on as it arrives, in pieces of up to 64 KiB.

    :param raw: urllib3's response, its body unread past ``first``.
    :param first: bytes already read (the adapter waits for them before answering).
    :param ended: nothing more to read (a response to HEAD).

    ``close()`` returns the connection to the pool when the body was read to the end,
    and closes it otherwise (the client went away mid-response, say): the rest of the
    body is never read into the pool. A host that fails mid-body makes iteration raise
    ``ConnectionResetError``: the head is out, and the only honest signal left is to
    drop the client's connection without a clean end, which both gunicorn and pywsgi do,
    quietly, for that error.
    """

    __slots__ = ("_capture", "_first", "_raw", "complete")

    def __init__(self, raw: BaseHTTPResponse, first: bytes = b"", ended: bool = False) -> None:
        self._raw = raw
        self._first = first
        self._capture: BodyCapture | None = None
        self.complete = ended

    @property
    def whole(self) -> bool:
        """Every byte of the body has already arrived (it came with the first read)."""
        return self.complete or self._raw.length_remaining == 0

    @property
    def first(self) -> bytes:
        return self._first

    def capture_into(self, capture: BodyCapture) -> None:
        """Copy the body into ``capture`` as it streams past; if it has all arrived
        already, finish the capture now (requests waiting for the entry are answered at
        once, not when this client has read it)."""
        if self.whole and not self.complete:
            capture.feed(self._first)
            capture.finish()
        else:
            self._capture = capture

    def __iter__(self) -> Iterator[bytes]:
        if self.complete:
            return
        capture = self._capture
        if self._first:
            if capture is not None:
                capture.feed(self._first)
            yield self._first
        read1 = self._raw.read1
        try:
            while data := read1(IO_CHUNK_BYTES, decode_content=False):
                if capture is not None:
                    capture.feed(data)
                yield data
        except TRANSPORT_ERRORS as exc:
            raise ConnectionResetError(errno.ECONNRESET,
                                       f"upstream response broken off: {exc}") from exc
        self.complete = True
        if capture is not None:
            self._capture = None
            capture.finish()

    def close(self) -> None:
        """The client is done with it: the connection goes back to the pool if the
        body was read to its end, and is closed otherwise. A capture still open is
        abandoned (its coalescing lock released)."""
        capture, self._capture = self._capture, None
        try:
            if not self.complete:
                self._raw.close()
            self._raw.release_conn()
        finally:
            if capture is not None:
                capture.abandon()

    def drain(self) -> None:
        """Read what is left (a 304's empty body) and give the connection back."""
        self._raw.drain_conn()
        self._raw.release_conn()
        self.complete = True

    def discard(self) -> None:
        """Not wanted (an error answer replaced by a stale entry): close the connection."""
        self._raw.close()
        self._raw.release_conn()

    def upgraded(self) -> UpgradedConnection:
        """After a 101: the connection, out of the pool for good, to relay bytes on."""
        return UpgradedConnection(self._raw)
