"""The client's request body, as the proxy hands it to urllib3 (docs/forwarding.md, docs/bad-input.md).

* ``Content-Length`` over MAX_REQUEST_BODY_BYTES: 413 at once, nothing read, no host
  contacted. Up to :data:`SMALL_BODY_BYTES` the body is read whole (it can then be sent
  again by a retry); larger ones stream through :class:`StreamedBody`.
* ``Transfer-Encoding: chunked`` (the WSGI server de-chunks it): read up to the limit
  first, since only then is its size known; forwarded with a ``Content-Length``.
* Neither: no body (RFC 9112 §6.3).

A streamed body can be sent once. urllib3 asks to rewind it before a retry;
:class:`StreamedBody` agrees only while nothing has been read, which is exactly the
case of a connection that was refused (the request never left), and refuses otherwise,
so a half-sent body is never resent as if it were whole.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Final

from .errors import BadRequest, BodyTooLarge, MalformedBody, ProxyError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, BinaryIO

__all__ = ["SMALL_BODY_BYTES", "ClientBodyError", "StreamedBody", "read_request_body"]

#: Bodies up to this size are read whole, so an idempotent retry can resend them.
SMALL_BODY_BYTES: Final = 64 * 1024
_READ_SIZE: Final = 64 * 1024


class ClientBodyError(OSError):
    """The client's body ended before its Content-Length (it went away mid-upload)."""


class StreamedBody(io.RawIOBase):
    """A read-once view of the next ``length`` bytes of ``wsgi.input`` for urllib3."""

    def __init__(self, stream: BinaryIO, length: int) -> None:
        super().__init__()
        self._stream = stream
        self._left = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = _read(self._stream, want)
        if not data:
            raise ClientBodyError(f"request body ended {self._left} bytes early")
        self._left -= len(data)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET and offset == self._pos == 0:
            return 0
        raise OSError("the request body was already streamed upstream; it cannot be resent")


def _read(stream: BinaryIO, size: int) -> bytes:
    """``stream.read(size)``; whatever the server's body reader raises (gunicorn's
    ``InvalidChunkSize``, pywsgi's ``_InvalidClientInput``, ``NoMoreData``, ...) is the
    client's malformed body, answered 400, never a 500."""
    try:
        return stream.read(size)
    except ProxyError:
        raise
    except Exception as exc:
        raise MalformedBody(f"malformed request body: {exc}") from None


def _read_all(stream: BinaryIO, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = _read(stream, min(_READ_SIZE, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)


def read_request_body(
    environ: Mapping[str, Any], limit: int
) -> tuple[bytes | StreamedBody | None, int | None]:
    """(body, its length) to forward; raises 413 or 400 before any host is contacted."""
    stream = environ["wsgi.input"]
    if environ.get("HTTP_TRANSFER_ENCODING"):
        # The server accepted the coding (only chunked is), and already rejected it
        # beside a Content-Length; check again in case another server runs the app.
        if environ.get("CONTENT_LENGTH"):
            raise BadRequest("both Content-Length and Transfer-Encoding")
        body = _read_all(stream, limit)
        return body, len(body)
    raw_length = environ.get("CONTENT_LENGTH")
    if not raw_length:
        return None, None
    if not raw_length.isdigit() or not raw_length.isascii():
        raise BadRequest(f"invalid Content-Length {raw_length[:40]!r}")
    length = int(raw_length)
    if length > limit:
        raise BodyTooLarge(f"request body of {length} bytes is over the {limit}-byte limit")
    if length <= SMALL_BODY_BYTES:
        body = _read(stream, length) if length else b""
        if len(body) != length:
            raise BadRequest(f"request body ended {length - len(body)} bytes early")
        return body, length
    return StreamedBody(stream, length), length
