"""Response bodies as the upstream client hands them out: iterables of bytes with a
``close()`` that every WSGI server calls, and a ``complete`` flag for the access log."""

from __future__ import annotations

import errno
import http.client
from typing import TYPE_CHECKING, Final, Protocol

from urllib3.exceptions import HTTPError

from .adapter import CHUNK_BYTES

if TYPE_CHECKING:
    from collections.abc import Iterator

    from urllib3.response import BaseHTTPResponse

    from ..cache import BodyCapture

__all__ = ["Body", "ResponseBody", "StoredBody"]

_TRANSPORT_ERRORS: Final = (HTTPError, OSError, http.client.HTTPException)


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

    :param first: bytes already read (the adapter waits for them before answering).
    :param capture: a copy for the cache, finished when the body has ended.
    :param ended: nothing more to read (a response to HEAD).

    ``close()`` returns the connection to the pool when the body was read to the end,
    and closes it otherwise (the client went away mid-response, say): the rest of the
    body is never read into the pool. A host that fails mid-body makes iteration raise
    ``ConnectionResetError``: the head is out, and the only honest signal left is to
    drop the client's connection without a clean end, which both gunicorn and pywsgi do,
    quietly, for that error.
    """

    __slots__ = ("_capture", "_first", "_raw", "complete")

    def __init__(self, raw: BaseHTTPResponse, first: bytes = b"",
                 capture: BodyCapture | None = None, ended: bool = False) -> None:
        self._raw = raw
        self._first = first
        self._capture = capture
        self.complete = ended

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
            while data := read1(CHUNK_BYTES, decode_content=False):
                if capture is not None:
                    capture.feed(data)
                yield data
        except _TRANSPORT_ERRORS as exc:
            raise ConnectionResetError(errno.ECONNRESET,
                                       f"upstream response broken off: {exc}") from exc
        self.complete = True
        if capture is not None:
            capture.finish()

    def close(self) -> None:
        if not self.complete:
            self._raw.close()
        self._raw.release_conn()
