"""The client's request body, as the proxy hands it to urllib3 (docs/forwarding.md,
docs/bad-input.md, docs/strangers.md).

* ``Content-Length`` over MAX_REQUEST_BODY_BYTES: 413 at once, nothing read, no host
  contacted. Up to :data:`~wsgiproxy.limits.REPLAYABLE_BODY_BYTES` the body is read
  whole (it can then be sent again by a retry); larger ones stream through
  :class:`StreamedBody` with their ``Content-Length``.
* ``Transfer-Encoding: chunked`` (the WSGI server de-chunks it): the first 64 KiB are
  read; a body that ends there is forwarded whole with a ``Content-Length``; a longer
  one streams on, chunked, as it arrives, and the moment it passes the limit the
  client gets 413 and the upstream request is aborted. Memory per upload stays a few
  pieces of 64 KiB, whatever its size.
* Neither: no body (RFC 9112 §6.3).

A client that pauses longer than CLIENT_BODY_TIMEOUT_SECONDS within its body (the
servers set it as the socket's timeout) gets 408, and the upstream request it started
is aborted.

A streamed body can be sent once. urllib3 asks to rewind it before a retry;
:class:`StreamedBody` agrees only while nothing has been read, which is exactly the
case of a connection that was refused (the request never left), and refuses otherwise,
so a half-sent body is never resent as if it were whole.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from .errors import BadRequest, BodyTooLarge, ClientTimeout, MalformedBody, ProxyError
from .limits import IO_CHUNK_BYTES, REPLAYABLE_BODY_BYTES

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, BinaryIO

__all__ = ["ClientBodyError", "StreamedBody", "read_request_body"]


class ClientBodyError(OSError):
    """The client's body ended before its Content-Length (it went away mid-upload)."""


class StreamedBody(io.RawIOBase):
    """A read-once view of the rest of ``wsgi.input`` for urllib3.

    :param length: the body's Content-Length; None for a chunked body, which ends when
        the server's de-chunking reader does.
    :param head: bytes of the body already read.
    :param limit: MAX_REQUEST_BODY_BYTES, for a body whose length was not declared.
    """

    def __init__(self, stream: BinaryIO, length: int | None, head: bytes = b"",
                 limit: int = 0) -> None:
        super().__init__()
        self._stream = stream
        self._left = length
        self._head = head
        self._limit = limit
        self._pos = 0
        self._ended = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = IO_CHUNK_BYTES if size is None or size < 0 else size
        if self._head:
            data, self._head = self._head[:want], self._head[want:]
        elif self._left is None:  # chunked: until the reader's end
            data = _read(self._stream, want)
            self._ended = not data
            if self._pos + len(data) > self._limit:
                raise BodyTooLarge(f"request body is over the {self._limit}-byte limit")
        elif self._left <= 0:
            return b""
        else:
            data = _read(self._stream, min(want, self._left))
            if not data:
                raise ClientBodyError(f"request body ended {self._left} bytes early")
            self._left -= len(data)
        self._pos += len(data)
        return data

    @property
    def finished(self) -> bool:
        """Read to its end (a chunked one: its end was seen)."""
        return self._ended or self._left == 0

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET and offset == self._pos == 0:
            return 0
        raise OSError("the request body was already streamed upstream; it cannot be resent")


def _read(stream: BinaryIO, size: int) -> bytes:
    """``stream.read(size)``. A pause longer than the body timeout is 408; whatever else
    the server's body reader raises (gunicorn's ``InvalidChunkSize``, pywsgi's
    ``_InvalidClientInput``, ``NoMoreData``, ...) is the client's malformed body,
    answered 400, never a 500."""
    try:
        return stream.read(size)
    except ProxyError:
        raise
    except TimeoutError:
        raise ClientTimeout("the client paused too long within its request body",
                            phase="body") from None
    except Exception as exc:
        raise MalformedBody(f"malformed request body: {exc}") from None


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the body's end."""
    chunks: list[bytes] = []
    total = 0
    while total < size:
        chunk = _read(stream, min(IO_CHUNK_BYTES, size - total))
        if not chunk:
            break
        total += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks)


def read_request_body(
    environ: Mapping[str, Any], limit: int
) -> tuple[bytes | StreamedBody | None, int | None]:
    """(body, its length; None when it streams chunked) to forward; raises 413 or 400
    before any host is contacted when that can be known by then."""
    stream = environ["wsgi.input"]
    if environ.get("HTTP_TRANSFER_ENCODING"):
        # The server accepted the coding (only chunked is), and already rejected it
        # beside a Content-Length; check again in case another server runs the app.
        if environ.get("CONTENT_LENGTH"):
            raise BadRequest("both Content-Length and Transfer-Encoding")
        head = _read_up_to(stream, min(limit, REPLAYABLE_BODY_BYTES) + 1)
        if len(head) > limit:
            raise BodyTooLarge(f"request body is over the {limit}-byte limit")
        if len(head) <= REPLAYABLE_BODY_BYTES:
            return head, len(head)
        return StreamedBody(stream, None, head, limit), None
    raw_length = environ.get("CONTENT_LENGTH")
    if not raw_length:
        return None, None
    if not raw_length.isdigit() or not raw_length.isascii():
        raise BadRequest(f"invalid Content-Length {raw_length[:40]!r}")
    length = int(raw_length)
    if length > limit:
        raise BodyTooLarge(f"request body of {length} bytes is over the {limit}-byte limit")
    if length <= REPLAYABLE_BODY_BYTES:
        body = _read(stream, length) if length else b""
        if len(body) != length:
            raise BadRequest(f"request body ended {length - len(body)} bytes early")
        return body, length
    return StreamedBody(stream, length), length
